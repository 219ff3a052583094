"""
Tests for L{edd_gateway.state.changefeed} and its use by the state service:
the notification payloads (pure), the orchestration over the memory fakes
and a fake clock (what is re-read, polling against resync, unannounced
changes, waiters), and, against a throwaway PostgreSQL, the installed
triggers, the operator command and the listener across a server restart.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.state.changefeed import (
    CHANNEL, Change, ChangeFeedError, ChangeFeedListener, install, install_statements, parse_change,
)
from edd_gateway.state.memory import MemoryChangeFeed, MemoryDatabase, MemoryEventFeed
from edd_gateway.state.model import Container, ContainerDirectory
from edd_gateway.state.service import DEFAULT_RESYNC_INTERVAL, StateService
from edd_gateway.testing import poll_until
from edd_gateway.testing._postgres import ThrowawayPostgres, start_postgres


def payload(table: str, key: str | None, op: str = "UPDATE") -> str:
    """As the trigger function writes it (json_build_object's spacing)."""
    body: dict[str, Any] = {"table": table, "op": op}
    if key is not None:
        body["key"] = key
    return json.dumps(body, separators=(" , ", " : "))


def container(container_id: str, user: str = "u1", status: str = "running", ip: str = "127.0.1.1") -> Container:
    return Container(id=container_id, user_id=user, status=status, external_ip=ip, namespace=f"compute-{user}-x")


class ParseTests(SynchronousTestCase):
    def test_container_and_ingress_name_a_container(self) -> None:
        self.assertEqual(parse_change(payload("containers", "a1b2c3d4")), Change("containers", ("a1b2c3d4",)))
        self.assertEqual(parse_change(payload("ingress_rules", "a1b2c3d4", "DELETE")),
                         Change("ingress_rules", ("a1b2c3d4",)))

    def test_ssh_keys_name_a_user(self) -> None:
        self.assertEqual(parse_change(payload("ssh_keys", "42", "INSERT")), Change("ssh_keys", user_ids=("42",)))

    def test_truncate_and_unreadable_payloads_ask_for_everything(self) -> None:
        for text in (payload("ssh_keys", None, "TRUNCATE"), "not json", "[1]", payload("other", "x"),
                     json.dumps({"table": "containers", "key": 7}), ""):
            with self.subTest(text=text):
                self.assertTrue(parse_change(text).full_resync)


class Harness:
    def __init__(self, test: SynchronousTestCase, feed: MemoryChangeFeed, *containers: Container,
                 **options: Any) -> None:
        self.clock = Clock()
        self.database = MemoryDatabase(containers or [container("a1")])
        self.directory = ContainerDirectory()
        self.feed = feed
        feed.clock = self.clock
        self.service = StateService(self.database, self.directory, self.clock, changes=feed,
                                    retry_policy=lambda attempt: 1.0, **options)
        self.service.startService()
        test.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def reads(self, prefix: str = "load") -> list[str]:
        return [call for call in self.database.calls if call.startswith(prefix)]


class ServiceTests(SynchronousTestCase):
    def test_a_notification_rereads_only_what_it_names(self) -> None:
        harness = Harness(self, MemoryChangeFeed(), container("a1"), container("b2"))
        harness.database.put(container("a1", status="stopped"))
        harness.feed.notify(payload("containers", "a1"))
        self.assertEqual(harness.reads("load_containers"), ["load_containers a1"])
        self.assertEqual(harness.directory.get("a1").status, "stopped")  # type: ignore[union-attr]
        self.assertEqual(harness.service.status().notifications, 1)

    def test_a_key_change_rereads_every_container_of_its_user(self) -> None:
        harness = Harness(self, MemoryChangeFeed(), container("a1"), container("b2"), container("c3", user="u2"))
        harness.database.put(Container(**{**_fields(container("a1")), "ssh_keys": ("ssh-ed25519 AAAA new",)}))
        harness.feed.notify(payload("ssh_keys", "u1", "INSERT"))
        self.assertEqual(harness.reads("load_containers"), ["load_containers a1,b2"])
        self.assertEqual(harness.directory.get("a1").ssh_keys, ("ssh-ed25519 AAAA new",))  # type: ignore[union-attr]
        # A user the gateway holds no container of: nothing to read.
        harness.feed.notify(payload("ssh_keys", "u9", "DELETE"))
        self.assertEqual(len(harness.reads("load_containers")), 1)

    def test_a_key_change_during_a_full_read_finds_the_containers_that_read_brings(self) -> None:
        harness = Harness(self, MemoryChangeFeed(), container("a1"))
        harness.database.put(container("n2", user="u7"))
        harness.database.paused = True
        harness.service.request_full_resync("test")  # takes its answer now: n2 without the key
        harness.database.put(Container(**{**_fields(container("n2", user="u7")), "ssh_keys": ("ssh-ed25519 AAAA k",)}))
        harness.feed.notify(payload("ssh_keys", "u7", "INSERT"))
        while harness.database.held:
            harness.database.release()
        self.assertEqual(harness.reads("load_containers"), ["load_containers n2"])
        self.assertEqual(harness.directory.get("n2").ssh_keys, ("ssh-ed25519 AAAA k",))  # type: ignore[union-attr]

    def test_truncate_reads_everything(self) -> None:
        harness = Harness(self, MemoryChangeFeed())
        before = len(harness.reads("load_all"))
        harness.feed.notify(payload("containers", None, "TRUNCATE"))
        self.assertEqual(len(harness.reads("load_all")), before + 1)

    def test_listening_means_resync_interval_not_poll(self) -> None:
        harness = Harness(self, MemoryChangeFeed())
        before = len(harness.reads("load_all"))
        harness.clock.pump([5.0] * (int(DEFAULT_RESYNC_INTERVAL / 5) - 1))
        self.assertEqual(len(harness.reads("load_all")), before)
        harness.clock.advance(5.0)
        self.assertEqual(len(harness.reads("load_all")), before + 1)

    def test_not_installed_polls_until_the_triggers_appear(self) -> None:
        harness = Harness(self, MemoryChangeFeed(installed=False))
        self.assertEqual(harness.service.status().change_feed, "not installed")
        self.assertEqual(harness.service.status().feeds, [])
        before = len(harness.reads("load_all"))
        harness.clock.advance(5.0)
        self.assertEqual(len(harness.reads("load_all")), before + 1)
        # The operator installs it: the next full read's check LISTENs, and
        # that start is itself followed by a full read.
        harness.feed.installed = True
        harness.clock.advance(5.0)
        self.assertTrue(harness.feed.listening)
        self.assertEqual(harness.service.status().feeds, ["PostgreSQL change feed"])
        polled = len(harness.reads("load_all"))
        harness.clock.pump([5.0] * 3)
        self.assertEqual(len(harness.reads("load_all")), polled)

    def test_a_lost_feed_polls_and_its_return_resyncs(self) -> None:
        harness = Harness(self, MemoryChangeFeed())
        harness.feed.lose_connection()
        before = len(harness.reads("load_all"))
        harness.clock.advance(5.0)
        self.assertEqual(len(harness.reads("load_all")), before + 1)
        harness.clock.advance(5.0)
        self.assertEqual(len(harness.reads("load_all")), before + 2)
        harness.feed.reconnect()
        self.assertEqual(len(harness.reads("load_all")), before + 3)
        harness.clock.pump([5.0] * 3)
        self.assertEqual(len(harness.reads("load_all")), before + 3)

    def test_changes_no_notification_announced_are_counted(self) -> None:
        harness = Harness(self, MemoryChangeFeed(), container("a1"), container("b2"))
        harness.database.put(container("a1", status="stopped"))  # announced below
        harness.database.remove("b2")  # silent
        harness.database.put(container("n3"))  # silent
        harness.database.paused = True
        harness.service.request_full_resync("test")
        harness.feed.notify(payload("containers", "a1"))  # arrives while the read runs
        harness.database.release()
        harness.database.release()
        status = harness.service.status()
        self.assertEqual(status.unannounced_changes, 2)
        self.flushLoggedErrors()

    def test_nothing_is_counted_while_polling(self) -> None:
        harness = Harness(self, MemoryChangeFeed(installed=False))
        harness.database.put(container("n3"))
        harness.clock.advance(5.0)
        self.assertIsNotNone(harness.directory.get("n3"))
        self.assertEqual(harness.service.status().unannounced_changes, 0)

    def test_a_refresh_answers_once_applied(self) -> None:
        harness = Harness(self, MemoryChangeFeed())
        harness.database.paused = True
        applied = harness.service.request_refresh(["a1"])
        harness.clock.advance(0)
        self.assertNoResult(applied)
        harness.database.release()
        self.successResultOf(applied)

    def test_a_refresh_answers_after_a_failed_read_once_a_later_read_applied_it(self) -> None:
        harness = Harness(self, MemoryChangeFeed())
        harness.database.down = True
        applied = harness.service.request_refresh(["a1"])
        harness.clock.advance(0)
        self.assertNoResult(applied)
        harness.database.down = False
        harness.clock.advance(1.0)
        self.successResultOf(applied)

    def test_one_transactions_notifications_are_one_read(self) -> None:
        """A deleted container with rules notifies twice (its row, the cascaded rules): read once."""
        harness = Harness(self, MemoryChangeFeed(), container("a1"))
        harness.database.remove("a1")
        harness.feed.notify(payload("containers", "a1", "DELETE"), payload("ingress_rules", "a1", "DELETE"))
        self.assertEqual(harness.reads("load_containers"), ["load_containers a1"])
        self.assertIsNone(harness.directory.get("a1"))

    def test_stop_leaves_the_waiters_unanswered(self) -> None:
        """Their events are not acknowledged, so JetStream delivers them again after the restart."""
        harness = Harness(self, MemoryChangeFeed())
        harness.database.down = True
        applied = harness.service.request_refresh(["a1"])
        harness.clock.advance(0)
        harness.database.down = False
        harness.stop()
        harness.clock.advance(10)
        self.assertNoResult(applied)
        self.assertTrue(harness.feed.stopped)

    def test_an_event_is_answered_once_its_read_is_applied(self) -> None:
        feed = MemoryEventFeed(mode="jetstream")
        clock = feed.clock = Clock()
        database = MemoryDatabase([container("a1"), container("b2", user="42")])
        service = StateService(database, ContainerDirectory(), clock, events=feed)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.status().feeds, ["NATS events (jetstream)"])
        database.paused = True
        feed.deliver("compute.container.a1.stopped")
        feed.deliver("compute.sshkey.17.deleted", b'{"key_id": 17, "user_id": 42}')
        feed.deliver("compute.sshkey.18.deleted", b"\xff garbage")  # no user: read everything
        first, second, third = feed.applied
        for answer in feed.applied:
            self.assertNoResult(answer)
        while database.held:
            database.release()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(third)
        # The first event's read was under way; the full read the third asks
        # for covers the second's container too.
        self.assertEqual(database.calls[-4:], ["load_containers a1", "load_all", "prune_pins", "load_other_routes"])
        self.flushLoggedErrors()


def _fields(value: Container) -> dict[str, Any]:
    return {name: getattr(value, name) for name in Container.__slots__}


class _Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.listening = 0
        self.stopped: list[str] = []

    def bind(self, listener: ChangeFeedListener) -> None:
        listener.bind(self.changes.append, self._listening, self.stopped.append)

    def _listening(self) -> None:
        self.listening += 1


class InstalledTests(TestCase):
    """The triggers, the operator command and the listener, on a real server."""

    async def compute(self, dedicated: bool = False) -> ThrowawayPostgres:
        server = await start_postgres(self, dedicated=dedicated)
        await server.create_compute_tables()
        return server

    async def listener(self, server: ThrowawayPostgres) -> tuple[ChangeFeedListener, _Recorder]:
        listener = ChangeFeedListener(server.dsn(), reactor, reconnect_delays=lambda: iter([0.0] + [0.2] * 100))
        recorder = _Recorder()
        recorder.bind(listener)
        self.addCleanup(listener.stop)
        await listener.start()
        return listener, recorder

    async def test_install_is_idempotent_and_remove_takes_it_away(self) -> None:
        server = await self.compute()
        self.assertIn(CHANNEL, install(server.dsn()))
        install(server.dsn())
        rows = await server.query("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE "
                                  "'edd_gateway%' ORDER BY 1, 2")
        self.assertEqual(len(rows), 6)
        self.assertEqual({row[0] for row in rows}, {"containers", "ingress_rules", "ssh_keys"})
        install(server.dsn(), remove=True)
        install(server.dsn(), remove=True)
        self.assertEqual(await server.query("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'edd_gateway%'"), [])
        self.assertEqual(await server.query("SELECT proname FROM pg_proc WHERE proname LIKE 'edd_gateway%'"), [])

    async def test_install_by_a_role_that_does_not_own_the_tables_fails_in_one_line(self) -> None:
        server = await self.compute()
        await server.execute("CREATE ROLE gateway_reader LOGIN")
        await server.execute("GRANT SELECT ON containers, ingress_rules, ssh_keys TO gateway_reader")
        with self.assertRaises(ChangeFeedError) as raised:
            install(server.dsn() + " user=gateway_reader")
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertIn("owner", message)
        with self.assertRaises(ChangeFeedError):
            install("host=127.0.0.1 port=1 dbname=none connect_timeout=2")

    async def test_install_refuses_a_database_without_the_compute_tables(self) -> None:
        server = await start_postgres(self)
        with self.assertRaises(ChangeFeedError) as raised:
            install(server.dsn())
        self.assertIn("containers", str(raised.exception))

    async def test_each_committed_change_is_announced_and_rollbacks_are_not(self) -> None:
        server = await self.compute()
        install(server.dsn())
        listener, recorder = await self.listener(server)
        self.assertTrue(listener.listening)
        self.assertEqual(recorder.listening, 1)
        await server.execute("INSERT INTO containers (id, user_id, name, namespace) VALUES "
                             "('a1b2c3d4', '7', 'web', 'compute-7-a1b2c3d4')")
        await server.execute("INSERT INTO ingress_rules (container_id, port, target_port) VALUES ('a1b2c3d4', 8000, 80)")
        await server.execute("INSERT INTO ssh_keys (user_id, name, public_key, fingerprint) VALUES "
                             "('7', 'laptop', 'ssh-ed25519 AAAA me', 'aa:bb')")
        await server.execute("DELETE FROM containers WHERE id = 'a1b2c3d4'")
        await server.execute("BEGIN; UPDATE containers SET status = 'running'; ROLLBACK")
        await poll_until(lambda: len(recorder.changes) >= 5, "five notifications")
        self.assertEqual(recorder.changes, [
            Change("containers", ("a1b2c3d4",)), Change("ingress_rules", ("a1b2c3d4",)),
            Change("ssh_keys", user_ids=("7",)), Change("containers", ("a1b2c3d4",)),
            Change("ingress_rules", ("a1b2c3d4",)),  # the cascade
        ])

    async def test_not_installed_then_installed(self) -> None:
        server = await self.compute()
        listener, recorder = await self.listener(server)
        self.assertEqual(listener.state, "not installed")
        self.assertFalse(await listener.check())
        install(server.dsn())
        self.assertTrue(await listener.check())
        self.assertEqual(recorder.listening, 1)
        install(server.dsn(), remove=True)
        self.assertFalse(await listener.check())
        self.assertEqual(recorder.stopped, ["triggers removed"])

    async def test_a_restarted_server_is_listened_to_again(self) -> None:
        server = await self.compute(dedicated=True)
        install(server.dsn())
        listener, recorder = await self.listener(server)
        await server.restart()
        # Idle, the connection learns of the loss when the server closes it.
        await poll_until(lambda: recorder.listening == 2, "listening again", timeout=20)
        self.assertEqual(recorder.stopped, ["connection lost"])
        await server.execute("UPDATE containers SET status = 'running'")
        await server.execute("INSERT INTO containers (id, user_id, name, namespace) VALUES "
                             "('b1b2c3d4', '7', 'web', 'compute-7-b1b2c3d4')")
        await poll_until(lambda: Change("containers", ("b1b2c3d4",)) in recorder.changes, "the insert announced")
        self.flushLoggedErrors()

    def test_install_statements_run_in_one_transaction(self) -> None:
        statements = install_statements()
        self.assertTrue(statements[0].lstrip().startswith("CREATE OR REPLACE FUNCTION"))
        self.assertEqual(sum("CREATE TRIGGER" in statement for statement in statements), 6)

