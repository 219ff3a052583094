"""
A finished HTTP/2 stream leaves no reference cycle behind.

Whatever a stream and its exchange built (the re-framer and its llhttp
parser, the deadline, the exchange) must be freed by reference counting
when the stream ends, as an HTTP/1.1 request's objects are.  Left in a
cycle, they wait for the cyclic collector: under load (500 streams in
flight) its passes over those objects cost a fifth of the gateway's CPU
(measured with C{gc.callbacks} and perf).  Each test runs streams to their
end and asks the collector what it would have had to free.
"""

from __future__ import annotations

import gc

from h2.events import StreamEnded, StreamReset
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.testing import H2TestClient, connect_h2
from edd_gateway.http.testing import ProxyHarness, backend_route

#: What a stream and its exchange build.
STREAM_OBJECTS = frozenset({
    "edd_gateway.h2.stream.H2Stream", "edd_gateway.h2.reframe.ResponseReframer",
    "edd_gateway.http.exchange.Exchange", "edd_gateway.http.headers.RequestInfo",
    "edd_gateway.http.flow.Throttle", "httptools.parser.parser.HttpResponseParser",
})

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"


def gateway_garbage(run: object) -> list[str]:
    """The types of the gateway's (and llhttp's) objects that C{run()} left in reference cycles."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()  # type: ignore[operator]  # any callable
        gc.collect()
        found = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                        if type(o).__module__.startswith(("edd_gateway", "httptools", "h2."))})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    return found


class FinishedStreamTests(SynchronousTestCase):
    maxDiff = None
    def setUp(self) -> None:
        self.proxy = ProxyHarness([backend_route("app.test", "/")], scheme="https")
        self.client = connect_h2(self.proxy)
        # The first exchange builds what later ones reuse (the route's
        # edits, the pool's books): not garbage, and not what is measured.
        self._answered(self.client)

    def _answered(self, client: H2TestClient) -> int:
        stream = client.request()
        # The first stream opens the backend connection; the later ones reuse it from the pool.
        backend = self.proxy.accept() if self.proxy.pending_attempts() else self.proxy.backends[-1]
        backend.clear()
        backend.send(_RESPONSE)
        client.flush()
        self.assertEqual(client.body(stream), b"hello")
        self.assertTrue(client.of(StreamEnded, stream))
        return stream

    def test_answered_streams(self) -> None:
        self.assertEqual(gateway_garbage(lambda: [self._answered(self.client) for _ in range(5)]), [])

    def test_gateway_answer(self) -> None:
        def unknown_host() -> None:
            stream = self.client.request(authority="elsewhere.test")
            self.client.flush()
            self.assertEqual(self.client.headers(stream)[b":status"], b"404")
        self.assertEqual(gateway_garbage(unknown_host), [])

    def test_stream_reset_by_the_client_while_waiting(self) -> None:
        def reset() -> None:
            stream = self.client.request()
            self.client.conn.reset_stream(stream)
            self.client.flush()
        self.assertEqual(gateway_garbage(reset), [])

    def test_connection_closed_with_a_stream_open(self) -> None:
        def lost() -> None:
            client = connect_h2(self.proxy, port=40001)
            client.request()
            client.flush()
            client.transport.loseConnection()
            client.protocol.connectionLost()
            self.assertFalse(client.of(StreamReset))
        # The connection's own objects are in a cycle with the in-memory
        # transport (each holds the other, as a reactor's do until it drops
        # them): what is asked here is that its stream left nothing of its own.
        left = gateway_garbage(lost)
        self.assertIn("edd_gateway.h2.server.H2ServerProtocol", left)
        self.assertEqual([kind for kind in left if kind in STREAM_OBJECTS], [])
