"""
Tests for the PostgreSQL change feed (L{edd_gateway.state.triggers}) and its
use by the state service: the notification payloads (pure), the
orchestration over the memory fakes and a fake clock (what is re-read,
polling against resync, unannounced changes, waiters), and the statements
the operator command installs.  Against a throwaway PostgreSQL:
C{tests/integration/test_state_changefeed.py}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.state.triggers import (
    Change, install_statements, parse_change,
)
from edd_gateway.state.memory import MemoryChangeFeed, MemoryDatabase, MemoryEventFeed
from edd_gateway.state.model import Container, ContainerDirectory
from edd_gateway.state.service import DEFAULT_RESYNC_INTERVAL, StateService


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


class InstallStatementsTests(SynchronousTestCase):
    """The statements C{install-change-feed} runs, without a server."""

    def test_install_statements_run_in_one_transaction(self) -> None:
        statements = install_statements()
        self.assertTrue(statements[0].lstrip().startswith("CREATE OR REPLACE FUNCTION"))
        self.assertEqual(sum("CREATE TRIGGER" in statement for statement in statements), 6)
