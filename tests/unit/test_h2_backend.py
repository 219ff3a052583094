"""
Tests of the h2c backend pool (edd_gateway.h2.backend and backend_connection):
the pool's connections driven against an C{h2} server-side connection over
twisted.test.iosim, on a MemoryReactorClock: no sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, Event, RequestReceived, StreamEnded, StreamReset, \
    TrailersReceived
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.backend import BackendStream, H2BackendPool
from edd_gateway.http.errors import GatewayError
from edd_gateway.routes.model import Target

TARGET = Target("10.0.0.1", 50051)
OTHER = Target("10.0.0.2", 50051)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Service/Method"),
           (b":authority", b"backend"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class FakeBackend(Protocol):
    """The backend's end: an h2 server connection that records what the gateway sent and answers as told."""

    def __init__(self, settings: dict[SettingCodes, int] | None = None) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(client=False, initial_values=settings or {})
        self.events: list[Event] = []
        self.lost = False

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        self.events.extend(self.h2.receive_data(data))
        self.flush()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.lost = True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            assert self.transport is not None
            self.transport.write(data)

    def of(self, kind: type[Event]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(DataReceived) if e.stream_id == stream_id)

    def respond(self, stream_id: int, data: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.h2.send_headers(stream_id, OK)
        for start in range(0, len(data), 16384):
            self.h2.send_data(stream_id, data[start:start + 16384])
        if trailers is not None:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
        self.flush()

    def write_frame(self, frame: Any) -> None:
        """A frame written by hand, past the server's own state machine."""
        assert self.transport is not None
        self.transport.write(frame.serialize())


class Recorder:
    """A BackendStreamListener that records each call, and passes response data on (consumes it) when told to."""

    def __init__(self, consume: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.consume = consume
        self.stream: BackendStream | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def data(self) -> bytes:
        return b"".join(value for name, value in self.calls if name == "data")

    def response_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("headers", headers))

    def response_data(self, data: bytes) -> None:
        self.calls.append(("data", data))
        if self.consume and self.stream is not None:
            self.stream.consumed(len(data))

    def response_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("trailers", headers))

    def response_ended(self) -> None:
        self.calls.append(("ended", None))

    def response_reset(self, error_code: int) -> None:
        self.calls.append(("reset", error_code))

    def backend_lost(self, detail: str) -> None:
        self.calls.append(("lost", detail))

    def request_window_closed(self) -> None:
        self.calls.append(("window-closed", None))

    def request_window_open(self) -> None:
        self.calls.append(("window-open", None))


class Harness:
    """A pool on a MemoryReactorClock, whose outbound connects are accepted by L{FakeBackend}s over iosim."""

    def __init__(self, test: SynchronousTestCase, **options: Any) -> None:
        self.test = test
        self.reactor = MemoryReactorClock()
        self.pool = H2BackendPool(self.reactor, self.reactor, **options)
        self.pumps: list[iosim.IOPump] = []
        self.accepted = 0

    def open(self, listener: Recorder | None = None, target: Target = TARGET, end_stream: bool = False,
             headers: list[tuple[bytes, bytes]] = REQUEST, timeout: float = 5.0) -> Deferred[BackendStream]:
        listener = listener if listener is not None else Recorder()

        def keep(stream: BackendStream) -> BackendStream:
            listener.stream = stream
            return stream

        return self.pool.open_stream(target, headers, listener, timeout, end_stream).addCallback(keep)

    def stream(self, listener: Recorder, **options: Any) -> BackendStream:
        """A stream on a connection that is up (accepting the connect when the pool made one), pumped."""
        opening = self.open(listener, **options)
        if len(self.reactor.tcpClients) > self.accepted:
            self.accept()
        self.pump()
        return self.test.successResultOf(opening)

    def accept(self, settings: dict[SettingCodes, int] | None = None) -> FakeBackend:
        factory = self.reactor.tcpClients[self.accepted][2]
        self.accepted += 1
        client = factory.buildProtocol(None)
        backend = FakeBackend(settings)
        self.pumps.append(iosim.connect(backend, iosim.FakeTransport(backend, isServer=True), client,
                                        iosim.FakeTransport(client, isServer=False), clock=self.reactor))
        self.backends = getattr(self, "backends", []) + [backend]
        return backend

    def pump(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def fail_connect(self, reason: Exception) -> None:
        factory = self.reactor.tcpClients[self.accepted][2]
        self.accepted += 1
        factory.clientConnectionFailed(None, Failure(reason))


class MultiplexingTests(SynchronousTestCase):
    def test_two_streams_share_one_connection(self) -> None:
        harness = Harness(self)
        first, second = Recorder(), Recorder()
        harness.open(first)
        backend = harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        harness.pump()
        harness.stream(second)
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        self.assertEqual([e.stream_id for e in backend.of(RequestReceived)], [1, 3])
        self.assertEqual(backend.of(RequestReceived)[0].headers, REQUEST)
        backend.respond(3, b"second", trailers=[(b"grpc-status", b"0")])
        backend.respond(1, b"first", trailers=[(b"grpc-status", b"0")])
        harness.pump()
        self.assertEqual((first.data(), second.data()), (b"first", b"second"))
        self.assertEqual(first.names(), ["headers", "data", "trailers", "ended"])

    def test_until_the_backend_settings_come_a_connection_carries_one_stream(self) -> None:
        """Its limit is unknown until then: a second request opens a second connection."""
        harness = Harness(self)
        harness.open()
        harness.open()
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_the_backend_stream_limit_opens_a_second_connection(self) -> None:
        harness = Harness(self)
        harness.open()
        backend = harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        harness.pump()
        harness.open()
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        second = harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        harness.pump()
        self.assertEqual(len(backend.of(RequestReceived)), 1)
        self.assertEqual(len(second.of(RequestReceived)), 1)
        self.assertEqual(harness.pool.connection_count(TARGET), 2)

    def _full(self) -> tuple[Harness, FakeBackend, Recorder]:
        harness = Harness(self, max_connections_per_backend=1)
        first = Recorder()
        harness.open(first, end_stream=True)
        backend = harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        harness.pump()
        return harness, backend, first

    def test_at_the_bound_a_request_waits_for_a_free_stream(self) -> None:
        harness, backend, first = self._full()
        waiting = harness.open()
        self.assertNoResult(waiting)
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        backend.respond(1, b"done", trailers=[(b"grpc-status", b"0")])
        harness.pump()
        self.assertEqual(self.successResultOf(waiting).stream_id, 3)
        harness.pump()
        self.assertEqual([e.stream_id for e in backend.of(RequestReceived)], [1, 3])

    def test_a_request_waiting_too_long_is_answered_503(self) -> None:
        harness, _, _ = self._full()
        waiting = harness.open(timeout=2.0)
        harness.reactor.advance(2.0)
        failure = self.failureResultOf(waiting, GatewayError)
        self.assertEqual(failure.value.status, 503)
        self.assertEqual(failure.value.detail, "The backend 10.0.0.1:50051 has no free HTTP/2 stream.")


class FlowControlTests(SynchronousTestCase):
    def test_response_data_is_acknowledged_only_once_consumed(self) -> None:
        harness = Harness(self, stream_window=65535)
        listener = Recorder(consume=False)
        stream = harness.stream(listener, end_stream=True)
        backend = harness.backends[0]
        backend.respond(1, b"x" * 40000)
        harness.pump()
        self.assertEqual(len(listener.data()), 40000)
        self.assertEqual(backend.h2.local_flow_control_window(1), 65535 - 40000)
        stream.consumed(40000)
        harness.pump()
        self.assertEqual(backend.h2.local_flow_control_window(1), 65535)

    def test_request_data_beyond_the_window_is_held_until_window_update(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        opening = harness.open(listener)
        backend = harness.accept({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        harness.pump()
        stream = self.successResultOf(opening)
        stream.send_data(b"a" * 250)
        stream.end_request()
        harness.pump()
        self.assertEqual(backend.body(1), b"a" * 100)
        self.assertEqual(listener.names(), ["window-closed"])
        self.assertEqual(backend.of(StreamEnded), [])
        backend.h2.acknowledge_received_data(100, 1)
        backend.flush()
        harness.pump()
        self.assertEqual(backend.body(1), b"a" * 200)
        self.assertEqual(listener.names(), ["window-closed"])
        backend.h2.acknowledge_received_data(100, 1)
        backend.flush()
        harness.pump()
        self.assertEqual(backend.body(1), b"a" * 250)
        self.assertEqual(listener.names(), ["window-closed", "window-open"])
        self.assertEqual(len(backend.of(StreamEnded)), 1)

    def test_a_full_socket_buffer_pauses_request_data(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        stream = harness.stream(listener)
        connection = stream.connection
        assert connection.transport is not None
        self.assertIs(connection.transport.producer, connection)  # type: ignore[attr-defined]
        connection.pauseProducing()
        stream.send_data(b"held")
        harness.pump()
        self.assertEqual(harness.backends[0].body(1), b"")
        self.assertEqual(listener.names(), ["window-closed"])
        connection.resumeProducing()
        harness.pump()
        self.assertEqual(harness.backends[0].body(1), b"held")
        self.assertEqual(listener.names(), ["window-closed", "window-open"])


class ResponseTests(SynchronousTestCase):
    def test_trailers_are_kept(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        harness.stream(listener, end_stream=True)
        harness.backends[0].respond(1, b"\x00\x00\x00\x00\x02hi", trailers=[(b"grpc-status", b"0"),
                                                                            (b"grpc-message", b"")])
        harness.pump()
        self.assertEqual(listener.calls, [("headers", OK), ("data", b"\x00\x00\x00\x00\x02hi"),
                                          ("trailers", [(b"grpc-status", b"0"), (b"grpc-message", b"")]),
                                          ("ended", None)])

    def test_trailers_only_is_headers_then_ended(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        harness.stream(listener, end_stream=True)
        only = OK + [(b"grpc-status", b"5"), (b"grpc-message", b"not found")]
        harness.backends[0].h2.send_headers(1, only, end_stream=True)
        harness.backends[0].flush()
        harness.pump()
        self.assertEqual(listener.calls, [("headers", only), ("ended", None)])
        self.assertTrue(harness.pool.connection_count(TARGET) == 1 and not listener.stream.connection.streams)  # type: ignore[union-attr]

    def test_request_trailers_end_the_request(self) -> None:
        harness = Harness(self)
        stream = harness.stream(Recorder())
        stream.send_data(b"body")
        stream.end_request([(b"x-checksum", b"1")])
        harness.pump()
        backend = harness.backends[0]
        self.assertEqual(backend.body(1), b"body")
        self.assertEqual(backend.of(TrailersReceived)[0].headers, [(b"x-checksum", b"1")])

    def test_reset_by_the_backend(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        stream = harness.stream(listener, end_stream=True)
        harness.backends[0].h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        harness.backends[0].flush()
        harness.pump()
        self.assertEqual(listener.calls, [("reset", ErrorCodes.INTERNAL_ERROR)])
        self.assertTrue(stream.connection.has_room())

    def test_a_reset_after_the_complete_response_only_stops_the_request(self) -> None:
        """gRPC servers end the response, then reset the stream with NO_ERROR while the request still runs."""
        harness = Harness(self)
        listener = Recorder()
        stream = harness.stream(listener)
        backend = harness.backends[0]
        backend.respond(1, trailers=[(b"grpc-status", b"0")])
        backend.h2.reset_stream(1, ErrorCodes.NO_ERROR)
        backend.flush()
        harness.pump()
        self.assertEqual(listener.names(), ["headers", "trailers", "ended"])
        stream.send_data(b"too late")
        stream.end_request()
        harness.pump()
        self.assertEqual(backend.body(1), b"")
        self.assertEqual(stream.connection.streams, {})

    def test_the_client_going_away_resets_with_cancel(self) -> None:
        harness = Harness(self)
        listener = Recorder()
        stream = harness.stream(listener)
        backend = harness.backends[0]
        stream.reset()
        backend.respond(1, b"in flight")  # crosses the reset: dropped
        harness.pump()
        self.assertEqual([e.error_code for e in backend.of(StreamReset)], [ErrorCodes.CANCEL])
        self.assertEqual(listener.calls, [])
        self.assertTrue(stream.connection.has_room())

    def test_invalid_request_headers_are_refused_before_any_connect(self) -> None:
        harness = Harness(self)
        failure = self.failureResultOf(harness.open(headers=REQUEST + [(b":bogus", b"x")]),
                                       GatewayError)
        self.assertEqual(failure.value.status, 400)
        self.assertEqual(harness.reactor.tcpClients, [])


class ConnectionEndTests(SynchronousTestCase):
    def _two_streams(self) -> tuple[Harness, FakeBackend, Recorder, Recorder]:
        harness = Harness(self)
        first, second = Recorder(), Recorder()
        harness.open(first, end_stream=True)
        backend = harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 10})
        harness.pump()
        harness.stream(second, end_stream=True)
        return harness, backend, first, second

    def test_goaway_refuses_the_streams_above_last_stream_id_and_lets_the_others_finish(self) -> None:
        harness, backend, first, second = self._two_streams()
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 1
        backend.write_frame(goaway)
        harness.pump()
        self.assertEqual(second.calls, [("reset", ErrorCodes.REFUSED_STREAM)])
        self.assertEqual(harness.pool.connection_count(TARGET), 0)
        self.assertFalse(backend.lost)
        backend.respond(1, b"still here", trailers=[(b"grpc-status", b"0")])
        harness.pump()
        self.assertEqual(first.names(), ["headers", "data", "trailers", "ended"])
        self.assertTrue(backend.lost)
        self.assertEqual(len(backend.of(ConnectionTerminated)), 1)
        harness.open()
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_connection_lost_mid_stream_tells_each_open_stream_once(self) -> None:
        harness, backend, first, second = self._two_streams()
        backend.respond(3, trailers=[(b"grpc-status", b"0")])
        harness.pump()
        assert backend.transport is not None
        backend.transport.loseConnection()
        harness.pump()
        self.assertEqual(first.calls, [("lost", "The backend 10.0.0.1:50051 closed its HTTP/2 connection with the "
                                                "response unfinished.")])
        self.assertEqual(second.names(), ["headers", "trailers", "ended"])
        self.assertEqual(harness.pool.connection_count(TARGET), 0)

    def test_a_protocol_error_closes_that_connection_only(self) -> None:
        harness = Harness(self)
        listener, bystander = Recorder(), Recorder()
        harness.stream(listener, end_stream=True)
        harness.stream(bystander, target=OTHER, end_stream=True)
        broken, other = harness.backends
        bad = SettingsFrame(0)
        bad.settings = {SettingCodes.ENABLE_PUSH: 7}
        with capturedLogs() as events:
            broken.write_frame(bad)
            harness.pump()
        self.assertEqual(listener.names(), ["lost"])
        self.assertIn("The backend 10.0.0.1:50051 broke the HTTP/2 protocol", listener.calls[0][1])
        self.assertTrue(any("10.0.0.1:50051 broke the HTTP/2 protocol" in formatEvent(e) for e in events))
        self.assertEqual([e.error_code for e in broken.of(ConnectionTerminated)], [ErrorCodes.PROTOCOL_ERROR])
        self.assertTrue(broken.lost)
        other.respond(1, b"fine", trailers=[(b"grpc-status", b"0")])
        harness.pump()
        self.assertEqual(bystander.names(), ["headers", "data", "trailers", "ended"])
        self.assertEqual(harness.pool.connection_count(OTHER), 1)

    def test_idle_connections_are_reaped_and_busy_ones_kept(self) -> None:
        harness = Harness(self, idle_timeout=60.0)
        harness.pool.start()
        idle, busy = Recorder(), Recorder()
        harness.stream(idle, end_stream=True)
        harness.stream(busy, target=OTHER, end_stream=True)
        harness.backends[0].respond(1, trailers=[(b"grpc-status", b"0")])
        harness.pump()
        for _ in range(5):
            harness.reactor.advance(15.0)
            harness.pump()
        self.assertTrue(harness.backends[0].lost)
        self.assertEqual(len(harness.backends[0].of(ConnectionTerminated)), 1)
        self.assertFalse(harness.backends[1].lost)
        self.assertEqual((harness.pool.connection_count(TARGET), harness.pool.connection_count(OTHER)), (0, 1))
        harness.pool.stop()
        harness.pump()
        self.assertTrue(harness.backends[1].lost)
        self.assertEqual(busy.names(), ["lost"])

    def test_stop_answers_the_waiting_requests_503(self) -> None:
        harness = Harness(self, max_connections_per_backend=1)
        harness.open()
        harness.accept({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        harness.pump()
        waiting = harness.open()
        self.assertNoResult(waiting)
        harness.pool.stop()
        self.assertEqual(self.failureResultOf(waiting, GatewayError).value.status, 503)


class ConnectFailureTests(SynchronousTestCase):
    def test_refused_is_502(self) -> None:
        harness = Harness(self)
        opening = harness.open()
        harness.fail_connect(error.ConnectionRefusedError())
        failure = self.failureResultOf(opening, GatewayError)
        self.assertEqual((failure.value.status, failure.value.detail),
                         (502, "The backend 10.0.0.1:50051 refused the connection."))

    def test_timed_out_is_504(self) -> None:
        harness = Harness(self)
        opening = harness.open(timeout=3.0)
        harness.fail_connect(error.TimeoutError())
        failure = self.failureResultOf(opening, GatewayError)
        self.assertEqual((failure.value.status, failure.value.detail),
                         (504, "The backend 10.0.0.1:50051 did not accept a connection within 3s."))

    def test_a_failed_connect_frees_its_place_under_the_bound(self) -> None:
        harness = Harness(self, max_connections_per_backend=1)
        opening = harness.open()
        harness.fail_connect(error.ConnectionRefusedError())
        self.failureResultOf(opening, GatewayError)
        harness.open()
        self.assertEqual(len(harness.reactor.tcpClients), 2)
