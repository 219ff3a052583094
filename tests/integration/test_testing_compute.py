"""
Tests for L{edd_gateway.testing.ComputeService}, the compute service's
writes as the end-to-end tests make them, against a throwaway PostgreSQL
holding the compute service's own schema: the rows it leaves, one
transaction per action, and the MD5 fingerprint as C{ssh-keygen -E md5}
prints it.
"""

from __future__ import annotations

import re
import time

from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.testing import ComputeService, md5_fingerprint, start_compute
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRWnd03oL7qVUScEq+4xbgWp5e4Apuox818FnnDghrf dev@laptop"


class FingerprintTests(SynchronousTestCase):
    def test_as_ssh_keygen_prints_it(self) -> None:
        # ssh-keygen -E md5 -lf: "256 MD5:67:99:4d:... dev@laptop (ED25519)"
        self.assertEqual(md5_fingerprint(KEY), "67:99:4d:99:53:5f:49:58:af:dc:c3:21:88:60:79:0a")
        self.assertEqual(md5_fingerprint(KEY.rsplit(" ", 1)[0]), md5_fingerprint(KEY), "the comment does not count")

    def test_not_a_key(self) -> None:
        for line in ("", "ssh-ed25519", "ssh-ed25519 not*base64"):
            self.assertRaises(ValueError, md5_fingerprint, line)


class ComputeServiceTests(TestCase):
    async def compute(self) -> tuple[ThrowawayPostgres, ComputeService]:
        server = await start_postgres(self)
        await server.create_compute_tables()
        return server, await start_compute(self, server.dsn())

    async def row(self, server: ThrowawayPostgres, cid: str) -> tuple[object, ...]:
        rows = await server.query("SELECT user_id, name, namespace, status, external_ip, created_at, stopped_at,"
                                  " ssh_enabled, https_enabled FROM containers WHERE id = %s", (cid,))
        return rows[0] if rows else ()

    async def test_container_lifecycle(self) -> None:
        server, compute = await self.compute()
        before = time.monotonic()
        new = await compute.create_container("u1", "web")
        self.assertTrue(before <= new.committed <= time.monotonic())
        self.assertRegex(new.id, re.compile(r"^[0-9a-f]{8}$"))
        self.assertEqual(new.namespace, f"compute-u1-{new.id}")
        user, name, namespace, status, ip, created, stopped, ssh, https = await self.row(server, new.id)
        self.assertEqual((user, name, namespace, status, ip, stopped, ssh, https),
                         ("u1", "web", new.namespace, "pending", None, None, False, False))

        await compute.set_status(new.id, "initializing")
        self.assertEqual((await self.row(server, new.id))[3], "initializing")
        committed = await compute.start(new.id, "10.0.0.7")
        self.assertIsInstance(committed, float)
        self.assertEqual((await self.row(server, new.id))[3:6], ("running", "10.0.0.7", created))
        await compute.stop(new.id)
        stopped_row = await self.row(server, new.id)
        self.assertEqual(stopped_row[3], "stopped")
        self.assertIsNotNone(stopped_row[6])
        await compute.start(new.id, "10.0.0.8")
        self.assertEqual((await self.row(server, new.id))[3:6], ("running", "10.0.0.8", created),
                         "a restart keeps created_at")

        await compute.add_ingress(new.id, 80, 8080)
        await compute.add_ingress(new.id, 443, 8443)
        self.assertTrue((await self.row(server, new.id))[8], "a 443 rule turns https_enabled on")
        await compute.remove_ingress(new.id, 443)
        self.assertFalse((await self.row(server, new.id))[8], "and its removal off")
        await compute.set_ssh_enabled(new.id, True)
        self.assertTrue((await self.row(server, new.id))[7])

        await compute.delete(new.id)
        self.assertEqual(await self.row(server, new.id), ())
        self.assertEqual(await server.query("SELECT count(*) FROM ingress_rules"), [(0,)], "rules cascade")

    async def test_ssh_keys(self) -> None:
        server, compute = await self.compute()
        key = await compute.add_ssh_key("u1", "laptop", KEY + "\n")
        rows = await server.query("SELECT id, user_id, name, public_key, fingerprint FROM ssh_keys")
        self.assertEqual(rows, [(key.id, "u1", "laptop", KEY, md5_fingerprint(KEY))])
        await compute.delete_ssh_key(key.id)
        self.assertEqual(await server.query("SELECT count(*) FROM ssh_keys"), [(0,)])

    async def test_unknown_rows_and_statuses_are_refused(self) -> None:
        server, compute = await self.compute()
        with self.assertRaises(LookupError):
            await compute.stop("00000000")
        with self.assertRaises(LookupError):
            await compute.remove_ingress("00000000", 80)
        new = await compute.create_container("u1", "web")
        with self.assertRaises(ValueError):
            await compute.set_status(new.id, "paused")
        self.assertEqual((await self.row(server, new.id))[3], "pending", "nothing was written")
