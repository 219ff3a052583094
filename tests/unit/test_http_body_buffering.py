"""
Request bodies under hostile clients and backends that close idle
connections early (issue 14), on the in-memory harness: bodies up to
C{--body-buffer-size} are read before a backend connection is taken (100
Continue answered by the gateway), larger ones stream under a per-client
cap per backend (429 beyond), a stalled body gets 408 after
C{--body-timeout}, an upgrade with a body gets 400, and a request whose
reused connection fails unanswered is sent again once when that is safe.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness
from tests._support.http import BACKEND, CLIENT_IP, GET, OK, ROUTES, get, ok

def post(body: bytes, length: int | None = None, extra: bytes = b"", path: bytes = b"/up") -> bytes:
    size = len(body) if length is None else length
    return (b"POST %b HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n%b\r\n" % (path, size, extra)) + body


class BodyBufferingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ProxyHarness(ROUTES, ProxySettings(body_buffer_size=100, body_streams_per_client=2,
                                                          body_timeout=30.0))
        self.client = self.harness.connect_client(CLIENT_IP)

    def test_a_small_body_is_read_before_a_backend_connection(self) -> None:
        self.client.send(post(b"hel", length=5))
        self.assertEqual(self.harness.pending_attempts(), [], "connected before the body was in")
        self.client.send(b"lo")
        backend = self.harness.accept()
        received = backend.received()
        self.assertTrue(received.startswith(b"POST /up HTTP/1.1\r\n"), received)
        self.assertTrue(received.endswith(b"\r\n\r\nhello"), received)
        backend.send(OK)
        self.assertEqual([r.status for r in self.client.responses()], [200])

    def test_expect_continue_is_answered_by_the_gateway(self) -> None:
        self.client.send(post(b"", length=5, extra=b"Expect: 100-continue\r\n"))
        self.assertEqual(self.client.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.client.send(b"hello")
        backend = self.harness.accept()
        self.assertNotIn(b"expect", backend.received().lower(), "the backend would answer a second 100")
        backend.send(OK)
        self.assertEqual([r.status for r in self.client.responses()], [100, 200])

    def test_a_large_body_streams_once_the_buffer_is_full(self) -> None:
        self.client.send(post(b"x" * 60, length=300))
        self.assertEqual(self.harness.pending_attempts(), [])
        self.client.send(b"x" * 60)
        backend = self.harness.accept()
        self.assertTrue(backend.received().endswith(b"x" * 120))
        self.assertEqual(self.harness.pool.streams_held(CLIENT_IP, BACKEND), 1)
        self.client.send(b"y" * 180)
        self.assertTrue(backend.received().endswith(b"y" * 180))
        self.assertEqual(self.harness.pool.streams_held(CLIENT_IP, BACKEND), 0, "the slot outlived the body")
        backend.send(OK)
        self.assertEqual([r.status for r in self.client.responses()], [200])

    def test_streamed_bodies_from_one_address_are_capped_per_backend(self) -> None:
        clients = [self.client] + [self.harness.connect_client(CLIENT_IP, 40001 + n) for n in range(2)]
        for client in clients:
            client.send(post(b"x" * 150, length=10_000))
        self.assertEqual(len(self.harness.pending_attempts()), 2)
        [refused] = clients[2].responses()
        self.assertEqual(refused.status, 429)
        self.assertIn(b"Too many request bodies from 203.0.113.7", refused.body)
        self.assertTrue(clients[2].closing)
        # Another address is not affected by the first one's slots.
        other = self.harness.connect_client("198.51.100.9")
        other.send(post(b"x" * 150, length=10_000))
        self.assertEqual(len(self.harness.pending_attempts()), 3)
        # A slot frees when a body has all arrived.
        backend = self.harness.accept(self.harness.pending_attempts()[0])
        clients[0].send(b"x" * (10_000 - 150))
        backend.send(OK)
        again = self.harness.connect_client(CLIENT_IP, 40100)
        again.send(post(b"x" * 150, length=10_000))
        self.assertEqual(again.responses(), [])
        self.assertEqual(self.harness.pool.streams_held(CLIENT_IP, BACKEND), 2)

    def test_a_stalled_body_gets_408(self) -> None:
        self.client.send(post(b"he", length=5))
        self.harness.clock.advance(20)
        self.client.send(b"l")  # progress: the deadline moves
        self.harness.clock.advance(20)
        self.assertEqual(self.client.responses(), [])
        self.harness.clock.advance(31)
        [response] = self.client.responses()
        self.assertEqual(response.status, 408)
        self.assertIn(b"stopped arriving", response.body)
        self.assertTrue(self.client.closing)
        self.assertEqual(self.harness.pending_attempts(), [], "a stalled body took a backend connection")

    def test_a_stalled_streamed_body_gets_408_and_frees_its_slot(self) -> None:
        self.client.send(post(b"x" * 150, length=10_000))
        backend = self.harness.accept()
        self.harness.clock.advance(31)  # the bytes of t=0 were progress
        self.assertEqual(self.client.responses(), [])
        self.harness.clock.advance(30)
        self.assertEqual([r.status for r in self.client.responses()], [408])
        self.assertTrue(backend.closing, "the backend was left with half a body")
        self.assertEqual(self.harness.pool.streams_held(CLIENT_IP, BACKEND), 0)

    def test_an_upgrade_with_a_body_is_refused(self) -> None:
        self.client.send(b"POST /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Content-Length: 5\r\n\r\nhello")
        [response] = self.client.responses()
        self.assertEqual(response.status, 400)
        self.assertIn(b"upgrade request cannot carry a body", response.body)
        self.assertEqual(self.harness.pending_attempts(), [])

    def test_a_websocket_upgrade_without_a_body_still_goes_through(self) -> None:
        self.client.send(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        backend = self.harness.accept()
        self.assertIn(b"Upgrade: websocket", backend.received())


class KeepAliveRaceTests(SynchronousTestCase):
    """A reused connection that fails before any response byte."""

    def setUp(self) -> None:
        self.harness = ProxyHarness(ROUTES)
        self.client = self.harness.connect_client(CLIENT_IP)
        self.client.send(GET)
        self.backend = self.harness.accept()
        self.backend.send(OK)
        self.backend.clear()

    def test_a_get_is_sent_again_once(self) -> None:
        self.client.send(get("/again"))
        self.backend.close()
        retry = self.harness.accept()
        self.assertIn(b"GET /again", retry.received())
        # Fails again: the second failure is the answer.
        retry.close()
        self.assertEqual(self.harness.pending_attempts(), [])
        self.assertEqual([r.status for r in self.client.responses()], [200, 502])

    def test_a_put_with_its_buffered_body_is_sent_again(self) -> None:
        self.client.send(b"PUT /f HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(self.backend.received().endswith(b"hello"))
        self.backend.close()
        retry = self.harness.accept()
        self.assertTrue(retry.received().startswith(b"PUT /f HTTP/1.1\r\n"))
        self.assertTrue(retry.received().endswith(b"\r\n\r\nhello"))
        retry.send(ok(b"saved"))
        self.assertEqual([r.body for r in self.client.responses()], [b"hello", b"saved"])

    def test_a_post_gets_502(self) -> None:
        self.client.send(post(b"hello"))
        self.backend.close()
        self.assertEqual(self.harness.pending_attempts(), [])
        [_, response] = self.client.responses()
        self.assertEqual(response.status, 502)
        self.assertFalse(self.client.closing, "the client's connection goes on")

    def test_a_post_with_an_idempotency_key_is_sent_again(self) -> None:
        self.client.send(post(b"hello", extra=b"Idempotency-Key: \"8e03978e\"\r\n"))
        self.backend.close()
        retry = self.harness.accept()
        self.assertTrue(retry.received().endswith(b"hello"))

    def test_a_streamed_body_is_not_sent_again(self) -> None:
        self.client.send(b"PUT /f HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000)
        self.client.send(b"x" * 30_000)
        self.backend.close()
        self.assertEqual(self.harness.pending_attempts(), [])
        self.assertEqual(self.client.responses()[-1].status, 502)

    def test_a_new_connection_closed_unanswered_is_not_retried(self) -> None:
        client = self.harness.connect_client("198.51.100.9")
        self.harness.pool.checkout(BACKEND)  # the idle one is gone
        client.send(GET)
        self.harness.accept().close()
        self.assertEqual(self.harness.pending_attempts(), [])
        self.assertEqual([r.status for r in client.responses()], [502])
