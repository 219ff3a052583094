"""Tests for L{edd_gateway.domains.explain.describe_domain}: the words of C{explain} for custom domains."""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.domains.explain import describe_domain
from edd_gateway.domains.testing import domain

NAME = "app.example.test"


class DescribeTests(SynchronousTestCase):
    def test_no_row(self) -> None:
        lines, served = describe_domain(NAME, None, None, None)
        self.assertFalse(served)
        self.assertIn("no row", lines[0])

    def test_not_served(self) -> None:
        lines, served = describe_domain(NAME, domain(status="pending"), ("stopped", None), None)
        self.assertFalse(served)
        self.assertIn("status is not active or verified", lines[1])
        self.assertIn("container web1 is stopped", lines[1])
        self.assertIn("no certificate is issued", lines[1])

    def test_served_without_certificate(self) -> None:
        lines, served = describe_domain(NAME, domain(), ("running", "10.0.0.5"), None)
        self.assertTrue(served)
        self.assertIn("10.0.0.5:8080", lines[1])
        self.assertIn("the first TLS connection obtains one", lines[2])
        self.assertIn("no redirect", lines[3])

    def test_served_with_certificate(self) -> None:
        until = datetime(2027, 3, 1, tzinfo=timezone.utc)
        lines, _ = describe_domain(NAME, domain(), ("running", "10.0.0.5"), until)
        self.assertIn("2027-03-01", lines[2])
        self.assertIn("redirected to https", lines[3])
        lines, _ = describe_domain(NAME, domain(redirect_https=False), ("running", "10.0.0.5"), until)
        self.assertIn("redirect_https off", lines[3])
