"""
Tests for L{edd_gateway.state.service}: the orchestration of connecting,
full resyncs, event-driven refreshes, polling, backoff and readiness, over
the memory database and event feed with a fake clock.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.model import Route, Target
from edd_gateway.state.memory import MemoryDatabase, MemoryEventFeed
from edd_gateway.state.model import Container, ContainerDirectory, HostKeyPin, IngressRule
from edd_gateway.state.events import REFRESHED_SUBJECT
from edd_gateway.state.routes_sync import StaticRouteRow
from edd_gateway.state.service import DEFAULT_RESYNC_INTERVAL, StateService


def container(container_id: str, status: str = "running", port: int = 80) -> Container:
    return Container(id=container_id, user_id="u1", status=status, external_ip="127.0.1.1",
                     ingress={port: IngressRule(port, 8080)})


def route(host: str, path: str = "/") -> Route:
    return Route(host=host, path=path, target=Target("backend", 80), source="routes.yaml:1")


def fixed_delays(attempt: int) -> float:
    """1, 2, 4, ... seconds: deterministic, unlike the jittered default."""
    return float(2 ** attempt)


class Harness:
    def __init__(self, test: SynchronousTestCase, events: MemoryEventFeed | None = None,
                 file_routes: list[Route] | None = None, **options: float) -> None:
        self.clock = Clock()
        self.database = MemoryDatabase([container("a1")])
        self.directory = ContainerDirectory()
        self.events = events
        if events is not None:
            events.clock = self.clock
        self.route_lists: list[list[Route]] = []
        self.service = StateService(self.database, self.directory, self.clock, events=events,
                                    on_routes=self.route_lists.append, file_routes=file_routes,
                                    retry_policy=fixed_delays, **options)
        test.addCleanup(self.stop)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def hosts(self) -> list[str]:
        return [r.host for r in self.route_lists[-1]]


class StartTests(SynchronousTestCase):
    def test_initial_full_read(self) -> None:
        harness = Harness(self)
        harness.start()
        self.assertTrue(harness.directory.current.ready)
        self.assertEqual(harness.directory.get("a1"), container("a1"))
        status = harness.service.status()
        self.assertTrue(status.database_connected)
        self.assertTrue(status.containers_ready)
        self.assertEqual(status.full_resyncs, 1)
        self.assertIsNone(status.events_connected)

    def test_down_at_start_serves_file_routes_and_retries_with_backoff(self) -> None:
        harness = Harness(self, file_routes=[route("file.example")])
        harness.database.down = True
        harness.start()
        self.assertEqual(harness.hosts(), ["file.example"])
        self.assertFalse(harness.directory.current.ready)
        status = harness.service.status()
        self.assertFalse(status.containers_ready)
        self.assertFalse(status.database_connected)
        self.assertIn("DatabaseUnavailable", status.last_error or "")
        self.assertEqual(harness.database.calls, ["connect"])
        # Backoff: 1 s, then 2 s, then 4 s.
        harness.clock.advance(0.9)
        self.assertEqual(harness.database.calls.count("connect"), 1)
        harness.clock.advance(0.1)
        self.assertEqual(harness.database.calls.count("connect"), 2)
        harness.clock.advance(1.9)
        self.assertEqual(harness.database.calls.count("connect"), 2)
        harness.clock.advance(0.1)
        self.assertEqual(harness.database.calls.count("connect"), 3)
        harness.database.down = False
        harness.clock.advance(4)
        self.assertTrue(harness.directory.current.ready)
        self.assertIsNotNone(harness.directory.get("a1"))
        self.assertTrue(harness.service.status().database_connected)

    def test_polling_does_not_connect_while_down(self) -> None:
        """Only the backoff retries connect; the poller waits for it."""
        harness = Harness(self, poll_interval=0.5)
        harness.database.down = True
        harness.start()
        harness.clock.advance(0.5)
        harness.clock.advance(0.4)
        self.assertEqual(harness.database.calls, ["connect"])

    def test_stop_leaves_no_timers(self) -> None:
        harness = Harness(self)
        harness.database.down = True
        harness.start()
        harness.service.stopService()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(harness.database.closed, 1)


class RoutesTests(SynchronousTestCase):
    def test_file_routes_synced_and_others_routed_after_them(self) -> None:
        harness = Harness(self, file_routes=[route("file.example")])
        harness.database.add_row(StaticRouteRow("other.example", "/", "10.0.0.9:80", id=7))
        harness.start()
        self.assertEqual(harness.hosts(), ["file.example", "other.example"])
        self.assertEqual(harness.route_lists[-1][1].source, "static_routes id 7")
        self.assertIn(("file.example", "/"), harness.database.rows)
        self.assertTrue(harness.database.rows[("file.example", "/")].from_file)

    def test_new_file_version_routed_at_once_and_synced(self) -> None:
        harness = Harness(self, file_routes=[route("old.example")])
        harness.start()
        harness.database.down = True
        harness.service.set_file_routes([route("new.example")])
        # Routed even though the database cannot take it yet.
        self.assertEqual(harness.hosts(), ["new.example"])
        harness.database.down = False
        harness.clock.advance(1)
        self.assertNotIn(("old.example", "/"), harness.database.rows)
        self.assertIn(("new.example", "/"), harness.database.rows)

    def test_no_file_routes_means_no_sync(self) -> None:
        """Without a known file, the file's rows must not be deleted as stale."""
        harness = Harness(self)
        harness.database.add_row(StaticRouteRow("kept.example", "/", "10.0.0.9:80", from_file=True))
        harness.start()
        self.assertNotIn("sync_file_routes", harness.database.calls)
        self.assertIn(("kept.example", "/"), harness.database.rows)


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.feed = MemoryEventFeed()
        self.harness = Harness(self, events=self.feed)
        self.harness.start()
        self.database = self.harness.database
        self.directory = self.harness.directory

    def test_event_rereads_one_container(self) -> None:
        self.database.put(container("b2"))
        self.feed.deliver("compute.container.b2.started", json.dumps({"container_id": "b2"}).encode())
        self.assertEqual(self.directory.get("b2"), container("b2"))
        self.assertEqual(self.database.calls[-1], "load_containers b2")
        self.assertEqual(self.harness.service.status().events, 1)

    def test_stop_and_delete(self) -> None:
        self.database.put(container("a1", status="stopped"))
        self.feed.deliver("compute.container.a1.stopped")
        self.assertFalse(self.directory.get("a1").running)
        self.database.remove("a1")
        self.feed.deliver("compute.container.a1.deleted", b'{"container_id": "a1"}')
        self.assertIsNone(self.directory.get("a1"))
        self.assertTrue(self.directory.current.ready)

    def test_junk_bodies_still_reread_what_the_subject_names(self) -> None:
        before = list(self.database.calls)
        self.feed.deliver("compute.container.a1.started", b"not json")
        self.assertEqual(self.database.calls, before + ["load_containers a1"])
        self.feed.deliver("compute.volume.a1.started", b"")
        self.assertEqual(len(self.feed.rejected), 1)

    def test_every_connect_resyncs_and_publishes(self) -> None:
        # Connected once at start (the database connect and the feed's).
        published = [json.loads(body) for subject, body in self.feed.published if subject == REFRESHED_SUBJECT]
        self.assertTrue(published)
        self.assertEqual(published[-1]["containers"], 1)
        self.assertEqual(published[-1]["running"], 1)
        self.assertIn("timestamp", published[-1])
        resyncs = self.harness.service.status().full_resyncs
        self.feed.disconnect()
        self.database.put(container("c3"))
        self.feed.connect()
        self.assertEqual(self.harness.service.status().full_resyncs, resyncs + 1)
        self.assertIsNotNone(self.directory.get("c3"))
        self.assertEqual(json.loads(self.feed.published[-1][1])["reason"], "NATS connected")

    def test_database_reconnect_resyncs(self) -> None:
        self.database.put(container("d4"))
        self.database.reconnect()
        self.assertIsNotNone(self.directory.get("d4"))

    def test_poll_only_while_feed_is_down(self) -> None:
        calls = self.database.calls.count("load_all")
        self.harness.clock.advance(5)
        self.assertEqual(self.database.calls.count("load_all"), calls)
        self.feed.disconnect()
        self.harness.clock.advance(5)
        self.assertEqual(self.database.calls.count("load_all"), calls + 1)

    def test_periodic_resync_while_feed_is_up(self) -> None:
        calls = self.database.calls.count("load_all")
        self.harness.clock.pump([5] * int(DEFAULT_RESYNC_INTERVAL / 5))
        self.assertEqual(self.database.calls.count("load_all"), calls + 1)


class OrderingTests(SynchronousTestCase):
    """One read at a time: a slow full read cannot undo a later event's refresh."""

    def setUp(self) -> None:
        self.feed = MemoryEventFeed()
        self.harness = Harness(self, events=self.feed)
        self.harness.start()
        self.database = self.harness.database

    def test_event_during_full_read_is_read_after_it(self) -> None:
        self.database.paused = True
        self.harness.service.request_full_resync("test")
        self.assertEqual(self.database.held, 1)
        # The change happens after the full read took its answer.
        self.database.put(container("a1", status="stopped"))
        self.feed.deliver("compute.container.a1.stopped")
        self.assertEqual(self.database.held, 1, "the refresh waits for the full read")
        self.database.paused = False
        self.database.release()
        self.assertFalse(self.harness.directory.get("a1").running)

    def test_burst_of_events_is_one_batched_read(self) -> None:
        self.database.paused = True
        self.harness.service.request_refresh({"a1"})
        self.harness.clock.advance(0)
        for name in ("b1", "b2", "b3"):
            self.database.put(container(name))
            self.feed.deliver(f"compute.container.{name}.created")
        self.database.paused = False
        self.database.release()
        self.assertEqual(self.database.calls[-1], "load_containers b1,b2,b3")
        self.assertEqual(sorted(self.harness.directory.current.containers), ["a1", "b1", "b2", "b3"])

    def test_failed_refresh_escalates_to_full_read_and_keeps_snapshot(self) -> None:
        self.database.down = True
        self.feed.deliver("compute.container.a1.stopped")
        self.assertEqual(self.harness.directory.get("a1"), container("a1"))
        self.assertFalse(self.harness.service.status().database_connected)
        self.database.down = False
        self.database.put(container("z9"))
        self.harness.clock.advance(1)
        self.assertIsNotNone(self.harness.directory.get("z9"))
        self.assertTrue(self.harness.service.status().database_connected)

    def test_reconnect_skips_the_backoff(self) -> None:
        reads = self.database.calls.count("load_all")
        self.database.down = True
        self.harness.service.request_full_resync("test")
        self.harness.clock.advance(1)
        self.harness.clock.advance(2)
        self.assertEqual(self.database.calls.count("load_all"), reads + 3)
        self.database.down = False
        self.database.put(container("r1"))
        # The next retry is 4 s away; the database says it is back now.
        self.database.reconnect()
        self.assertIsNotNone(self.harness.directory.get("r1"))
        self.assertEqual(self.database.calls.count("load_all"), reads + 4)

    def test_events_before_database_are_ignored(self) -> None:
        feed = MemoryEventFeed()
        harness = Harness(self, events=feed)
        harness.database.down = True
        harness.start()
        feed.deliver("compute.container.a1.started")
        self.assertEqual(harness.database.calls, ["connect"])
        self.assertEqual(harness.service.status().events, 1)


class PinTests(SynchronousTestCase):
    """A deleted container's SSH host-key pin goes with it."""

    def setUp(self) -> None:
        self.feed = MemoryEventFeed()
        self.harness = Harness(self, events=self.feed)
        self.database = self.harness.database
        self.database.pins["a1"] = HostKeyPin("a1", "ssh-ed25519 AAAA", None)
        self.database.pins["gone-before-start"] = HostKeyPin("gone-before-start", "ssh-ed25519 BBBB", None)
        self.harness.start()

    def test_full_resync_prunes_pins_of_missing_containers(self) -> None:
        self.assertEqual(sorted(self.database.pins), ["a1"])

    def test_refresh_of_a_deleted_container_clears_its_pin(self) -> None:
        self.database.remove("a1")
        self.feed.deliver("compute.container.a1.deleted")
        self.assertEqual(self.database.pins, {})

    def test_stopping_waits_for_a_pin_deletion(self) -> None:
        # Routing does not wait for it, so the container is gone while the
        # deletion is still at the database; closing then would leave the
        # query's socket behind.
        self.database.remove("a1")
        self.database.paused = True
        self.feed.deliver("compute.container.a1.deleted")
        self.database.release()
        self.assertIsNone(self.harness.directory.get("a1"))
        self.assertEqual((self.database.calls[-1], self.database.held), ("clear_pin", 1))
        stopped = self.harness.service.stopService()
        self.assertEqual((self.database.closed, stopped.called), (0, False))
        self.database.release()
        self.assertEqual((self.database.closed, stopped.called, self.database.pins), (1, True, {}))

    def test_pins_of_live_containers_stay(self) -> None:
        self.feed.deliver("compute.container.a1.stopped")
        self.assertIn("a1", self.database.pins)


class PropagationTests(SynchronousTestCase):
    """Each change's time from its event's arrival to being served goes to C{on_propagated} (the owner's histogram)."""

    def test_seconds_from_arrival_to_served(self) -> None:
        clock, feed, seen = Clock(), MemoryEventFeed(), []
        feed.clock = clock
        database = MemoryDatabase([container("a1")])
        service = StateService(database, ContainerDirectory(), clock, events=feed, on_propagated=seen.append)
        service.startService()
        self.addCleanup(service.stopService)
        database.paused = True
        database.put(container("a1", status="stopped"))
        feed.deliver("compute.container.a1.stopped")
        clock.advance(0.25)
        database.paused = False
        database.release()
        self.assertEqual(seen, [0.25])
