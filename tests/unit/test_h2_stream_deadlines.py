"""
The deadlines of an HTTP/2 connection's streams, on the one timer they share
(L{edd_gateway.http.deadline.DeadlineGroup}): each stream still answers 504
when its backend is silent past the response timeout and 408 when its
request body stops, at its own time, whatever the connection's other
streams do.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.testing import H2TestClient, connect_h2
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness, backend_route

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"


class StreamDeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        settings = ProxySettings(response_timeout=60.0, body_timeout=30.0, pool_max_per_backend=100)
        self.proxy = ProxyHarness([backend_route("app.test", "/")], settings, scheme="https")
        self.client = connect_h2(self.proxy)

    def status(self, stream: int) -> bytes | None:
        return self.client.headers(stream).get(b":status")

    def assertAnsweredAt(self, stream: int, seconds: float, status: bytes) -> None:
        """Unanswered a second before C{seconds} from now, answered C{status} at them."""
        self.proxy.clock.advance(seconds - 1)
        self.client.flush()
        self.assertIsNone(self.status(stream))
        self.proxy.clock.advance(1)
        self.client.flush()
        self.assertEqual(self.status(stream), status)

    def waiting(self) -> int:
        """A GET whose request has reached a backend, which says nothing yet."""
        stream = self.client.request()
        self.proxy.accept()
        self.client.flush()
        return stream

    def group_calls(self, client: H2TestClient) -> list[IDelayedCall]:
        group = client.protocol.stream_deadlines
        return [call for call in self.proxy.clock.getDelayedCalls()
                if getattr(getattr(call, "func", None), "__self__", None) is group]

    def test_silent_backend_is_504_at_the_response_timeout(self) -> None:
        self.assertAnsweredAt(self.waiting(), 60, b"504")

    def test_each_stream_times_out_at_its_own_time(self) -> None:
        first = self.waiting()
        self.proxy.clock.advance(10)
        second = self.waiting()
        self.proxy.clock.advance(50)
        self.client.flush()
        self.assertEqual((self.status(first), self.status(second)), (b"504", None))
        self.proxy.clock.advance(10)
        self.client.flush()
        self.assertEqual(self.status(second), b"504")

    def test_streams_share_one_timer(self) -> None:
        streams = [self.waiting() for _ in range(5)]
        self.assertEqual(len(self.group_calls(self.client)), 1)
        self.proxy.clock.advance(60)
        self.client.flush()
        self.assertEqual([self.status(stream) for stream in streams], [b"504"] * 5)
        self.assertEqual(self.group_calls(self.client), [])

    def test_answered_stream_leaves_the_others_deadlines(self) -> None:
        answered, silent = self.waiting(), self.waiting()
        self.proxy.backends[0].send(_RESPONSE)
        self.client.flush()
        self.assertEqual(self.client.body(answered), b"hello")
        self.proxy.clock.advance(60)
        self.client.flush()
        self.assertEqual(self.status(silent), b"504")
        self.assertEqual(self.status(answered), b"200")

    def test_stalled_request_body_is_408_at_the_body_timeout(self) -> None:
        self.assertAnsweredAt(self.client.request(method="POST", end_stream=False), 30, b"408")

    def test_lost_connection_cancels_the_timer(self) -> None:
        self.waiting()
        self.client.transport.loseConnection()
        self.client.protocol.connectionLost()
        self.assertEqual(self.group_calls(self.client), [])
