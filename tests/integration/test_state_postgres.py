"""
Tests for L{edd_gateway.state.postgres} against a throwaway PostgreSQL
started by the test: the gateway's tables, reading containers (all, or by
id), a separate compute database, SSH host-key pins, and a pool that
recovers when the server restarts; and the conformance suites of
L{HostKeyPins} and L{ContainerDatabase} (L{tests._support.conformance}) that
the memory stores run in C{tests/unit}.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.task import deferLater
from txpostgres.txpostgres import RollbackFailed
from twisted.trial.unittest import TestCase

from edd_gateway.state.model import Container, HostKeyPin, IngressRule
from edd_gateway.state.postgres import DatabaseUnavailable, PostgresDatabase, _Connection
from edd_gateway.testing import md5_fingerprint, poll_until
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres
from edd_gateway.testing.containers import insert_container
from tests._support.conformance import ContainerDatabaseTestsMixin, PersistentHostKeyPinsTestsMixin

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRWnd03oL7qVUScEq+4xbgWp5e4Apuox818FnnDghrf dev@laptop"


class PostgresTestCase(TestCase):
    async def start_database(self, dedicated: bool = False, **options: Any
                             ) -> tuple[ThrowawayPostgres, PostgresDatabase]:
        server = await start_postgres(self, dedicated=dedicated)
        await server.create_compute_tables()
        database = PostgresDatabase(server.dsn(), reactor, max_reconnect_delay=0.5, **options)
        self.addCleanup(database.close)
        await database.connect()
        return server, database


class TablesTests(PostgresTestCase):
    async def test_gateway_tables_created_idempotently(self) -> None:
        server, database = await self.start_database()
        await database.connect()  # a second time: CREATE ... IF NOT EXISTS
        rows = await server.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        self.assertTrue({"static_routes", "gateway_file_routes", "gateway_ssh_host_keys"} <= {row[0] for row in rows})

    async def test_not_connected(self) -> None:
        database = PostgresDatabase("host=127.0.0.1 port=1 user=postgres", reactor)
        with self.assertRaises(DatabaseUnavailable):
            await database.load_all()
        with self.assertRaises(DatabaseUnavailable):
            await database.get_pin("a")

    async def test_connect_failure_leaves_nothing_open(self) -> None:
        server = ThrowawayPostgres()  # never started: nothing listens on its port
        self.addCleanup(server.cleanup)
        database = PostgresDatabase(server.dsn(), reactor, connect_timeout=5)
        with self.assertRaises(Exception):
            await database.connect()
        self.assertFalse(database.connected)


class ContainerReadTests(PostgresTestCase):
    async def test_load_all(self) -> None:
        server, database = await self.start_database()
        await insert_container(server, "web1", ports={80: 8080, 8000: 80})
        await insert_container(server, "idle", status="stopped", ip=None, user="u2")
        await server.execute("INSERT INTO ssh_keys (user_id, name, public_key, fingerprint) VALUES "
                             "('u1', 'laptop', %s, %s), ('nobody', 'x', %s, %s)",
                             (KEY, md5_fingerprint(KEY), KEY, md5_fingerprint(KEY)))
        containers = await database.load_all()
        self.assertEqual(containers["web1"], Container(
            id="web1", user_id="u1", status="running", external_ip="127.0.1.2", name="name of web1",
            ssh_enabled=True, ingress={80: IngressRule(80, 8080), 8000: IngressRule(8000, 80)}, ssh_keys=(KEY,),
            namespace="compute-u1-web1"))
        self.assertEqual((containers["idle"].status, containers["idle"].external_ip, containers["idle"].ssh_keys),
                         ("stopped", None, ()))

    async def test_load_some(self) -> None:
        server, database = await self.start_database()
        await insert_container(server, "a", ports={80: 80})
        await insert_container(server, "b")
        found = await database.load_containers(["a", "gone"])
        self.assertEqual(sorted(found), ["a"])
        self.assertEqual(found["a"].ingress, {80: IngressRule(80, 80)})
        await server.execute("DELETE FROM ingress_rules WHERE container_id = 'a'")
        self.assertEqual((await database.load_containers(["a"]))["a"].ingress, {})
        self.assertEqual(await database.load_containers([]), {})

    async def test_null_columns_read_as_defaults(self) -> None:
        # Only the columns the compute service's schema lets be NULL.
        server, database = await self.start_database()
        await server.execute("INSERT INTO containers (id, user_id, name, namespace, status, external_ip, ssh_enabled,"
                             " https_enabled) VALUES ('bare', 'u1', 'bare', 'compute-u1-bare', NULL, NULL, NULL, NULL),"
                             " ('blank', 'u1', 'blank', 'compute-u1-blank', 'running', '', true, NULL)")
        containers = await database.load_all()
        bare, blank = containers["bare"], containers["blank"]
        self.assertEqual((bare.status, bare.external_ip, bare.ssh_enabled, bare.https_enabled),
                         ("pending", None, False, False))
        self.assertEqual((blank.status, blank.external_ip, blank.ssh_enabled, blank.https_enabled),
                         ("running", None, True, False), "an empty address is no address")

    async def test_blank_key_is_skipped(self) -> None:
        server, database = await self.start_database()
        await insert_container(server, "web1")
        await server.execute("INSERT INTO ssh_keys (user_id, name, public_key, fingerprint) VALUES"
                             " ('u1', 'empty', ' ', ''), ('u1', 'laptop', %s, %s)", (KEY, md5_fingerprint(KEY)))
        self.assertEqual((await database.load_all())["web1"].ssh_keys, (KEY,))

    async def test_separate_compute_database(self) -> None:
        server = await start_postgres(self)
        compute = server.on_database(f"{server.dbname}_compute")
        await server.create_database(compute.dbname)
        self.addCleanup(compute.cleanup)
        await compute.create_compute_tables()
        await insert_container(compute, "elsewhere")
        database = PostgresDatabase(server.dsn(), reactor, compute_dsn=compute.dsn())
        self.addCleanup(database.close)
        await database.connect()
        self.assertEqual(sorted(await database.load_all()), ["elsewhere"])
        rows = await compute.query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'static_routes'")
        self.assertEqual(rows, [(0,)], "the gateway's tables stay in the gateway's database")


class PinTests(PostgresTestCase):
    async def test_round_trip(self) -> None:
        server, database = await self.start_database()
        self.assertIsNone(await database.get_pin("c1"))
        await database.set_pin("c1", KEY, "2026-01-01T00:00:00Z")
        self.assertEqual(await database.get_pin("c1"), HostKeyPin("c1", KEY, "2026-01-01T00:00:00Z"))
        await database.set_pin("c1", "ssh-ed25519 OTHER", None)
        self.assertEqual(await database.get_pin("c1"), HostKeyPin("c1", "ssh-ed25519 OTHER", None))
        await database.clear_pin("c1")
        self.assertIsNone(await database.get_pin("c1"))

    async def test_prune(self) -> None:
        server, database = await self.start_database()
        for name in ("a", "b", "c"):
            await database.set_pin(name, KEY)
        self.assertEqual(await database.prune_pins(["b", "not-pinned"]), 2)
        self.assertEqual([await database.get_pin(name) for name in ("a", "b", "c")],
                         [None, HostKeyPin("b", KEY, None), None])
        self.assertEqual(await database.prune_pins([]), 1)


class RecoveryTests(PostgresTestCase):
    async def test_pool_recovers_after_restart(self) -> None:
        server, database = await self.start_database(dedicated=True)
        recoveries: list[int] = []
        database.add_reconnect_observer(lambda: recoveries.append(1))
        await insert_container(server, "kept")
        await server.restart()
        await poll_until(lambda: recoveries, "the pool to notice and recover", timeout=15)
        await poll_until(lambda: database.alive, "every pooled connection to be back", timeout=15)
        self.assertEqual(sorted(await database.load_all()), ["kept"])
        self.assertEqual(sorted(await database.load_all()), ["kept"], "both pooled connections work")


    async def test_a_transaction_cut_short_is_its_own_failure(self) -> None:
        """
        The server ending a connection mid-transaction fails the interaction
        with the server's error, and nothing is logged as unhandled (the
        stock txpostgres logs the failed rollback as a traceback: trial
        would fail this test on it).
        """
        server = await start_postgres(self, dedicated=True)
        connection = _Connection(reactor)
        await connection.connect(server.dsn())
        self.addCleanup(lambda: connection.close() if not connection.closed else None)
        started = connection.runInteraction(lambda cursor: cursor.execute("SELECT pg_sleep(30)"))
        for _ in range(50):
            rows = await server.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()")
            if rows:
                break
            await deferLater(reactor, 0.05)
        self.assertTrue(rows, "the sleeping transaction was found and ended")
        failure = await self.assertFailure(started, psycopg2.Error)
        self.assertNotIsInstance(failure, RollbackFailed)


class PostgresHostKeyPinsTests(PersistentHostKeyPinsTestsMixin, PostgresTestCase):
    async def make_pins(self) -> PostgresDatabase:
        self.server, database = await self.start_database()
        return database

    async def reopen(self, pins: Any) -> PostgresDatabase:
        again = PostgresDatabase(self.server.dsn(), reactor)
        self.addCleanup(again.close)
        await again.connect()
        return again


class PostgresContainerDatabaseTests(ContainerDatabaseTestsMixin, PostgresTestCase):
    async def make_database(self) -> PostgresDatabase:
        self.server, database = await self.start_database()
        return database

    async def add_container(self, container_id: str, *, status: str = "running", ip: str | None = "127.0.1.2",
                            ports: dict[int, int] | None = None, user: str = "u1") -> None:
        await insert_container(self.server, container_id, status=status, ip=ip, ports=ports, user=user)

    async def add_other_route(self, host: str, path_prefix: str, target: str, priority: int = 0) -> None:
        await self.server.execute("INSERT INTO static_routes (host, path_prefix, target, strip_prefix, priority)"
                                  " VALUES (%s, %s, %s, false, %s)", (host, path_prefix, target, priority))
