"""
Tests for L{edd_gateway.h2.backend_exchange}: HTTP/2 client streams on
C{protocol: grpc} / C{h2c} routes relayed to a backend stream (a
L{FakeH2Pool}'s), through the real HTTP/2 server on the proxy's memory
reactor; the gateway's own answers on them gRPC-shaped
(L{edd_gateway.h2.grpc_status}); HTTP/1.1 refused with 505.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived, \
    WindowUpdated
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.backend_exchange import H2BackendRelay
from edd_gateway.h2.backend_head import backend_request_headers, client_response_head
from edd_gateway.h2.grpc_status import grpc_code, grpc_timeout, is_grpc, trailers_only
from edd_gateway.h2.testing import FakeH2Pool, connect_h2
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.headers import analyse_request
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness, backend_route
from edd_gateway.routes.model import ResponseHeaders

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class RelayTestsMixin:
    settings: ProxySettings | None = None

    def setUp(self) -> None:
        self.pool = FakeH2Pool()
        routes = [backend_route("grpc.test", "/", "10.0.0.9:50051", protocol="grpc"),
                  backend_route("h2c.test", "/", "10.0.0.8:8080", protocol="h2c", response_timeout=2.0),
                  backend_route("app.test", "/")]
        self.proxy = ProxyHarness(routes, self.settings, scheme="https", http2_relay=H2BackendRelay(self.pool))
        self.client = connect_h2(self.proxy)

    def call(self, path: str = "/pkg.Service/Echo", authority: str = "grpc.test", end_stream: bool = False,
             headers: list[tuple[bytes, bytes]] = GRPC) -> int:
        return self.client.request(authority=authority, path=path, method="POST", end_stream=end_stream,
                                   headers=headers)


class RelayTests(RelayTestsMixin, SynchronousTestCase):
    def test_the_request_head_the_backend_gets(self) -> None:
        self.call(headers=[*GRPC, (b"x-forwarded-for", b"6.6.6.6"), (b"grpc-timeout", b"1S")])
        backend = self.pool.accept()
        self.assertEqual(str(backend.target), "10.0.0.9:50051")
        head = backend.headers
        self.assertEqual(head[:4], [(b":method", b"POST"), (b":scheme", b"http"),
                                    (b":path", b"/pkg.Service/Echo"), (b":authority", b"grpc.test")])
        fields = dict(head[4:])
        self.assertEqual(fields[b"te"], b"trailers")
        self.assertEqual(fields[b"grpc-timeout"], b"1S")
        self.assertEqual(fields[b"x-forwarded-for"], b"203.0.113.7")  # an untrusted client's is replaced
        self.assertEqual(fields[b"x-forwarded-proto"], b"https")
        self.assertEqual(fields[b"x-forwarded-host"], b"grpc.test")
        self.assertIn(b"x-request-id", fields)
        self.assertNotIn(b"host", fields)
        self.assertNotIn(b"transfer-encoding", fields)

    def test_a_call_both_ways_with_trailers(self) -> None:
        stream = self.call()
        backend = self.pool.accept()
        self.client.conn.send_data(stream, message(b"hi"))
        self.client.flush()
        self.assertEqual(b"".join(backend.data), message(b"hi"))
        backend.listener.response_headers(OK)
        backend.listener.response_data(message(b"re:hi"))
        self.client.flush()
        self.assertEqual(self.client.headers(stream)[b":status"], b"200")
        self.assertEqual(self.client.body(stream), message(b"re:hi"))
        self.assertEqual(backend.acknowledged, len(message(b"re:hi")))
        self.client.conn.send_data(stream, message(b"bye"), end_stream=True)
        self.client.flush()
        self.assertTrue(backend.ended)
        backend.listener.response_trailers([(b"grpc-status", b"0"), (b"x-t", b"1")])
        backend.listener.response_ended()
        self.client.flush()
        [trailers] = self.client.of(TrailersReceived, stream)
        self.assertEqual(dict(trailers.headers), {b"grpc-status": b"0", b"x-t": b"1"})
        self.assertTrue(trailers.stream_ended)
        self.assertEqual(len(self.client.of(StreamEnded, stream)), 1)

    def test_a_stream_refused_unprocessed_is_sent_again_once(self) -> None:
        """REFUSED_STREAM before any answer (the backend's GOAWAY came first): a second stream, the body replayed."""
        stream = self.call()
        first = self.pool.accept()
        self.client.conn.send_data(stream, message(b"one"))
        self.client.flush()
        first.listener.response_reset(ErrorCodes.REFUSED_STREAM)
        self.client.conn.send_data(stream, message(b"two"), end_stream=True)
        self.client.flush()
        self.assertEqual(len(self.pool.opening), 2)
        second = self.pool.accept()
        self.client.flush()
        self.assertEqual(b"".join(second.data), message(b"one") + message(b"two"))
        self.assertTrue(second.ended)
        second.listener.response_reset(ErrorCodes.REFUSED_STREAM)
        self.client.flush()
        [head] = self.client.of(ResponseReceived, stream)
        self.assertEqual(dict(head.headers)[b"grpc-status"], b"14")  # only once
        self.assertEqual(len(self.pool.opening), 2)

    def test_a_response_that_ends_before_the_request_ends_the_backend_stream(self) -> None:
        """The client is told to stop (RST_STREAM NO_ERROR); the backend stream's request side must not stay open."""
        stream = self.call()
        backend = self.pool.accept()
        backend.listener.response_headers([*OK, (b"grpc-status", b"5")])
        backend.listener.response_ended()
        self.client.flush()
        self.assertEqual(backend.reset_code, ErrorCodes.CANCEL)
        [reset] = self.client.of(StreamReset, stream)
        self.assertEqual(reset.error_code, ErrorCodes.NO_ERROR)

    def test_a_response_after_the_whole_request_leaves_the_backend_stream_alone(self) -> None:
        self.call(end_stream=True)
        backend = self.pool.accept()
        backend.listener.response_headers([*OK, (b"grpc-status", b"0")])
        backend.listener.response_ended()
        self.assertIsNone(backend.reset_code)

    def test_a_trailers_only_answer_is_one_headers_frame(self) -> None:
        stream = self.call(end_stream=True)
        backend = self.pool.accept()
        self.assertTrue(backend.ended)
        backend.listener.response_headers([*OK, (b"grpc-status", b"5"), (b"grpc-message", b"no such thing")])
        backend.listener.response_ended()
        self.client.flush()
        [head] = self.client.of(ResponseReceived, stream)
        self.assertEqual(dict(head.headers)[b"grpc-status"], b"5")
        self.assertIsNotNone(head.stream_ended)
        self.assertEqual(self.client.of(DataReceived, stream), [])

    def test_request_trailers_are_passed_on(self) -> None:
        stream = self.call()
        backend = self.pool.accept()
        self.client.conn.send_data(stream, message(b"x"))
        self.client.conn.send_headers(stream, [(b"x-checksum", b"abc")], end_stream=True)
        self.client.flush()
        self.assertEqual(backend.request_trailers, [(b"x-checksum", b"abc")])
        self.assertTrue(backend.ended)

    def test_malformed_request_trailers_reset_both_streams(self) -> None:
        """The h2 library's inbound checks are off: the relay refuses a malformed trailer itself (RFC 9113 8.1.1)."""
        for trailers in ([(b"X-Upper", b"1")], [(b":path", b"/again")], [(b"x-a", b"in\r\nside")],
                         [(b"connection", b"close")]):
            stream = self.call()
            backend = self.pool.accept()
            self.client.conn.config.validate_outbound_headers = False
            self.client.conn.config.normalize_outbound_headers = False
            self.client.conn.send_headers(stream, trailers, end_stream=True)
            self.client.flush()
            [reset] = self.client.of(StreamReset, stream)
            self.assertEqual(reset.error_code, ErrorCodes.PROTOCOL_ERROR, trailers)
            self.assertEqual(backend.reset_code, ErrorCodes.CANCEL, trailers)
            self.assertIsNone(backend.request_trailers, trailers)

    def test_data_before_the_backend_stream_opens_waits_in_the_client_window(self) -> None:
        stream = self.call()
        self.client.conn.send_data(stream, message(b"early"), end_stream=True)
        self.client.flush()
        backend = self.pool.accept()
        self.client.flush()
        self.assertEqual(b"".join(backend.data), message(b"early"))
        self.assertTrue(backend.ended)

    def test_a_client_reset_resets_the_backend_stream(self) -> None:
        stream = self.call()
        backend = self.pool.accept()
        self.client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        self.client.flush()
        self.assertEqual(backend.reset_code, ErrorCodes.CANCEL)

    def test_a_backend_reset_after_the_head_resets_the_client_stream(self) -> None:
        stream = self.call()
        backend = self.pool.accept()
        backend.listener.response_headers(OK)
        backend.listener.response_reset(ErrorCodes.CANCEL)
        self.client.flush()
        [reset] = self.client.of(StreamReset, stream)
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)

    def test_a_slow_client_holds_the_backend_acknowledgements(self) -> None:
        """Response DATA beyond the client's window are not acknowledged to the backend until they leave."""
        stream = self.call()
        backend = self.pool.accept()
        backend.listener.response_headers(OK)
        big = b"x" * 200_000  # beyond the client's 64 KiB stream window
        backend.listener.response_data(big)
        self.client.flush()
        backend.listener.response_data(b"y" * 1000)
        self.client.flush()
        held = 200_000 + 1000 - backend.acknowledged
        self.assertGreaterEqual(held, 1000)
        self.assertLess(len(self.client.body(stream)), len(big))
        # The client reads: its window updates let the rest out, and the backend hears of it.
        for _ in range(10):
            received = len(self.client.body(stream))
            self.client.conn.acknowledge_received_data(received, stream) if received else None
            self.client.conn.increment_flow_control_window(100_000, stream)
            self.client.conn.increment_flow_control_window(100_000)
            self.client.flush()
        self.assertEqual(len(self.client.body(stream)), 201_000)
        self.assertEqual(backend.acknowledged, 201_000)

    def test_bytes_held_for_a_client_that_leaves_are_acknowledged(self) -> None:
        """They count against the backend connection's window, shared by its other streams."""
        stream = self.call()
        backend = self.pool.accept()
        backend.listener.response_headers(OK)
        backend.listener.response_data(b"x" * 200_000)
        self.client.flush()
        backend.listener.response_data(b"y" * 1000)
        self.assertLess(backend.acknowledged, 201_000)
        self.client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        self.client.flush()
        self.assertEqual(backend.acknowledged, 201_000)
        self.assertEqual(backend.reset_code, ErrorCodes.CANCEL)

    def test_bytes_held_at_the_end_of_a_response_are_acknowledged(self) -> None:
        stream = self.call(authority="h2c.test", headers=[], end_stream=True)
        backend = self.pool.accept()
        backend.listener.response_headers([(b":status", b"200")])
        backend.listener.response_data(b"x" * 200_000)
        self.client.flush()
        backend.listener.response_data(b"y" * 1000)
        backend.listener.response_ended()
        self.assertEqual(backend.acknowledged, 201_000)
        self.assertLess(len(self.client.body(stream)), 201_000)

    def test_a_full_backend_window_stops_acknowledging_the_client(self) -> None:
        stream = self.call()
        backend = self.pool.accept()
        backend.listener.request_window_closed()
        for _ in range(40):  # 640 KiB: more than h2 lets go unacknowledged before a WINDOW_UPDATE
            self.client.conn.send_data(stream, b"z" * 16384)
        self.client.flush()
        self.assertEqual(self.window_updates(stream), 0)
        self.assertEqual(backend.data, [])
        backend.listener.request_window_open()
        self.client.flush()
        self.assertEqual(len(b"".join(backend.data)), 40 * 16384)
        self.assertGreater(self.window_updates(stream), 0)

    def test_data_held_in_a_reset_stream_goes_back_to_the_connection_window(self) -> None:
        """Else every client stream reset under backpressure would shrink the connection's window for good."""
        streams = []
        for _ in range(9):  # 9 MiB: past half the 16 MiB connection window, so h2 sends its WINDOW_UPDATE
            stream = self.call()
            self.pool.accept().listener.request_window_closed()
            for _ in range(64):
                self.client.conn.send_data(stream, b"z" * 16384)
            self.client.flush()
            streams.append(stream)
        before = self.window_updates(0)  # the connection window's first increment, to 16 MiB
        for stream in streams:
            self.client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        self.client.flush()
        self.assertGreaterEqual(self.window_updates(0) - before, 8 << 20)  # h2 keeps the rest for its next update

    def window_updates(self, stream: int) -> int:
        return sum(event.delta for event in self.client.of(WindowUpdated, stream))


class GrpcErrorTests(RelayTestsMixin, SynchronousTestCase):
    def grpc_status(self, stream: int) -> tuple[bytes, bytes, bytes]:
        self.client.flush()
        [head] = self.client.of(ResponseReceived, stream)
        self.assertIsNotNone(head.stream_ended)  # trailers-only
        fields = dict(head.headers)
        self.assertEqual(fields[b"content-type"], b"application/grpc")
        return fields[b":status"], fields[b"grpc-status"], fields[b"grpc-message"]

    def test_a_backend_that_cannot_be_reached_is_unavailable(self) -> None:
        stream = self.call(end_stream=True)
        self.pool.refuse(GatewayError(502, "The backend 10.0.0.9:50051 refused the connection."))
        status, code, text = self.grpc_status(stream)
        self.assertEqual((status, code), (b"200", b"14"))
        self.assertIn(b"refused the connection", text)

    def test_a_connect_timeout_is_deadline_exceeded(self) -> None:
        stream = self.call(end_stream=True)
        self.pool.refuse(GatewayError(504, "The backend did not accept the connection in 5s."))
        self.assertEqual(self.grpc_status(stream)[1], b"4")

    def test_a_response_timeout_is_deadline_exceeded_and_resets_the_backend(self) -> None:
        stream = self.call(end_stream=True)
        backend = self.pool.accept()
        self.proxy.clock.advance(60)
        self.assertEqual(self.grpc_status(stream)[1], b"4")
        self.assertEqual(backend.reset_code, ErrorCodes.CANCEL)

    def test_a_call_deadline_stands_in_for_the_response_timeout(self) -> None:
        """grpc-timeout 2M: a unary call the server answers only when done is not cut at the default 60 s."""
        stream = self.call(headers=[*GRPC, (b"grpc-timeout", b"2M")], end_stream=True)
        backend = self.pool.accept()
        self.proxy.clock.advance(61)
        self.client.flush()
        self.assertEqual(self.client.of(ResponseReceived, stream), [])
        self.proxy.clock.advance(60)
        self.assertEqual(self.grpc_status(stream)[1], b"4")
        self.assertEqual(backend.reset_code, ErrorCodes.CANCEL)

    def test_the_route_response_timeout_wins_over_the_call_deadline(self) -> None:
        stream = self.call(authority="h2c.test", headers=[*GRPC, (b"grpc-timeout", b"100S")], end_stream=True)
        self.pool.accept()
        self.proxy.clock.advance(2)
        self.assertEqual(self.grpc_status(stream)[1], b"4")

    def test_the_backend_lost_before_answering_is_unavailable(self) -> None:
        stream = self.call(end_stream=True)
        self.pool.accept().listener.backend_lost("The backend closed its HTTP/2 connection.")
        self.assertEqual(self.grpc_status(stream)[1], b"14")

    def test_no_route_for_a_grpc_call_is_unimplemented(self) -> None:
        stream = self.call(authority="nowhere.test", end_stream=True)
        status, code, text = self.grpc_status(stream)
        self.assertEqual((status, code), (b"200", b"12"))
        self.assertIn(b"No route for host nowhere.test", text)
        self.assertEqual(self.pool.opening, [])

    def test_a_refusal_keeps_the_request_id_of_a_head_it_could_read(self) -> None:
        stream = self.call(authority="nowhere.test", headers=[*GRPC, (b"x-request-id", b"call-42")], end_stream=True)
        self.client.flush()
        self.assertEqual(self.client.headers(stream)[b"x-request-id"], b"call-42")

    def test_no_route_for_another_request_is_the_usual_page(self) -> None:
        stream = self.client.request(authority="nowhere.test")
        self.assertEqual(self.client.headers(stream)[b":status"], b"404")

    def test_an_h2c_route_answers_other_requests_with_the_usual_pages(self) -> None:
        stream = self.call(authority="h2c.test", headers=[], end_stream=True)
        self.pool.refuse(GatewayError(502, "refused"))
        self.client.flush()
        self.assertEqual(self.client.headers(stream)[b":status"], b"502")
        self.assertIn(b"refused", self.client.body(stream))

    def test_the_backend_own_status_passes_untouched(self) -> None:
        stream = self.call(end_stream=True)
        backend = self.pool.accept()
        backend.listener.response_headers([*OK, (b"grpc-status", b"5"), (b"grpc-message", b"gone")])
        backend.listener.response_ended()
        self.assertEqual(self.grpc_status(stream), (b"200", b"5", b"gone"))

    def test_a_websocket_on_an_h2c_route_is_refused(self) -> None:
        """RFC 8441's extended CONNECT is not relayed: the backend would see a GET, the client a tunnel's 200."""
        for authority in ("h2c.test", "grpc.test"):
            stream = self.client.conn.get_next_available_stream_id()
            self.client.conn.send_headers(stream, [
                (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", b"/chat"), (b"sec-websocket-version", b"13"),
            ])
            self.client.flush()
            self.assertEqual(self.client.headers(stream)[b":status"], b"501", authority)
            self.assertIn(b"WebSocket", self.client.body(stream))
        self.assertEqual(self.pool.opening, [])

    def test_http11_on_a_grpc_route_is_505(self) -> None:
        proxy = ProxyHarness([backend_route("grpc.test", "/", protocol="grpc")],
                             http2_relay=H2BackendRelay(self.pool))
        client = proxy.connect_client()
        client.send(b"POST /pkg.Service/Echo HTTP/1.1\r\nHost: grpc.test\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses()
        self.assertEqual(response.status, 505)
        self.assertIn(b"served over HTTP/2 only", response.body)
        self.assertEqual(self.pool.opening, [])


class GrpcLimitTests(RelayTestsMixin, SynchronousTestCase):
    settings = ProxySettings(max_body_size=10)

    def test_a_limit_is_resource_exhausted(self) -> None:
        stream = self.call(headers=[*GRPC, (b"content-length", b"100")])
        self.client.flush()
        [head] = self.client.of(ResponseReceived, stream)
        self.assertEqual(dict(head.headers)[b"grpc-status"], b"8")
        self.assertEqual(self.pool.opening, [])


class GrpcStatusTests(SynchronousTestCase):
    def test_codes(self) -> None:
        self.assertEqual([grpc_code(s) for s in (404, 429, 502, 503, 504, 413, 500)], [12, 8, 14, 14, 4, 8, 2])

    def test_grpc_timeout(self) -> None:
        for value, seconds in ((b"1S", 1.0), (b"2M", 120.0), (b"1H", 3600.0), (b"500m", 0.5), (b"99999999n", 0.099999999)):
            self.assertAlmostEqual(grpc_timeout([(b"grpc-timeout", value)]), seconds)  # type: ignore[arg-type]
        for bad in (b"", b"S", b"1s", b"123456789S", b"-1S", b"1.5S"):
            self.assertIsNone(grpc_timeout([(b"grpc-timeout", bad)]), bad)
        self.assertIsNone(grpc_timeout([]))

    def test_is_grpc(self) -> None:
        self.assertTrue(is_grpc([(b"content-type", b"application/grpc+proto")]))
        self.assertFalse(is_grpc([(b"content-type", b"application/json")]))
        self.assertFalse(is_grpc([]))

    def test_the_message_is_percent_encoded(self) -> None:
        head = dict(trailers_only(14, "50% down — café\n"))
        self.assertEqual(head[b"grpc-message"], b"50%25 down %E2%80%94 caf%C3%A9%0A")




class BackendHeadTests(SynchronousTestCase):
    """The pure header work of a relayed stream (L{edd_gateway.h2.backend_head})."""

    def info(self, *headers: tuple[bytes, bytes]) -> Any:
        return analyse_request(b"POST", b"/pkg.Service/Echo", "1.1", [(b"host", b"grpc.test"), *headers])

    def test_a_trusted_proxy_forwarded_for_is_appended_to(self) -> None:
        head = dict(backend_request_headers(
            self.info((b"x-forwarded-for", b"198.51.100.1"), (b"x-forwarded-proto", b"https")),
            b"/pkg.Service/Echo", "10.0.0.2", "http", trusted=True))
        self.assertEqual(head[b"x-forwarded-for"], b"198.51.100.1, 10.0.0.2")
        self.assertEqual(head[b"x-forwarded-proto"], b"https")

    def test_hop_by_hop_fields_are_dropped_and_te_trailers_kept(self) -> None:
        head = backend_request_headers(
            self.info((b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"keep-alive", b"5")),
            b"/x", "10.0.0.2", "https", trusted=False)
        names = [name for name, _ in head]
        self.assertIn(b"te", names)
        self.assertNotIn(b"transfer-encoding", names)
        self.assertNotIn(b"keep-alive", names)
        self.assertEqual(names[:4], [b":method", b":scheme", b":path", b":authority"])

    def test_the_route_edits_and_the_request_id_in_the_response_head(self) -> None:
        route = backend_route("grpc.test", "/", protocol="grpc",
                              response_headers=ResponseHeaders(set=(("X-Served-By", "edge"),), remove=("server",)))
        head = client_response_head([(b":status", b"200"), (b"server", b"grpc"), (b"x-a", b"1")],
                                    route.edits_for("https"), "req-1")
        self.assertEqual(head, [(b":status", b"200"), (b"x-a", b"1"), (b"x-served-by", b"edge"),
                                (b"x-request-id", b"req-1")])
