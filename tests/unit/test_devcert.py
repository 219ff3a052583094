"""
Tests for L{edd_gateway.tls.devcert}: the development certificate is made
once, in the secret layout, and the store serves it for localhost.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.tls.devcert import (
    DEV_CERTIFICATE_DAYS,
    ensure_dev_certificate,
    self_signed_certificate,
)
from edd_gateway.tls.secret import load_secret_directory
from edd_gateway.tls.store import CertificateStore

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


class EnsureDevCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "dev-tls")
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())

    def test_created_once_then_reused(self) -> None:
        self.assertEqual(
            ensure_dev_certificate(self.directory, clock=self.clock), (self.directory, True)
        )
        with open(os.path.join(self.directory, "tls.crt"), "rb") as file:
            first = file.read()
        self.assertEqual(
            ensure_dev_certificate(self.directory, clock=self.clock), (self.directory, False)
        )
        with open(os.path.join(self.directory, "tls.crt"), "rb") as file:
            self.assertEqual(file.read(), first)

    def test_recreated_when_a_file_is_missing(self) -> None:
        ensure_dev_certificate(self.directory, clock=self.clock)
        os.remove(os.path.join(self.directory, "tls.key"))
        self.assertTrue(ensure_dev_certificate(self.directory, clock=self.clock)[1])
        load_secret_directory(self.directory)

    def test_key_is_private(self) -> None:
        ensure_dev_certificate(self.directory, clock=self.clock)
        mode = stat.S_IMODE(os.stat(os.path.join(self.directory, "tls.key")).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(sorted(os.listdir(self.directory)), ["tls.crt", "tls.key"])

    def test_contents(self) -> None:
        ensure_dev_certificate(self.directory, clock=self.clock)
        loaded = load_secret_directory(self.directory)
        self.assertIsInstance(loaded.private_key, ec.EllipticCurvePrivateKey)
        self.assertEqual(loaded.private_key.curve.name, "secp256r1")
        san = loaded.certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        lifetime = loaded.not_after - NOW
        self.assertEqual(lifetime.days, DEV_CERTIFICATE_DAYS)

    def test_served_by_the_store(self) -> None:
        ensure_dev_certificate(self.directory, clock=self.clock)
        store = CertificateStore(clock=self.clock)
        store.add_directory(self.directory, default=True)
        for name in ("localhost", "127.0.0.1", "::1"):
            self.assertTrue(store.covers(name), name)
        self.assertFalse(store.covers("example.com"))
        self.assertEqual(store.choose(None).directory, self.directory)

    def test_other_names(self) -> None:
        ensure_dev_certificate(self.directory, names=("dev.example", "*.dev.example"))
        loaded = load_secret_directory(self.directory)
        self.assertTrue(loaded.covers("dev.example"))
        self.assertTrue(loaded.covers("a.dev.example"))
        self.assertFalse(loaded.covers("localhost"))


class SelfSignedCertificateTests(SynchronousTestCase):
    def test_given_key_and_validity(self) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        later = datetime(2027, 1, 1, tzinfo=timezone.utc)
        certificate, returned = self_signed_certificate(["a.example"], NOW, later, key=key)
        self.assertIs(returned, key)
        self.assertEqual(certificate.not_valid_before_utc, NOW)
        self.assertEqual(certificate.not_valid_after_utc, later)
        self.assertEqual(certificate.issuer, certificate.subject)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
