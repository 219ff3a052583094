"""
Tests for L{edd_gateway.state.events}, the pure half: what each subject and body
(the compute service's protobuf messages, JSON in both casings, junk) names
to re-read, that junk is logged once per kind, and the body of
C{gateway.router.refreshed}; and L{NatsEventFeed}'s wiring of nats-py's
callbacks over fake clients: core subscriptions, or the durable JetStream
consumer acked only once the handler's Deferred fires.  The same feed
against a real nats-server is in C{test_state_jetstream}.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError, ServiceUnavailableError
from twisted.internet import reactor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.state import events
from edd_gateway.state.events import (
    SUBJECTS,
    ContainerEvent,
    EventRejected,
    parse_event,
    refreshed_message,
)
from edd_gateway.state.events_pb import MESSAGES
from edd_gateway.state.nats import NatsEventFeed
from edd_gateway.testing import as_deferred, poll_until
from edd_gateway.testing.nats import compute_event, compute_message

# What the subject grammar allows as a token (an id or an action), encodable as UTF-8.
_TOKENS = st.text(st.characters(codec="utf-8", exclude_characters=".*>"), min_size=1, max_size=20).filter(
    lambda text: events._TOKEN.fullmatch(text) is not None)


def _ids(subject: str, data: bytes) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    event = parse_event(subject, data)
    return event.container_ids, event.user_ids, event.full_resync


class ParseLogTestCase(SynchronousTestCase):
    """Each test starts with no kind warned about, and sees the log lines."""

    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.patch(events, "_undecodable_kinds", set())
        self.patch(events, "_log", Logger(observer=cast(ILogObserver, self.logged.append)))

    def undecodable_lines(self) -> list[str]:
        return [event["subject"] for event in self.logged if "cannot decode" in event["log_format"]]


class ProtobufBodyTests(ParseLogTestCase):
    def test_every_container_message(self) -> None:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("created", {"user_id": 7, "name": "web", "memory_mb": 512, "image": "nginx"}),
            ("started", {"external_ip": "10.0.0.7"}), ("stopped", {}), ("deleted", {"user_id": 7}),
            ("ssh_toggled", {"ssh_enabled": True}), ("https_toggled", {"https_enabled": False}),
            ("ip_assigned", {"external_ip": "10.0.0.8"})]
        for action, fields in cases:
            subject, body = compute_message("container", "abc", action, **fields)
            event = parse_event(subject, body)
            self.assertEqual((event.kind, event.action, event.container_ids, event.user_ids, event.full_resync,
                              event.known_action), ("container", action, ("abc",), (), False, True), action)
        self.assertEqual(self.undecodable_lines(), [])

    def test_ingress_messages(self) -> None:
        for action, fields in [("requested", {"port": 8080, "target_port": 80}), ("delete_requested", {"port": 8080})]:
            subject, body = compute_message("ingress", "abc", action, **fields)
            self.assertEqual(parse_event(subject, body),
                             ContainerEvent(subject, "ingress", action, ("abc",)))

    def test_sshkey_messages_name_the_user_as_text(self) -> None:
        created = compute_event("sshkey", "created", key_id=3, user_id=42, name="laptop", fingerprint="SHA256:x")
        deleted = compute_event("sshkey", "deleted", key_id=3, user_id=42)
        for action, body in (("created", created), ("deleted", deleted)):
            event = parse_event(f"compute.sshkey.3.{action}", body)
            self.assertEqual((event.kind, event.container_ids, event.user_ids, event.full_resync),
                             ("sshkey", (), ("42",), False))

    def test_sshkey_without_a_user_reads_everything(self) -> None:
        self.assertEqual(_ids("compute.sshkey.3.deleted", compute_event("sshkey", "deleted", key_id=3)),
                         ((), (), True))
        self.assertEqual(_ids("compute.sshkey.3.deleted", b""), ((), (), True))
        negative = compute_event("sshkey", "deleted", key_id=3, user_id=-1)
        self.assertEqual(_ids("compute.sshkey.3.deleted", negative), ((), (), True))
        self.assertEqual(self.undecodable_lines(), ["compute.sshkey.3.deleted"])

    def test_body_naming_another_container_rereads_both(self) -> None:
        body = compute_event("container", "stopped", container_id="xyz")
        self.assertEqual(parse_event("compute.container.abc.stopped", body).container_ids, ("xyz", "abc"))

    def test_metadata_only_names_nothing_more(self) -> None:
        body = compute_event("container", "started", metadata={"entity_id": "abc"})
        self.assertEqual(parse_event("compute.container.abc.started", body).container_ids, ("abc",))

    def test_unknown_action_decodes_the_shared_fields(self) -> None:
        body = MESSAGES["ContainerStarted"](container_id="xyz", external_ip="10.0.0.7").SerializeToString()
        event = parse_event("compute.container.abc.resized", body)
        self.assertEqual((event.container_ids, event.known_action), (("xyz", "abc"), False))
        body = MESSAGES["SSHKeyCreated"](key_id=1, user_id=9, name="n").SerializeToString()
        self.assertEqual(parse_event("compute.sshkey.1.rotated", body).user_ids, ("9",))

    def test_a_body_starting_with_a_newline_is_still_protobuf(self) -> None:
        # Field 1 (metadata) is tagged 0x0a, "\n": not to be taken for JSON's whitespace.
        body = compute_event("container", "started", container_id="xyz", metadata={"event_id": "{" * 10})
        self.assertTrue(body.startswith(b"\n"))
        self.assertEqual(parse_event("compute.container.abc.started", body).container_ids, ("xyz", "abc"))
        # And a metadata of length 123 ("{") right after it.
        metadata = MESSAGES["EventMetadata"](event_id="e" * 121)
        body = MESSAGES["ContainerStarted"](metadata=metadata, container_id="xyz").SerializeToString()
        self.assertEqual(body[:3], b"\n{\n")
        self.assertEqual(parse_event("compute.container.abc.started", body).container_ids, ("xyz", "abc"))
        self.assertEqual(self.undecodable_lines(), [])


class JsonBodyTests(ParseLogTestCase):
    def test_container_id_in_both_casings(self) -> None:
        for key in ("container_id", "containerId"):
            body = json.dumps({key: "xyz", "status": "running"}).encode()
            self.assertEqual(parse_event("compute.container.abc.started", body).container_ids, ("xyz", "abc"))
            self.assertEqual(parse_event("compute.ingress.abc.created", body).container_ids, ("xyz", "abc"))

    def test_user_id_in_both_casings_as_number_or_string(self) -> None:
        for body in ({"user_id": 42}, {"userId": 42}, {"user_id": "42"}, {"userId": "42", "keyId": "3"}):
            self.assertEqual(_ids("compute.sshkey.3.created", json.dumps(body).encode()), ((), ("42",), False), body)

    def test_id_from_subject_when_body_lacks_it(self) -> None:
        for body in (b"", b"  \n", b"{}", b'{"status": "stopped"}', b'{"container_id": null}'):
            self.assertEqual(parse_event("compute.container.abc.stopped", body).container_ids, ("abc",), body)
        self.assertEqual(self.undecodable_lines(), [])

    def test_json_with_leading_whitespace(self) -> None:
        self.assertEqual(parse_event("compute.container.abc.stopped", b'\n {"containerId": "xyz"}').container_ids,
                         ("xyz", "abc"))

    def test_sshkey_user_ids_that_are_not_ids(self) -> None:
        for body in ({"user_id": True}, {"user_id": 0}, {"user_id": "a b"}, {"user_id": 4.2}, {"user_id": [1]}):
            self.assertEqual(_ids("compute.sshkey.3.created", json.dumps(body).encode()), ((), (), True), body)


class JunkTests(ParseLogTestCase):
    def test_junk_bodies_still_reread_the_subject(self) -> None:
        junk = [b"not json", b"[1, 2]", b'{"container_id": 42}', b'{"container_id": ""}', b'{"container_id": "a b"}',
                b"\xff\xfe", b"{" + b" " * 70000 + b"}", b"{not json", b"\x12\x02\xff\xfe", b"{" * 5000,
                b'{"container_id": "a.b"}']
        for data in junk:
            self.assertEqual(parse_event("compute.container.abc.started", data).container_ids, ("abc",), data[:20])

    def test_undecodable_bodies_are_logged_once_per_kind(self) -> None:
        for _ in range(3):
            parse_event("compute.container.abc.started", b"not json")
            parse_event("compute.container.def.stopped", b"\xff")
            parse_event("compute.ingress.abc.requested", b"{nope")
            parse_event("compute.sshkey.3.created", b"junk")
        self.assertEqual(self.undecodable_lines(), ["compute.container.abc.started", "compute.ingress.abc.requested",
                                                    "compute.sshkey.3.created"])

    def test_junk_subjects_are_rejected(self) -> None:
        for subject in ["compute.container.abc", "compute.container.abc.started.extra", "compute.volume.abc.created",
                        "other.container.abc.created", "compute.container..started", "compute.container.a b.started",
                        "compute.container.*.started", "compute.sshkey.3.>", ""]:
            with self.assertRaises(EventRejected, msg=subject):
                parse_event(subject, b"")

    def test_every_documented_action_is_known(self) -> None:
        for kind, actions in [("container", ("created", "started", "stopped", "deleted", "ssh_toggled",
                                             "https_toggled", "ip_assigned")),
                              ("ingress", ("created", "deleted", "requested", "delete_requested")),
                              ("sshkey", ("created", "deleted"))]:
            for action in actions:
                self.assertTrue(parse_event(f"compute.{kind}.1.{action}", b"").known_action, (kind, action))
        self.assertFalse(parse_event("compute.container.a.resized", b"{}").known_action)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=60), st.binary(max_size=200))
    def test_anything_parses_or_is_rejected_for_its_subject(self, subject: str, data: bytes) -> None:
        try:
            event = parse_event(subject, data)
        except EventRejected:
            return
        self.assert_sane(event)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(["container", "ingress", "sshkey"]), _TOKENS, _TOKENS, st.binary(max_size=300))
    def test_any_body_on_a_good_subject_parses(self, kind: str, entity: str, action: str, data: bytes) -> None:
        event = parse_event(f"compute.{kind}.{entity}.{action}", data)
        self.assert_sane(event)
        if kind != "sshkey":
            self.assertIn(entity, event.container_ids)

    @settings(max_examples=100, deadline=None)
    @given(_TOKENS, _TOKENS)
    def test_protobuf_container_ids_round_trip(self, subject_id: str, body_id: str) -> None:
        body = compute_event("container", "started", container_id=body_id)
        self.assertEqual(set(parse_event(f"compute.container.{subject_id}.started", body).container_ids),
                         {subject_id, body_id})

    def assert_sane(self, event: ContainerEvent) -> None:
        if event.kind == "sshkey":
            self.assertEqual(event.container_ids, ())
            self.assertNotEqual(bool(event.user_ids), event.full_resync)
        else:
            self.assertTrue(event.container_ids)
        for name in event.container_ids + event.user_ids:
            self.assertTrue(events._TOKEN.fullmatch(name), name)


class RefreshedMessageTests(SynchronousTestCase):
    def test_shape(self) -> None:
        body = json.loads(refreshed_message(containers=3, running=2, routes=5, reason="NATS connected",
                                            now=1_800_000_000.25))
        self.assertEqual(body, {"containers": 3, "running": 2, "routes": 5, "reason": "NATS connected",
                                "timestamp": "2027-01-15T08:00:00.250000Z"})


class FakeMessage:
    def __init__(self, subject: str, data: bytes = b"") -> None:
        self.subject, self.data = subject, data
        self.acked = self.termed = False

    async def ack(self) -> None:
        self.acked = True

    async def term(self) -> None:
        self.termed = True


class FakeSubscription:
    def __init__(self, subject: str, cb: Any, subscriptions: dict[str, Any]) -> None:
        self.subject, self.cb, self._subscriptions = subject, cb, subscriptions

    async def unsubscribe(self) -> None:
        self._subscriptions.pop(self.subject, None)


class FakeJetStream:
    """The part of nats-py's JetStream context the feed uses, over one stream."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.stream: bool | None = False  # None: a server without JetStream
        self.consumers: dict[str, Any] = {}

    async def stream_info(self, name: str) -> Any:
        if self.stream is None:
            raise ServiceUnavailableError()
        if not self.stream:
            raise NotFoundError()
        return SimpleNamespace(name=name)

    async def consumer_info(self, stream: str, name: str) -> Any:
        if name not in self.consumers:
            raise NotFoundError()
        bound = self.consumers[name].deliver_subject in self.client.subscriptions
        return SimpleNamespace(config=self.consumers[name], push_bound=bound)

    async def add_consumer(self, stream: str, config: Any) -> Any:
        self.consumers[config.durable_name] = config
        return SimpleNamespace(config=config, push_bound=False)

    async def subscribe_bind(self, stream: str, config: Any, consumer: str, cb: Any, manual_ack: bool) -> Any:
        assert manual_ack
        return await self.client.subscribe(config.deliver_subject, cb=cb)


class FakeClient:
    """The part of nats-py's client the feed uses."""

    def __init__(self) -> None:
        self.is_connected = False
        self.is_closed = False
        self.options: dict[str, Any] = {}
        self.subscriptions: dict[str, Any] = {}
        self.published: list[tuple[str, bytes]] = []
        self.js = FakeJetStream(self)

    async def connect(self, servers: Any, **options: Any) -> None:
        self.options = options
        self.is_connected = True

    def jetstream(self, timeout: float) -> FakeJetStream:
        return self.js

    def new_inbox(self) -> str:
        return "_INBOX.fake"

    async def subscribe(self, subject: str, cb: Any) -> FakeSubscription:
        subscription = self.subscriptions[subject] = FakeSubscription(subject, cb, self.subscriptions)
        return subscription

    async def flush(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))

    async def close(self) -> None:
        self.is_connected, self.is_closed = False, True

    def deliver(self, subscription: str, subject: str, data: bytes = b"") -> Deferred[Any]:
        return as_deferred(self.subscriptions[subscription].cb(FakeMessage(subject, data)))


class FeedTestCase(TestCase):
    def setUp(self) -> None:
        if not isinstance(reactor, AsyncioSelectorReactor):
            self.skipTest("nats-py needs the asyncio reactor: run trial with --reactor=asyncio")
        self.client = FakeClient()
        self.feed = NatsEventFeed("nats://127.0.0.1:1", durable="gw-1", ack_wait=7, max_deliver=3,
                                  client_factory=lambda: self.client)
        self.addCleanup(self.feed.stop)
        self.events: list[ContainerEvent] = []
        self.applied: list[Deferred[None]] = []
        self.connects: list[str] = []
        self.feed.bind(self.handle, lambda: self.connects.append("up"), lambda: self.connects.append("down"))

    def handle(self, event: ContainerEvent) -> Deferred[None]:
        self.events.append(event)
        self.applied.append(Deferred())
        return self.applied[-1]


class CoreFeedTests(FeedTestCase):
    async def test_connects_subscribes_and_delivers(self) -> None:
        await self.feed.start()
        self.assertTrue(self.feed.connected)
        self.assertEqual(self.feed.mode, "core")
        self.assertEqual(self.connects, ["up"])
        self.assertEqual(sorted(self.client.subscriptions), sorted(SUBJECTS))
        self.assertEqual(self.client.options["max_reconnect_attempts"], -1)
        await self.client.deliver("compute.container.*.*", "compute.container.a1.started", b"junk")
        await self.client.deliver("compute.container.*.*", "compute.container.a1.started", b"")
        await self.client.deliver("compute.sshkey.*.*", "compute.sshkey.3.created", b'{"user_id": 7}')
        self.assertEqual([(event.container_ids, event.user_ids) for event in self.events],
                         [(("a1",), ()), (("a1",), ()), ((), ("7",))])
        self.applied[0].errback(RuntimeError("PostgreSQL is down"))  # consumed, not an unhandled error

    async def test_no_jetstream_at_all_is_core(self) -> None:
        self.client.js.stream = None
        await self.feed.start()
        self.assertEqual(self.feed.mode, "core")

    async def test_reconnect_and_disconnect_are_reported(self) -> None:
        await self.feed.start()
        await as_deferred(self.client.options["disconnected_cb"]())
        await as_deferred(self.client.options["reconnected_cb"]())
        await poll_until(lambda: len(self.connects) == 3, "the reconnection to be reported")
        self.assertEqual(self.connects, ["up", "down", "up"])

    async def test_publish_and_stop(self) -> None:
        await self.feed.start()
        await self.feed.publish("gateway.router.refreshed", b"{}")
        self.assertEqual(self.client.published, [("gateway.router.refreshed", b"{}")])
        await self.feed.stop()
        self.assertTrue(self.client.is_closed)
        self.assertFalse(self.feed.connected)
        self.assertIsNone(self.feed.mode)
        with self.assertRaises(ConnectionError):
            await self.feed.publish("gateway.router.refreshed", b"{}")

    async def test_a_failing_handler_is_logged_not_raised(self) -> None:
        def broken(event: ContainerEvent) -> None:
            raise RuntimeError("boom")

        self.feed.bind(broken, lambda: None, lambda: None)
        await self.feed.start()
        await self.client.deliver("compute.ingress.*.*", "compute.ingress.a1.created")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class JetStreamFeedTests(FeedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.js.stream = True

    async def test_consumes_the_durable_consumer_it_creates(self) -> None:
        await self.feed.start()
        self.assertEqual(self.feed.mode, "jetstream")
        self.assertEqual(sorted(self.client.subscriptions), ["_INBOX.fake"])
        config = self.client.js.consumers["gw-1"]
        self.assertEqual((config.durable_name, config.deliver_subject, config.ack_policy, config.deliver_policy,
                          config.ack_wait, config.max_deliver, config.filter_subject),
                         ("gw-1", "_INBOX.fake", "explicit", "all", 7, 3, None))

    async def test_acked_only_once_applied(self) -> None:
        await self.feed.start()
        message = FakeMessage("compute.container.a1.started", compute_event("container", "started"))
        await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
        self.assertEqual(self.events[0].container_ids, ("a1",))
        self.assertFalse(message.acked)
        self.applied[0].callback(None)
        await poll_until(lambda: message.acked, "the ack")

    async def test_not_applied_is_not_acked(self) -> None:
        await self.feed.start()
        message = FakeMessage("compute.container.a1.started")
        await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
        self.applied[0].errback(RuntimeError("PostgreSQL is down"))
        self.assertFalse(message.acked)
        self.assertFalse(message.termed)

    async def test_a_handler_returning_none_is_acked_at_once(self) -> None:
        self.feed.bind(lambda event: None, lambda: None, lambda: None)
        await self.feed.start()
        message = FakeMessage("compute.sshkey.3.deleted")
        await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
        await poll_until(lambda: message.acked, "the ack")

    async def test_rejected_subjects_are_terminated(self) -> None:
        await self.feed.start()
        message = FakeMessage("compute.volume.v1.created")
        await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
        self.assertEqual((self.events, message.termed, message.acked), ([], True, False))

    async def test_heartbeats_and_flow_control_are_not_events(self) -> None:
        await self.feed.start()
        for reply in ("", "$JS.FC.COMPUTE.x"):
            message = FakeMessage("_INBOX.fake")
            message.headers, message.reply = {"Status": "100"}, reply  # type: ignore[attr-defined]
            await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
            self.assertEqual((self.events, message.termed, message.acked), ([], False, False))
        self.assertEqual(self.client.published, [("$JS.FC.COMPUTE.x", b"")])

    async def test_an_existing_consumer_is_kept(self) -> None:
        existing = SimpleNamespace(durable_name="gw-1", deliver_subject="deliver.gw-1", ack_wait=60)
        self.client.js.consumers["gw-1"] = existing
        await self.feed.start()
        self.assertEqual(sorted(self.client.subscriptions), ["deliver.gw-1"])
        self.assertIs(self.client.js.consumers["gw-1"], existing)

    async def test_a_consumer_bound_elsewhere_means_core(self) -> None:
        self.client.js.consumers["gw-1"] = SimpleNamespace(durable_name="gw-1", deliver_subject="taken")
        self.client.subscriptions["taken"] = object()  # another replica's
        await self.feed.start()
        self.assertEqual(self.feed.mode, "core")

    async def test_a_pull_consumer_means_core(self) -> None:
        self.client.js.consumers["gw-1"] = SimpleNamespace(durable_name="gw-1", deliver_subject=None)
        await self.feed.start()
        self.assertEqual(self.feed.mode, "core")

    async def test_mode_is_chosen_again_at_each_reconnection(self) -> None:
        self.client.js.stream = False
        await self.feed.start()
        self.assertEqual(self.feed.mode, "core")
        self.client.js.stream = True
        await as_deferred(self.client.options["reconnected_cb"]())
        await poll_until(lambda: self.connects == ["up", "up"], "the reconnection to be reported")
        self.assertEqual((self.feed.mode, sorted(self.client.subscriptions)), ("jetstream", ["_INBOX.fake"]))
        # The consumer lost (a server without its storage): made again on the same subject.
        self.client.js.consumers.clear()
        await as_deferred(self.client.options["reconnected_cb"]())
        await poll_until(lambda: len(self.connects) == 3, "the reconnection to be reported")
        self.assertEqual((self.feed.mode, sorted(self.client.subscriptions)), ("jetstream", ["_INBOX.fake"]))
        self.assertIn("gw-1", self.client.js.consumers)
        self.client.js.stream = False
        await as_deferred(self.client.options["reconnected_cb"]())
        await poll_until(lambda: len(self.connects) == 4, "the reconnection to be reported")
        self.assertEqual((self.feed.mode, sorted(self.client.subscriptions)), ("core", sorted(SUBJECTS)))

    async def test_handler_results(self) -> None:
        results: list[object] = [None, succeed(None)]
        self.feed.bind(lambda event: results.pop(0), lambda: None, lambda: None)
        await self.feed.start()
        messages = [FakeMessage("compute.container.a1.started"), FakeMessage("compute.container.a2.started")]
        for message in messages:
            await as_deferred(self.client.subscriptions["_INBOX.fake"].cb(message))
        await poll_until(lambda: all(message.acked for message in messages), "the acks")
