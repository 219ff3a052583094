"""
L{edd_gateway.issuance.sealing} (keys sealed at rest, bound to their row) and
the storage conformance suite (L{tests._support.issuance}) over the memory store.
"""

from __future__ import annotations

import base64
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.issuance.sealing import SealError, Sealer, generate_key_text, load_storage_key, parse_storage_key
from edd_gateway.issuance.storage import CertificateStorage
from edd_gateway.issuance.testing import MemoryCertificateStorage
from tests._support.issuance import CertificateStorageTestsMixin


class SealingTests(SynchronousTestCase):
    def test_round_trip_bound_to_what(self) -> None:
        sealer = Sealer(os.urandom(32))
        sealed = sealer.seal(b"secret key", "certificate:a.test")
        self.assertNotIn(b"secret", sealed)
        self.assertEqual(sealer.open(sealed, "certificate:a.test"), b"secret key")
        with self.assertRaises(SealError):
            sealer.open(sealed, "certificate:b.test")
        with self.assertRaises(SealError):
            Sealer(os.urandom(32)).open(sealed, "certificate:a.test")
        with self.assertRaises(SealError):
            sealer.open(b"\x02" + sealed[1:], "certificate:a.test")

    def test_key_formats(self) -> None:
        raw = os.urandom(32)
        self.assertEqual(parse_storage_key(base64.b64encode(raw) + b"\n"), raw)
        self.assertEqual(parse_storage_key(base64.urlsafe_b64encode(raw)), raw)
        self.assertEqual(parse_storage_key(raw.hex().encode()), raw)
        self.assertEqual(len(parse_storage_key(generate_key_text().encode())), 32)
        with self.assertRaises(ValueError):
            parse_storage_key(b"too short")

    def test_load_names_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("nope")
        with self.assertRaises(ValueError) as raised:
            load_storage_key(path)
        self.assertIn(path, str(raised.exception))
        with self.assertRaises(ValueError) as missing:
            load_storage_key(path + ".missing")
        self.assertIn("cannot read", str(missing.exception))


class MemoryStorageTests(CertificateStorageTestsMixin, TestCase):
    async def make_storage(self) -> CertificateStorage:
        self.clock = Clock()
        return MemoryCertificateStorage(self.clock)

    async def pass_time(self, seconds: float) -> None:
        self.clock.advance(seconds)
