"""
Test-only glue the unit and integration modules share: test case bases and
mixins (conformance suites, harness set-ups), and request and response bytes.
Fakes and fixtures a user of the package could want live in the package's
testing modules instead (L{edd_gateway.testing}, C{edd_gateway.*.testing}).
"""
