"""
Tests for L{edd_gateway.state.nats}'s pure half: which messages name which
containers, what is ignored as junk, and the body of
C{gateway.router.refreshed}; and L{NatsEventFeed}'s wiring of nats-py's
callbacks, over a fake client.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.state.nats import (
    SUBJECTS,
    ContainerEvent,
    EventRejected,
    NatsEventFeed,
    parse_event,
    refreshed_message,
)
from edd_gateway.testing import as_deferred


class ParseEventTests(SynchronousTestCase):
    def test_container_event(self) -> None:
        event = parse_event("compute.container.abc.started", b'{"container_id": "abc", "status": "running"}')
        self.assertEqual((event.kind, event.action, event.container_ids, event.known_action),
                         ("container", "started", ("abc",), True))

    def test_every_documented_action_is_known(self) -> None:
        for action in ("created", "started", "stopped", "deleted", "ssh_toggled", "https_toggled", "ip_assigned"):
            self.assertTrue(parse_event(f"compute.container.a.{action}", b"").known_action, action)
        for action in ("created", "deleted", "requested"):
            self.assertTrue(parse_event(f"compute.ingress.a.{action}", b"").known_action, action)

    def test_ingress_event(self) -> None:
        event = parse_event("compute.ingress.abc.deleted", b'{"container_id": "abc", "port": 8000}')
        self.assertEqual((event.kind, event.container_ids), ("ingress", ("abc",)))

    def test_id_from_subject_when_body_lacks_it(self) -> None:
        self.assertEqual(parse_event("compute.container.abc.stopped", b"").container_ids, ("abc",))
        self.assertEqual(parse_event("compute.container.abc.stopped", b"  \n").container_ids, ("abc",))
        self.assertEqual(parse_event("compute.container.abc.stopped", b'{"status": "stopped"}').container_ids,
                         ("abc",))
        self.assertEqual(parse_event("compute.container.abc.stopped", b'{"container_id": null}').container_ids,
                         ("abc",))

    def test_disagreeing_ids_reread_both(self) -> None:
        self.assertEqual(parse_event("compute.container.abc.stopped", b'{"container_id": "xyz"}').container_ids,
                         ("xyz", "abc"))

    def test_unknown_action_still_names_the_container(self) -> None:
        event = parse_event("compute.container.abc.resized", b"{}")
        self.assertEqual((event.container_ids, event.known_action), (("abc",), False))

    def test_junk(self) -> None:
        junk = [
            ("compute.container.abc.started", b"not json"),
            ("compute.container.abc.started", b"[1, 2]"),
            ("compute.container.abc.started", b'{"container_id": 42}'),
            ("compute.container.abc.started", b'{"container_id": ""}'),
            ("compute.container.abc.started", b'{"container_id": "a b"}'),
            ("compute.container.abc.started", b"\xff\xfe"),
            ("compute.container.abc.started", b"{" + b" " * 70000 + b"}"),
            ("compute.container.abc", b""),
            ("compute.container.abc.started.extra", b""),
            ("compute.volume.abc.created", b""),
            ("other.container.abc.created", b""),
        ]
        for subject, data in junk:
            with self.assertRaises(EventRejected, msg=f"{subject} {data[:20]!r}"):
                parse_event(subject, data)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=60), st.binary(max_size=200))
    def test_anything_parses_or_is_rejected(self, subject: str, data: bytes) -> None:
        try:
            event = parse_event(subject, data)
        except EventRejected:
            return
        self.assertTrue(event.container_ids)
        self.assertTrue(all(container_id and "." not in container_id for container_id in event.container_ids))


class RefreshedMessageTests(SynchronousTestCase):
    def test_shape(self) -> None:
        body = json.loads(refreshed_message(containers=3, running=2, routes=5, reason="NATS connected",
                                            now=1_800_000_000.25))
        self.assertEqual(body, {"containers": 3, "running": 2, "routes": 5, "reason": "NATS connected",
                                "timestamp": "2027-01-15T08:00:00.250000Z"})


class FakeClient:
    """The part of nats-py's client the feed uses."""

    def __init__(self) -> None:
        self.is_connected = False
        self.is_closed = False
        self.options: dict[str, Any] = {}
        self.subscriptions: dict[str, Any] = {}
        self.published: list[tuple[str, bytes]] = []

    async def connect(self, servers: Any, **options: Any) -> None:
        self.options = options
        self.is_connected = True

    async def subscribe(self, subject: str, cb: Any) -> None:
        self.subscriptions[subject] = cb

    async def flush(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))

    async def close(self) -> None:
        self.is_connected, self.is_closed = False, True


class NatsEventFeedTests(TestCase):
    def setUp(self) -> None:
        if not isinstance(reactor, AsyncioSelectorReactor):
            self.skipTest("nats-py needs the asyncio reactor: run trial with --reactor=asyncio")
        self.client = FakeClient()
        self.feed = NatsEventFeed("nats://127.0.0.1:1", client_factory=lambda: self.client)
        self.events: list[ContainerEvent] = []
        self.connects: list[str] = []
        self.feed.bind(self.events.append, lambda: self.connects.append("up"), lambda: self.connects.append("down"))

    async def test_connects_subscribes_and_delivers(self) -> None:
        await self.feed.start()
        self.assertTrue(self.feed.connected)
        self.assertEqual(self.connects, ["up"])
        self.assertEqual(sorted(self.client.subscriptions), sorted(SUBJECTS))
        self.assertEqual(self.client.options["max_reconnect_attempts"], -1)
        handler = self.client.subscriptions["compute.container.*.*"]
        await as_deferred(handler(SimpleNamespace(subject="compute.container.a1.started", data=b"junk")))
        self.assertEqual(self.events, [])
        await as_deferred(handler(SimpleNamespace(subject="compute.container.a1.started", data=b"")))
        self.assertEqual([event.container_ids for event in self.events], [("a1",)])

    async def test_reconnect_and_disconnect_are_reported(self) -> None:
        await self.feed.start()
        await as_deferred(self.client.options["disconnected_cb"]())
        await as_deferred(self.client.options["reconnected_cb"]())
        self.assertEqual(self.connects, ["up", "down", "up"])

    async def test_publish_and_stop(self) -> None:
        await self.feed.start()
        await self.feed.publish("gateway.router.refreshed", b"{}")
        self.assertEqual(self.client.published, [("gateway.router.refreshed", b"{}")])
        await self.feed.stop()
        self.assertTrue(self.client.is_closed)
        self.assertFalse(self.feed.connected)
        with self.assertRaises(ConnectionError):
            await self.feed.publish("gateway.router.refreshed", b"{}")

    async def test_a_failing_handler_is_logged_not_raised(self) -> None:
        def broken(event: ContainerEvent) -> None:
            raise RuntimeError("boom")

        self.feed.bind(broken, lambda: None, lambda: None)
        await self.feed.start()
        handler = self.client.subscriptions["compute.ingress.*.*"]
        await as_deferred(handler(SimpleNamespace(subject="compute.ingress.a1.created", data=b"")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
