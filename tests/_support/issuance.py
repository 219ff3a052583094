"""
The conformance suite of L{edd_gateway.issuance.storage.CertificateStorage}:
run over L{MemoryCertificateStorage} (C{tests/unit/test_issuance_storage.py})
and L{PostgresCertificateStorage} (C{tests/integration/test_issuance_postgres.py}).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from edd_gateway.issuance.challenges import PendingChallenge
from edd_gateway.issuance.storage import CertificateStorage, StoredAccount, StoredCertificate

NOT_BEFORE = datetime(2026, 12, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2027, 3, 1, tzinfo=timezone.utc)


def certificate(domain: str = "app.example.test", serial: str = "1") -> StoredCertificate:
    return StoredCertificate(domain, f"-----BEGIN CERTIFICATE-----\n{serial}\n", b"key " + serial.encode(),
                             NOT_BEFORE, NOT_AFTER)


class CertificateStorageTestsMixin:
    """Mixed in before a trial TestCase; says how to make the storage and how to let time pass."""

    async def make_storage(self) -> CertificateStorage:
        raise NotImplementedError

    async def pass_time(self, seconds: float) -> None:
        raise NotImplementedError

    def check(self) -> Any:
        return self  # the TestCase's assertions

    async def test_account(self) -> None:
        storage = await self.make_storage()
        self.check().assertIsNone(await storage.load_account("https://ca/dir"))
        first = await storage.save_account("https://ca/dir", StoredAccount(b"key one", None))
        self.check().assertEqual(first, StoredAccount(b"key one", None))
        # Another replica's key does not replace the first one kept.
        kept = await storage.save_account("https://ca/dir", StoredAccount(b"key two", "https://ca/acct/2"))
        self.check().assertEqual(kept.key_pem, b"key one")
        registered = await storage.save_account("https://ca/dir", StoredAccount(b"key one", "https://ca/acct/1"))
        self.check().assertEqual(registered, StoredAccount(b"key one", "https://ca/acct/1"))
        self.check().assertIsNone(await storage.load_account("https://other/dir"))

    async def test_certificates(self) -> None:
        storage = await self.make_storage()
        self.check().assertEqual(await storage.load_certificates(), {})
        await storage.save_certificate(certificate())
        await storage.save_certificate(certificate("b.example.test"))
        await storage.save_certificate(certificate(serial="2"))
        found = await storage.load_certificates()
        self.check().assertEqual(found, {"app.example.test": certificate(serial="2"),
                                         "b.example.test": certificate("b.example.test")})

    async def test_lease(self) -> None:
        storage = await self.make_storage()
        self.check().assertTrue(await storage.take_lease("a.test", "one", 1.0))
        self.check().assertTrue(await storage.take_lease("a.test", "one", 1.0))
        self.check().assertFalse(await storage.take_lease("a.test", "two", 1.0))
        self.check().assertTrue(await storage.take_lease("b.test", "two", 1.0))
        await storage.release_lease("a.test", "two")
        self.check().assertFalse(await storage.take_lease("a.test", "two", 1.0))
        await storage.release_lease("a.test", "one")
        self.check().assertTrue(await storage.take_lease("a.test", "two", 0.5))
        await self.pass_time(1.0)
        self.check().assertTrue(await storage.take_lease("a.test", "one", 1.0))

    async def test_attempts(self) -> None:
        storage = await self.make_storage()
        await storage.record_attempt("a.test")
        await storage.record_attempt("a.test")
        await storage.record_attempt("b.test")
        attempts = await storage.attempts("a.test")
        self.check().assertEqual((attempts.domain, attempts.overall), (2, 3))

    async def test_challenges(self) -> None:
        storage = await self.make_storage()
        one = PendingChallenge("a.test", "http-01", "tok1", "tok1.thumb")
        two = PendingChallenge("a.test", "tls-alpn-01", "tok2", "tok2.thumb")
        await storage.put_challenge(one, "replica-1")
        await storage.put_challenge(two, "replica-1")
        await storage.put_challenge(PendingChallenge("b.test", "http-01", "tok3", "tok3.thumb"), "replica-2")
        seen = await storage.load_challenges("replica-2")
        self.check().assertEqual(sorted(seen, key=lambda c: c.token), [one, two])
        await storage.delete_challenges("a.test", "replica-2")
        self.check().assertEqual(len(await storage.load_challenges("replica-2")), 2)
        await storage.delete_challenges("a.test", "replica-1")
        self.check().assertEqual(await storage.load_challenges("replica-2"), [])
        self.check().assertEqual(len(await storage.load_challenges("replica-1")), 1)
