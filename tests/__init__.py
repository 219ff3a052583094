"""
Tests for edd-gateway, run with trial: C{tests.unit} (in memory, fast) and
C{tests.integration} (real sockets, processes and servers); what both share
that is test-only glue is in C{tests._support}, and the fakes and fixtures
are in the package's testing modules.
"""
