"""
Tests for L{edd_gateway.h2}: HTTP/2 client connections answered by the
HTTP/1.1 exchange, on the proxy's memory reactor, with the C{h2} library as
the client (L{edd_gateway.h2.testing}).
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, InformationalResponseReceived, ResponseReceived, StreamEnded, StreamReset, WindowUpdated
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.settings import H2Settings
from edd_gateway.h2.testing import connect_h2, frames
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness, backend_route


class RequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        self.client = connect_h2(self.proxy)

    def test_a_stream_is_an_http11_request_to_the_backend(self) -> None:
        stream = self.client.request(path="/x?y=1", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        backend = self.proxy.accept()
        head = backend.received()
        self.assertTrue(head.startswith(b"GET /x?y=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"host: app.test\r\n", head)
        self.assertIn(b"cookie: a=1; b=2\r\n", head)
        self.assertIn(b"X-Forwarded-For: 203.0.113.7\r\n", head)
        self.assertIn(b"X-Forwarded-Proto: https\r\n", head)
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello")
        self.client.flush()
        headers = self.client.headers(stream)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(headers[b"x-a"], b"1")
        self.assertNotIn(b"connection", headers)
        self.assertIn(b"x-request-id", headers)
        self.assertEqual(self.client.body(stream), b"hello")
        self.assertEqual(len(self.client.of(StreamEnded, stream)), 1)

    def test_chunked_response_is_dechunked(self) -> None:
        stream = self.client.request()
        backend = self.proxy.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        self.client.flush()
        self.assertNotIn(b"transfer-encoding", self.client.headers(stream))
        self.assertEqual(self.client.body(stream), b"abcde")
        self.assertTrue(self.client.of(StreamEnded, stream))

    def test_early_hints_then_the_answer_in_one_read(self) -> None:
        """The 103 goes first, as its own HEADERS; the final head (taken as fields) and its body after it."""
        stream = self.client.request()
        backend = self.proxy.accept()
        backend.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nLink: </a.css>; rel=preload\r\n\r\nok")
        self.client.flush()
        [hints] = self.client.of(InformationalResponseReceived, stream)
        [answer] = self.client.of(ResponseReceived, stream)
        self.assertLess(self.client.events.index(hints), self.client.events.index(answer))
        self.assertEqual(dict(hints.headers)[b":status"], b"103")
        self.assertEqual(dict(answer.headers)[b"link"], b"</a.css>; rel=preload")
        self.assertEqual(self.client.body(stream), b"ok")

    def test_body_of_unannounced_length_is_chunked_to_the_backend(self) -> None:
        stream = self.client.request(method="POST", end_stream=False)
        self.client.conn.send_data(stream, b"x" * 10)
        self.client.conn.send_data(stream, b"y" * 5, end_stream=True)
        self.client.flush()
        backend = self.proxy.accept()
        sent = backend.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"a\r\nxxxxxxxxxx\r\n5\r\nyyyyy\r\n0\r\n\r\n"), sent)

    def test_streams_are_multiplexed(self) -> None:
        first = self.client.request(path="/1")
        second = self.client.request(path="/2")
        one, two = self.proxy.accept(), self.proxy.accept()
        two.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        self.client.flush()
        self.assertEqual(self.client.body(second), b"two")
        self.assertEqual(self.client.body(first), b"")
        one.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        self.client.flush()
        self.assertEqual(self.client.body(first), b"one")

    def test_unknown_host_gets_the_gateway_page(self) -> None:
        stream = self.client.request(authority="nowhere.test")
        headers = self.client.headers(stream)
        self.assertEqual(headers[b":status"], b"404")
        self.assertIn(b"No route for host nowhere.test", self.client.body(stream))
        self.assertTrue(self.client.of(StreamEnded, stream))
        self.assertEqual(self.proxy.connect_attempts, 0)

    def test_backend_refused_is_502_on_that_stream_only(self) -> None:
        stream = self.client.request()
        self.proxy.refuse()
        self.client.flush()
        self.assertEqual(self.client.headers(stream)[b":status"], b"502")
        self.assertFalse(self.client.of(ConnectionTerminated))

    def test_plain_connect_is_refused(self) -> None:
        stream_id = self.client.conn.get_next_available_stream_id()
        self.client.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"app.test:443")])
        self.client.flush()
        self.assertEqual(self.client.headers(stream_id)[b":status"], b"405")


class FlowControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        self.client = connect_h2(self.proxy)

    def test_a_spent_window_pauses_that_backend_only(self) -> None:
        # The client grants 64 KiB per stream (h2's default) and never acknowledges;
        # the connection's window it opens wide, so only the stream's is spent.
        self.client.conn.increment_flow_control_window(1 << 24)
        slow = self.client.request(path="/slow")
        backend = self.proxy.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"z" * 100_000)
        self.client.flush()
        self.assertEqual(len(self.client.body(slow)), 65535)
        self.assertTrue(backend.transport.paused)
        # Another stream is served meanwhile.
        fast = self.client.request(path="/fast")
        other = self.proxy.accept()
        other.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.client.flush()
        self.assertEqual(self.client.body(fast), b"ok")
        # The window opens: the rest flows, and the backend is resumed.
        self.client.conn.increment_flow_control_window(1 << 20, slow)
        self.client.flush()
        self.assertEqual(len(self.client.body(slow)), 100_000)
        self.assertFalse(backend.transport.paused)

    def test_request_data_acknowledged_as_passed_on(self) -> None:
        client = connect_h2(self.proxy, H2Settings(initial_window=100))
        stream = client.request(method="PUT", end_stream=False, headers=[(b"content-length", b"80")])
        client.conn.send_data(stream, b"a" * 80, end_stream=True)
        new = client.flush()
        self.assertTrue([e for e in new if isinstance(e, WindowUpdated) and e.stream_id in (0, stream)])
        self.assertTrue(self.proxy.accept().received().endswith(b"\r\n\r\n" + b"a" * 80))


class LimitTests(SynchronousTestCase):
    def test_rapid_reset_is_goaway_enhance_your_calm(self) -> None:
        proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        client = connect_h2(proxy, H2Settings(guard=H2Settings().guard.__class__(resets=10)))
        for _ in range(11):
            stream = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"),
                                              (b":authority", b"app.test"), (b":path", b"/")])
            client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        client.flush()
        terminated = client.of(ConnectionTerminated)
        self.assertEqual([e.error_code for e in terminated], [ErrorCodes.ENHANCE_YOUR_CALM])
        self.assertTrue(client.transport.disconnecting)

    def test_too_many_concurrent_streams(self) -> None:
        proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        client = connect_h2(proxy, H2Settings(max_concurrent_streams=2))
        client.request(path="/1")
        client.request(path="/2")
        # The client would refuse to pass the limit: the third stream's frame is written by hand.
        client.conn.local_settings  # noqa: B018  (the client knows the limit; the gateway enforces it)
        raw = _headers_frame(5, b"\x82\x87\x84\x41\x08app.test")
        client.raw(raw)
        reset_or_goaway = client.of(StreamReset, 5) + client.of(ConnectionTerminated)
        self.assertTrue(reset_or_goaway)
        self.assertEqual(proxy.connect_attempts, 2)

    def test_drain_sends_goaway_and_lets_the_stream_finish(self) -> None:
        proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        client = connect_h2(proxy)
        stream = client.request()
        backend = proxy.accept()
        client.protocol.drain()
        sent = frames(client.transport.value())
        self.assertEqual([(type(f).__name__, getattr(f, "error_code", None)) for f in sent],
                         [("GoAwayFrame", ErrorCodes.NO_ERROR)])
        self.assertEqual(sent[0].last_stream_id, stream)
        self.assertFalse(client.transport.disconnecting)
        client.transport.clear()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        proxy.clock.advance(0)
        after = frames(client.transport.value())
        # The response's end is known within the turn: END_STREAM rides on its last DATA frame.
        self.assertEqual([type(f).__name__ for f in after], ["HeadersFrame", "DataFrame"])
        self.assertEqual(after[1].data, b"ok")
        self.assertIn("END_STREAM", after[1].flags)
        self.assertTrue(client.transport.disconnecting)

    def test_max_body_size_is_413(self) -> None:
        proxy = ProxyHarness([backend_route("app.test", "/")], ProxySettings(max_body_size=10), scheme="https")
        client = connect_h2(proxy)
        stream = client.request(method="POST", end_stream=False, headers=[(b"content-length", b"11")])
        self.assertEqual(client.headers(stream)[b":status"], b"413")
        self.assertEqual(client.of(ResponseReceived, stream)[0].stream_id, stream)


def _headers_frame(stream_id: int, block: bytes) -> bytes:
    """A HEADERS frame with END_HEADERS and END_STREAM, for a header block already HPACK-encoded."""
    return len(block).to_bytes(3, "big") + b"\x01\x05" + stream_id.to_bytes(4, "big") + block


class WebSocketTests(SynchronousTestCase):
    """RFC 8441: extended CONNECT on a stream, an HTTP/1.1 upgrade to the backend."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        self.client = connect_h2(self.proxy)
        self.stream = self.client.conn.get_next_available_stream_id()
        self.client.conn.send_headers(self.stream, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":authority", b"app.test"), (b":path", b"/chat"), (b"sec-websocket-version", b"13"),
        ])
        self.client.flush()
        self.backend = self.proxy.accept()

    def upgrade(self, rest: bytes = b"") -> None:
        self.backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: x\r\n\r\n" + rest)
        self.client.flush()

    def test_the_backend_gets_an_http11_upgrade(self) -> None:
        head = self.backend.received()
        self.assertTrue(head.startswith(b"GET /chat HTTP/1.1\r\n"), head)
        self.assertIn(b"Upgrade: websocket\r\n", head)
        self.assertIn(b"sec-websocket-version: 13\r\n", head)
        self.assertRegex(head, rb"sec-websocket-key: [A-Za-z0-9+/]{22}==\r\n")

    def test_101_is_200_then_bytes_both_ways(self) -> None:
        self.upgrade(b"hello")
        self.assertEqual(self.client.headers(self.stream)[b":status"], b"200")
        self.assertEqual(self.client.body(self.stream), b"hello")
        self.backend.clear()
        self.client.conn.send_data(self.stream, b"\x81\x02hi")
        self.client.flush()
        self.assertEqual(self.backend.received(), b"\x81\x02hi")
        self.assertFalse(self.client.of(StreamEnded, self.stream))

    def test_backend_close_ends_the_stream(self) -> None:
        self.upgrade()
        self.backend.close()
        self.client.flush()
        self.assertTrue(self.client.of(StreamEnded, self.stream))

    def test_client_reset_closes_the_backend(self) -> None:
        self.upgrade()
        self.client.conn.reset_stream(self.stream)
        self.client.flush()
        self.assertTrue(self.backend.closing)

    def test_backend_declining_is_an_ordinary_answer(self) -> None:
        self.backend.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        self.client.flush()
        self.assertEqual(self.client.headers(self.stream)[b":status"], b"403")
        self.assertEqual(self.client.body(self.stream), b"no")
