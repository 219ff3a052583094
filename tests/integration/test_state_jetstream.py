"""
L{NatsEventFeed} against a real, throwaway nats-server on a random loopback
port: with the C{COMPUTE} stream it consumes a durable consumer, hears what
was published while it was stopped and acks each message only once the
handler's Deferred fired (redelivered when it failed); without the stream,
or without JetStream at all, it uses core subscriptions; and it changes its
mind at a reconnection without ever hearing an event twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from edd_gateway.state.events import ContainerEvent
from edd_gateway.state.jetstream import STREAM
from edd_gateway.state.nats import NatsEventFeed
from edd_gateway.testing import as_deferred, poll_until, require_asyncio_reactor
from edd_gateway.testing.nats import ThrowawayNats, add_compute_stream, compute_message, start_nats


class Handler:
    """An C{on_event} whose Deferreds the test fires."""

    def __init__(self) -> None:
        self.events: list[ContainerEvent] = []
        self.applied: list[Deferred[None]] = []
        self.connects = 0

    def __call__(self, event: ContainerEvent) -> Deferred[None]:
        self.events.append(event)
        self.applied.append(Deferred())
        return self.applied[-1]

    def connected(self) -> None:
        self.connects += 1

    def subjects(self) -> list[str]:
        return [event.subject for event in self.events]


class JetStreamFeedTests(TestCase):
    def setUp(self) -> None:
        require_asyncio_reactor()

    async def feed(self, server: ThrowawayNats, **options: Any) -> tuple[NatsEventFeed, Handler]:
        handler = Handler()
        options.setdefault("durable", "gw-test")
        feed = NatsEventFeed(server.url, reconnect_wait=0.2, **options)
        feed.bind(handler, handler.connected, lambda: None)
        self.addCleanup(feed.stop)
        await feed.start()
        return feed, handler

    def consumer(self, client: Any, name: str = "gw-test") -> Deferred[Any]:
        return as_deferred(client.jetstream().consumer_info(STREAM, name))

    def acks_pending(self, client: Any, count: int) -> Deferred[bool]:
        return self.consumer(client).addCallback(lambda info: info.num_ack_pending == count)

    async def publish(self, client: Any, kind: str, entity: str | int, action: str, **fields: Any) -> str:
        subject, body = compute_message(kind, entity, action, **fields)
        await as_deferred(client.jetstream().publish(subject, body))
        return subject

    async def test_missed_events_come_after_a_restart_and_are_acked_once_applied(self) -> None:
        server = await start_nats(self)
        client = await server.client()
        await add_compute_stream(client)
        # Long enough that a loaded machine acks the first two before the
        # server redelivers them, short enough to wait for one redelivery.
        feed, handler = await self.feed(server, ack_wait=3.0)
        self.assertEqual(feed.mode, "jetstream")
        info = await self.consumer(client)
        self.assertEqual((info.config.ack_policy, info.config.deliver_policy, info.config.max_deliver),
                         ("explicit", "all", 5))
        await feed.stop()
        self.assertIsNone(feed.mode)

        published = [await self.publish(client, "container", "web1", "started", external_ip="10.0.0.7"),
                     await self.publish(client, "sshkey", 3, "created", user_id=42, name="laptop"),
                     await self.publish(client, "ingress", "web1", "requested", port=8080, target_port=80)]
        await feed.start()
        self.assertEqual((feed.mode, handler.connects), ("jetstream", 2))
        # All three come, in any order (one may already have gone to the
        # stopping subscription and come again after ack_wait).
        await poll_until(lambda: set(published) <= set(handler.subjects()), "the missed events", timeout=15)
        first = {subject: handler.subjects().index(subject) for subject in published}
        ids = {subject: (handler.events[n].container_ids, handler.events[n].user_ids) for subject, n in first.items()}
        self.assertEqual([ids[subject] for subject in published], [(("web1",), ()), ((), ("42",)), (("web1",), ())])
        for subject in (published[0], published[2]):
            handler.applied[first[subject]].callback(None)
        # Not applied: redelivered after ack_wait, then acked.
        handler.applied[first[published[1]]].errback(RuntimeError("PostgreSQL is down"))
        await poll_until(lambda: handler.subjects().count(published[1]) >= 2, "the redelivery", timeout=15)
        again = len(handler.subjects()) - 1 - handler.subjects()[::-1].index(published[1])
        handler.applied[again].callback(None)
        for n, answer in enumerate(handler.applied):
            if not answer.called:
                answer.callback(None)
        await poll_until(lambda: self.acks_pending(client, 0), "the last ack", timeout=15)

    async def test_other_subjects_are_terminated(self) -> None:
        server = await start_nats(self)
        client = await server.client()
        await add_compute_stream(client)
        feed, handler = await self.feed(server)
        await as_deferred(client.jetstream().publish("compute.volume.v1.created", b""))
        await self.publish(client, "container", "web1", "stopped")
        await poll_until(lambda: handler.events, "the valid event")
        handler.applied[0].callback(None)
        await poll_until(lambda: self.consumer(client).addCallback(
            lambda i: (i.num_ack_pending, i.num_pending, i.delivered.stream_seq) == (0, 0, 2)), "both settled")
        self.assertEqual(handler.subjects(), ["compute.container.web1.stopped"])

    async def test_core_without_the_stream(self) -> None:
        server = await start_nats(self)
        client = await server.client()
        feed, handler = await self.feed(server)
        self.assertEqual(feed.mode, "core")
        subject, body = compute_message("container", "web1", "started")
        await as_deferred(client.publish(subject, body))
        # At the server once flushed: a timeout below is the feed's.
        await as_deferred(client.flush())
        await poll_until(lambda: handler.events, "the event", timeout=20)
        self.assertEqual(handler.events[0].container_ids, ("web1",))

    async def test_subscribed_at_the_server_once_started(self) -> None:
        # A message published the moment start() returned reaches the feed,
        # time after time: a flush whose PONG overtook the SUBs lost about
        # one in five on a loaded machine.
        server = await start_nats(self, jetstream=False)
        client = await server.client()
        for attempt in range(12):
            feed, handler = await self.feed(server, durable=f"gw-{attempt}")
            subject, body = compute_message("container", f"web{attempt}", "started")
            await as_deferred(client.publish(subject, body))
            await as_deferred(client.flush())
            await poll_until(lambda: handler.events, f"event {attempt}", timeout=10)
            self.assertEqual(handler.events[0].container_ids, (f"web{attempt}",))
            await feed.stop()

    async def test_core_without_jetstream(self) -> None:
        server = await start_nats(self, jetstream=False)
        client = await server.client()
        feed, handler = await self.feed(server)
        self.assertEqual(feed.mode, "core")
        await as_deferred(client.publish("compute.sshkey.3.deleted", b'{"userId": "42"}'))
        await as_deferred(client.flush())
        await poll_until(lambda: handler.events, "the event", timeout=20)
        self.assertEqual(handler.events[0].user_ids, ("42",))

    async def test_the_stream_is_found_at_a_reconnection_and_nothing_comes_twice(self) -> None:
        server = await start_nats(self)
        client = await server.client()
        feed, handler = await self.feed(server)
        self.assertEqual(feed.mode, "core")
        await add_compute_stream(client)
        await server.restart()
        await poll_until(lambda: handler.connects == 2, "the reconnection")
        self.assertEqual(feed.mode, "jetstream")
        await poll_until(lambda: client.is_connected, "the test's client to reconnect")
        subject = await self.publish(client, "container", "web1", "started")
        await poll_until(lambda: handler.events, "the event")
        handler.applied[0].callback(None)
        await poll_until(lambda: self.acks_pending(client, 0), "the ack")
        # Restarted again: the same consumer and subscription go on.
        await server.restart()
        await poll_until(lambda: handler.connects == 3, "the second reconnection")
        await poll_until(lambda: client.is_connected, "the test's client to reconnect")
        second = await self.publish(client, "container", "web2", "started")
        await poll_until(lambda: len(handler.events) == 2, "the second event")
        handler.applied[1].callback(None)
        await poll_until(lambda: self.acks_pending(client, 0), "the second ack")
        self.assertEqual((feed.mode, handler.subjects()), ("jetstream", [subject, second]))

    async def test_replicas_need_their_own_durable(self) -> None:
        server = await start_nats(self)
        client = await server.client()
        await add_compute_stream(client)
        first, one = await self.feed(server, durable="gw-a")
        second, two = await self.feed(server, durable="gw-a")
        third, three = await self.feed(server, durable="gw-b")
        self.assertEqual((first.mode, second.mode, third.mode), ("jetstream", "core", "jetstream"))
        await self.publish(client, "container", "web1", "started")
        await poll_until(lambda: one.events and two.events and three.events, "every replica to hear it")
        self.assertEqual((len(one.events), len(two.events), len(three.events)), (1, 1, 1))
