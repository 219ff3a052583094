"""
Tests for L{edd_gateway.front.sniff}: the pure classifier, the sniffing protocol
over an in-memory transport with a fake clock.  One loopback connection:
C{tests/integration/test_sniff_loopback.py}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.front.classify import HTTP_METHODS, SNIFF_MAX_BYTES, Verdict, classify
from edd_gateway.front.sniff import SniffingFactory, SniffingProtocol
from edd_gateway.testing.transports import HandoverTransport, RecordingFactory
from edd_gateway.net.addresses import describe_peer

CLIENT = IPv4Address("TCP", "203.0.113.7", 51234)
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
HTTP_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\n\r\n"


def openings() -> list[tuple[bytes, Verdict]]:
    return [
        *((method + b" / HTTP/1.1\r\n", Verdict.HTTP) for method in HTTP_METHODS),
        (TLS_CLIENT_HELLO_START, Verdict.TLS),
        (SSH_BANNER, Verdict.SSH),
    ]


def decisive_length(opening: bytes, verdict: Verdict) -> int:
    if verdict is Verdict.HTTP:
        return opening.index(b" ") + 1
    return {Verdict.TLS: 2, Verdict.SSH: 4}[verdict]


class ClassifyTests(SynchronousTestCase):
    def test_every_opening_byte_by_byte(self) -> None:
        """Each prefix is NEED_MORE until the opening is decisive, then the verdict."""
        for opening, verdict in openings():
            cut = decisive_length(opening, verdict)
            for length in range(len(opening) + 1):
                expected = Verdict.NEED_MORE if length < cut else verdict
                self.assertEqual(
                    classify(opening[:length]), expected, f"{opening[:length]!r}"
                )

    def test_empty_needs_more(self) -> None:
        self.assertIs(classify(b""), Verdict.NEED_MORE)

    def test_partial_openings_need_more(self) -> None:
        for partial in (b"G", b"GE", b"GET", b"PROPPATC", b"\x16", b"S", b"SS", b"SSH"):
            self.assertIs(classify(partial), Verdict.NEED_MORE, repr(partial))

    def test_garbage_is_unknown(self) -> None:
        for garbage in (
            b"\x00",
            b"\xff\xfe\xfd",
            b"hello",
            b"get / HTTP/1.1\r\n",  # methods are case-sensitive
            b"GET/",
            b"GETS ",
            b"\x16\x02\x00",  # a handshake record of no SSL/TLS version
            b"\x17\x03\x03",  # application data before any handshake
            b"SSH2",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior knowledge
            b"\r\nGET / HTTP/1.1\r\n",
        ):
            self.assertIs(classify(garbage), Verdict.UNKNOWN, repr(garbage))

    def test_longest_opening_within_bound(self) -> None:
        self.assertIs(classify(b"PROPPATCH"), Verdict.NEED_MORE)
        self.assertIs(classify(b"PROPPATCH /"), Verdict.HTTP)
        self.assertLessEqual(len(b"PROPPATCH "), SNIFF_MAX_BYTES)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_any_bytes_give_a_verdict(self, data: bytes) -> None:
        verdict = classify(data)
        self.assertIsInstance(verdict, Verdict)
        if len(data) >= SNIFF_MAX_BYTES:
            self.assertIsNot(verdict, Verdict.NEED_MORE)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=24), st.binary(max_size=24))
    def test_decisions_are_final(self, prefix: bytes, more: bytes) -> None:
        verdict = classify(prefix)
        if verdict is not Verdict.NEED_MORE:
            self.assertIs(classify(prefix + more), verdict)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(openings()), st.binary(max_size=32), st.data())
    def test_openings_byte_by_byte_never_wrong(
        self, case: tuple[bytes, Verdict], tail: bytes, data: st.DataObject
    ) -> None:
        opening, verdict = case
        stream = opening + tail
        cut = data.draw(st.integers(0, len(stream)))
        self.assertIn(classify(stream[:cut]), (Verdict.NEED_MORE, verdict))
        self.assertIs(classify(stream), verdict)


class RequestLineClassifyTests(SynchronousTestCase):
    """
    C{request_lines=True} (every listener but container ports): any word
    then a space is HTTP, so the HTTP side can answer 501, 400 or GOAWAY.
    """

    def test_method_shaped_words_are_http(self) -> None:
        for opening in (b"FOO /a HTTP/1.1\r\n", b"get /a HTTP/1.1\r\n", b"G@T /a HTTP/1.1\r\n",
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"SSH /", b"A" * 15 + b" "):
            self.assertIs(classify(opening, request_lines=True), Verdict.HTTP, repr(opening))
            self.assertIs(classify(opening), Verdict.UNKNOWN, repr(opening))

    def test_known_openings_unchanged(self) -> None:
        for opening, verdict in openings():
            self.assertIs(classify(opening, request_lines=True), verdict, repr(opening))

    def test_words_need_more_until_the_space(self) -> None:
        for partial in (b"F", b"FOO", b"get", b"SSH", b"A" * 15):
            self.assertIs(classify(partial, request_lines=True), Verdict.NEED_MORE, repr(partial))

    def test_a_word_as_long_as_the_bound_stays_unknown(self) -> None:
        # Found by test_decisions_are_final: 16 letters are UNKNOWN, so 16
        # letters and a space must be too.
        self.assertIs(classify(b"A" * 16 + b" /", request_lines=True), Verdict.UNKNOWN)
        self.assertIs(classify(b"A" * 15 + b" ", request_lines=True), Verdict.HTTP)

    def test_still_unknown(self) -> None:
        for garbage in (b"\x00", b" GET /", b"hello\r\n", b"A" * 16, b"\r\nGET / HTTP/1.1\r\n", b"\x16\x02"):
            self.assertIs(classify(garbage, request_lines=True), Verdict.UNKNOWN, repr(garbage))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=24), st.binary(max_size=24))
    def test_decisions_are_final(self, prefix: bytes, more: bytes) -> None:
        verdict = classify(prefix, request_lines=True)
        if verdict is not Verdict.NEED_MORE:
            self.assertIs(classify(prefix + more, request_lines=True), verdict)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=SNIFF_MAX_BYTES, max_size=64))
    def test_decisive_within_the_bound(self, data: bytes) -> None:
        self.assertIsNot(classify(data[:SNIFF_MAX_BYTES], request_lines=True), Verdict.NEED_MORE)


class DescribePeerTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(describe_peer(CLIENT), "203.0.113.7:51234")

    def test_ipv6_bracketed(self) -> None:
        self.assertEqual(
            describe_peer(IPv6Address("TCP", "2001:db8::1", 443)), "[2001:db8::1]:443"
        )


class SniffingProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.http = RecordingFactory()
        self.ssh = RecordingFactory()

    def sniffer(
        self,
        handlers: dict[Verdict, protocol.Factory] | None = None,
        default: Verdict | None = None,
        peer: IAddress = CLIENT,
    ) -> tuple[SniffingFactory, HandoverTransport]:
        if handlers is None:
            handlers = {Verdict.HTTP: self.http, Verdict.SSH: self.ssh}
        factory = SniffingFactory(
            handlers,
            clock=self.clock,
            listener_name="tcp:8080",
            default=default,
            timeout=5.0,
        )
        sniffing = factory.buildProtocol(peer)
        transport = HandoverTransport(peerAddress=peer)
        transport.protocol = sniffing
        sniffing.makeConnection(transport)
        return factory, transport

    def deliver(self, transport: HandoverTransport, data: bytes) -> None:
        """What a transport does: give the bytes to its current protocol."""
        transport.protocol.dataReceived(data)

    def test_one_byte_at_a_time(self) -> None:
        factory, transport = self.sniffer()
        for i in range(len(HTTP_REQUEST)):
            self.deliver(transport, HTTP_REQUEST[i : i + 1])
        [handler] = self.http.built
        self.assertEqual(handler.events[0], ("made", b""))
        self.assertEqual(handler.events[1], ("data", b"GET "))
        self.assertEqual([kind for kind, _ in handler.events].count("made"), 1)
        self.assertEqual(handler.received(), HTTP_REQUEST)
        self.assertIs(transport.protocol, handler)
        self.assertIs(handler.transport, transport)
        self.assertEqual(self.http.peers, [CLIENT])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(factory.stats.handed_off[Verdict.HTTP], 1)

    def test_replay_is_exact(self) -> None:
        """Everything read before the verdict arrives at once, unchanged."""
        _, transport = self.sniffer()
        self.deliver(transport, b"SS")
        self.deliver(transport, SSH_BANNER[2:] + b"\x00\x00\x01\x0c")
        [handler] = self.ssh.built
        self.assertEqual(
            handler.events, [("made", b""), ("data", SSH_BANNER + b"\x00\x00\x01\x0c")]
        )

    def test_silent_client_gets_default(self) -> None:
        factory, transport = self.sniffer(default=Verdict.SSH)
        self.clock.advance(4.9)
        self.assertEqual(self.ssh.built, [])
        self.clock.advance(0.1)
        [handler] = self.ssh.built
        self.assertEqual(handler.events, [("made", b"")])
        self.deliver(transport, SSH_BANNER)
        self.assertEqual(handler.received(), SSH_BANNER)
        self.assertEqual(factory.stats.silent_timeouts, 1)
        self.assertEqual(factory.stats.handed_off[Verdict.SSH], 1)

    def test_silent_client_closed_without_default(self) -> None:
        with capturedLogs() as events:
            factory, transport = self.sniffer(default=None)
            self.clock.advance(5.0)
        self.assertFalse(transport.connected)
        self.assertEqual(self.http.built + self.ssh.built, [])
        self.assertEqual(factory.stats.silent_timeouts, 1)
        self.assertIn(
            "sniff: 203.0.113.7:51234 on tcp:8080 sent nothing in 5.0s; closing",
            [formatEvent(e) for e in events],
        )

    def test_partial_opening_on_timeout_closes(self) -> None:
        with capturedLogs() as events:
            factory, transport = self.sniffer(default=Verdict.SSH)
            self.deliver(transport, b"GE")
            self.clock.advance(5.0)
        self.assertFalse(transport.connected)
        self.assertEqual(self.http.built + self.ssh.built, [])
        self.assertEqual(factory.stats.partial_timeouts, 1)
        self.assertIn(
            "sniff: 203.0.113.7:51234 on tcp:8080 sent only b'GE' in 5.0s; closing",
            [formatEvent(e) for e in events],
        )

    def test_unknown_bytes_abort(self) -> None:
        with capturedLogs() as events:
            factory, transport = self.sniffer()
            self.deliver(transport, b"\x00" * 100)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.http.built + self.ssh.built, [])
        self.assertEqual(factory.stats.unknown, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        first = bytes(SNIFF_MAX_BYTES)
        expected = (
            f"sniff: 203.0.113.7:51234 on tcp:8080 sent {first!r}, "
            "not TLS, HTTP or SSH; closing"
        )
        self.assertIn(expected, [formatEvent(e) for e in events])

    def test_unknown_method_handed_to_http(self) -> None:
        """The HTTP side, not the sniffer, answers a method it does not know."""
        factory, transport = self.sniffer()
        self.deliver(transport, b"FOO /a HTTP/1.1\r\nHost: x\r\n\r\n")
        [http] = self.http.built
        self.assertEqual(http.received(), b"FOO /a HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(factory.stats.unknown, 0)

    def test_unknown_method_on_a_container_port_is_raw(self) -> None:
        raw = RecordingFactory()
        factory = SniffingFactory({Verdict.HTTP: self.http}, clock=self.clock, listener_name="tcp:8000",
                                  timeout=5.0, raw=raw)
        sniffing = factory.buildProtocol(CLIENT)
        transport = HandoverTransport(peerAddress=CLIENT)
        transport.protocol = sniffing
        sniffing.makeConnection(transport)
        self.deliver(transport, b"SET key value\r\n")
        self.assertEqual(self.http.built, [])
        [relayed] = raw.built
        self.assertEqual(relayed.received(), b"SET key value\r\n")

    def test_unsupported_kind_closes_and_logs(self) -> None:
        with capturedLogs() as events:
            factory, transport = self.sniffer()
            self.deliver(transport, TLS_CLIENT_HELLO_START)
        self.assertFalse(transport.connected)
        self.assertFalse(transport.disconnected, "closed politely, not aborted")
        self.assertEqual(factory.stats.unsupported[Verdict.TLS], 1)
        self.assertIn(
            "sniff: 203.0.113.7:51234 spoke TLS on tcp:8080, not served yet; closing",
            [formatEvent(e) for e in events],
        )

    def test_client_leaves_before_verdict(self) -> None:
        with capturedLogs() as events:
            factory, transport = self.sniffer()
            self.deliver(transport, b"PO")
            transport.loseConnection()
            self.clock.advance(10)
        self.assertEqual(self.http.built + self.ssh.built, [])
        self.assertEqual(factory.stats.closed_early, 1)
        self.assertEqual(factory.stats.partial_timeouts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug])

    def test_refusing_handler_closes(self) -> None:
        refusing = RecordingFactory(refuse=True)
        factory, transport = self.sniffer({Verdict.HTTP: refusing})
        self.deliver(transport, HTTP_REQUEST)
        self.assertFalse(transport.connected)
        self.assertEqual(refusing.peers, [CLIENT])
        self.assertEqual(factory.stats.handed_off[Verdict.HTTP], 0)

    def test_handler_closing_at_start_gets_no_replay(self) -> None:
        closing = RecordingFactory(close_at_start=True)
        _, transport = self.sniffer({Verdict.HTTP: closing})
        self.deliver(transport, HTTP_REQUEST)
        [handler] = closing.built
        self.assertEqual(handler.events, [("made", b""), ("lost", b"")])

    def test_ipv6_peer_in_logs(self) -> None:
        peer = IPv6Address("TCP", "2001:db8::7", 40000)
        with capturedLogs() as events:
            self.sniffer({}, peer=peer)[1].protocol.dataReceived(SSH_BANNER)
        self.assertIn(
            "sniff: [2001:db8::7]:40000 spoke SSH on tcp:8080, not served yet; closing",
            [formatEvent(e) for e in events],
        )

    def test_peer_asked_of_the_transport(self) -> None:
        """Behind a PROXY-protocol wrapper the transport knows the real client."""
        proxy = IPv4Address("TCP", "10.0.0.9", 40000)
        factory = SniffingFactory({Verdict.HTTP: self.http}, clock=self.clock, listener_name="l")
        with capturedLogs() as events:
            for opening in (HTTP_REQUEST, SSH_BANNER):
                sniffing = factory.buildProtocol(proxy)
                transport = HandoverTransport(peerAddress=CLIENT)
                transport.protocol = sniffing
                sniffing.makeConnection(transport)
                self.deliver(transport, opening)
        self.assertEqual(self.http.peers, [CLIENT])
        self.assertIn(
            "sniff: 203.0.113.7:51234 spoke SSH on l, not served yet; closing",
            [formatEvent(e) for e in events],
        )

    def test_protocol_type(self) -> None:
        factory, transport = self.sniffer()
        self.assertIsInstance(transport.protocol, SniffingProtocol)


class SniffingFactoryTests(SynchronousTestCase):
    def test_rejects_undecided_kinds(self) -> None:
        for kind in (Verdict.NEED_MORE, Verdict.UNKNOWN):
            self.assertRaises(
                ValueError,
                SniffingFactory,
                {kind: protocol.Factory()},
                clock=Clock(),
                listener_name="x",
            )
        self.assertRaises(
            ValueError,
            SniffingFactory,
            {},
            clock=Clock(),
            listener_name="x",
            default=Verdict.UNKNOWN,
        )

    def test_starts_and_stops_handlers(self) -> None:
        handler = RecordingFactory()
        factory = SniffingFactory({Verdict.HTTP: handler}, clock=Clock(), listener_name="x")
        factory.doStart()
        self.assertEqual(handler.numPorts, 1)
        factory.doStop()
        self.assertEqual(handler.numPorts, 0)
