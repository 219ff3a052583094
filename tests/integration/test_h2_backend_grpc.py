"""
The h2c backend pool against a real gRPC server (grpcio, edd_gateway.testing.grpc)
on loopback, from the real reactor: unary, server-streaming and bidirectional
calls, and a call the server aborts (grpc-status in the trailers).  gRPC's
messages are framed by hand; no protoc.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from edd_gateway.h2.backend import BackendStream, H2BackendPool, H2BackendProtocol
from edd_gateway.testing import poll_until
from edd_gateway.testing.grpc import GrpcServer, grpc_frame, grpc_messages, grpc_request, start_grpc_server


class Call:
    """A BackendStreamListener for one call: its head, messages and trailers; C{done} fires at its end."""

    def __init__(self) -> None:
        self.stream: BackendStream | None = None
        self.headers: dict[bytes, bytes] = {}
        self.trailers: dict[bytes, bytes] = {}
        self.body = b""
        self.ending = ""
        self.done: Deferred[None] = Deferred()
        self._arrived: list[tuple[int, Deferred[None]]] = []

    def messages(self) -> list[bytes]:
        return grpc_messages(self.body)

    def messages_arrived(self, count: int) -> Deferred[None]:
        """Fires once C{count} whole messages have come."""
        waiter: Deferred[None] = Deferred()
        self._arrived.append((count, waiter))
        self._check()
        return waiter

    def _check(self) -> None:
        try:
            have = len(self.messages())
        except AssertionError:
            return  # a message still arriving
        for pair in [p for p in self._arrived if p[0] <= have]:
            self._arrived.remove(pair)
            pair[1].callback(None)

    def _end(self, how: str) -> None:
        self.ending = how
        self.done.callback(None)

    def response_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = dict(headers)

    def response_data(self, data: bytes) -> None:
        self.body += data
        assert self.stream is not None
        self.stream.consumed(len(data))
        self._check()

    def response_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = dict(headers)

    def response_ended(self) -> None:
        self._end("ended")

    def response_reset(self, error_code: int) -> None:
        self._end(f"reset {error_code}")

    def backend_lost(self, detail: str) -> None:
        self._end(detail)

    def request_window_closed(self) -> None:
        pass

    def request_window_open(self) -> None:
        pass


class GrpcBackendTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server: GrpcServer = start_grpc_server()
        self.addCleanup(self.server.stop)
        self.pool = H2BackendPool(reactor, reactor)
        self.pool.start()
        self.connections: set[H2BackendProtocol] = set()
        self.addCleanup(self._stop_pool)

    async def _stop_pool(self) -> None:
        self.pool.stop()
        await poll_until(lambda: all(c.transport is None or c.transport.disconnected  # type: ignore[attr-defined]
                                     for c in self.connections), "the pool's connections to close")

    async def call(self, method: str, end_stream: bool = False) -> tuple[Call, BackendStream]:
        call = Call()
        stream = await self.pool.open_stream(self.server.target, grpc_request(method, str(self.server.target)),
                                             call, timeout=5.0, end_stream=end_stream)
        call.stream = stream
        self.connections.add(stream.connection)
        return call, stream

    async def unary(self, method: str, message: bytes) -> Call:
        call, stream = await self.call(method)
        stream.send_data(grpc_frame(message))
        stream.end_request()
        await call.done
        return call

    async def test_unary(self) -> None:
        call = await self.unary("Echo", b"hello")
        self.assertEqual(call.ending, "ended")
        self.assertEqual(call.headers[b":status"], b"200")
        self.assertEqual(call.headers[b"content-type"], b"application/grpc")
        self.assertEqual(call.messages(), [b"echo:hello"])
        self.assertEqual(call.trailers[b"grpc-status"], b"0")

    async def test_unary_calls_share_a_connection(self) -> None:
        first = await self.unary("Echo", b"one")
        second = await self.unary("Echo", b"two")
        self.assertEqual((first.messages(), second.messages()), ([b"echo:one"], [b"echo:two"]))
        self.assertEqual(len(self.connections), 1)

    async def test_a_large_message_both_ways(self) -> None:
        """Past the default 64 KiB windows: request data waits for the server's WINDOW_UPDATEs."""
        payload = bytes(range(256)) * 4096  # 1 MiB
        call = await self.unary("Echo", payload)
        self.assertEqual(call.messages(), [b"echo:" + payload])

    async def test_server_streaming(self) -> None:
        call = await self.unary("Count", b"50")
        self.assertEqual(call.messages(), [str(n).encode() for n in range(1, 51)])
        self.assertEqual(call.trailers[b"grpc-status"], b"0")

    async def test_bidirectional(self) -> None:
        """Each request is answered before the next is sent: both directions of one stream at once."""
        call, stream = await self.call("Chat")
        for n in range(1, 4):
            stream.send_data(grpc_frame(b"m%d" % n))
            await call.messages_arrived(n)
        stream.end_request()
        await call.done
        self.assertEqual(call.messages(), [b"re:m1", b"re:m2", b"re:m3"])
        self.assertEqual(call.trailers[b"grpc-status"], b"0")

    async def test_a_call_in_flight_finishes_through_the_server_graceful_shutdown(self) -> None:
        """grpc's stop(grace) sends GOAWAY: the stream it covers goes on, the connection takes no new one."""
        call, stream = await self.call("Chat")
        stream.send_data(grpc_frame(b"before"))
        await call.messages_arrived(1)
        self.server.server.stop(10)
        await poll_until(lambda: stream.connection.closing, "the server's GOAWAY")
        stream.send_data(grpc_frame(b"after"))
        await call.messages_arrived(2)
        stream.end_request()
        await call.done
        self.assertEqual((call.messages(), call.trailers[b"grpc-status"]), ([b"re:before", b"re:after"], b"0"))
        self.assertEqual(self.pool.connection_count(self.server.target), 0)

    async def test_a_call_aborted_after_an_answer_has_its_status_in_the_trailers(self) -> None:
        call = await self.unary("Vanish", b"")
        self.assertEqual(call.ending, "ended")
        self.assertEqual(call.messages(), [b"partial"])
        self.assertNotIn(b"grpc-status", call.headers)
        self.assertEqual((call.trailers[b"grpc-status"], call.trailers[b"grpc-message"]), (b"5", b"no such thing"))

    async def test_a_call_aborted_at_once_is_trailers_only(self) -> None:
        """grpc-status in the one HEADERS frame, which ends the stream: headers, then ended."""
        call = await self.unary("Missing", b"")
        self.assertEqual(call.ending, "ended")
        self.assertEqual((call.headers[b"grpc-status"], call.headers[b"grpc-message"]), (b"5", b"no such thing"))
        self.assertEqual((call.trailers, call.messages()), ({}, []))
