"""The issuance storage conformance suite (L{tests._support.issuance}) over PostgreSQL, keys sealed in the rows."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from edd_gateway.issuance.sealing import Sealer
from edd_gateway.issuance.storage import CertificateStorage, PostgresCertificateStorage
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.testing.postgres import start_postgres
from tests._support.issuance import CertificateStorageTestsMixin, certificate


class PostgresStorageTests(CertificateStorageTestsMixin, TestCase):
    async def make_storage(self) -> CertificateStorage:
        self.server = await start_postgres(self)
        database = PostgresDatabase(self.server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        return PostgresCertificateStorage(database, Sealer(os.urandom(32)))

    async def pass_time(self, seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    async def test_keys_sealed_in_rows(self) -> None:
        storage = await self.make_storage()
        await storage.save_certificate(certificate())
        rows = await self.server.query("SELECT sealed_key FROM gateway_acme_certificates")
        self.assertNotIn(b"key 1", bytes(rows[0][0]))
