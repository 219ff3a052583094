"""
Tests for the backend side of the proxy, L{edd_gateway.http.upstream}: the
pool's checkout order, bounds, idle sweep, waiting and bookkeeping, and the
backend connection's handling of what a backend says.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.errors import GatewayError
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import BackendConnection, ProxyHarness
from edd_gateway.http.upstream import UpstreamProtocol, connect_error
from edd_gateway.routes.model import Target

TARGET = Target("10.0.0.5", 8080)
OTHER = Target("10.0.0.6", 8080)


class PoolTestCase(SynchronousTestCase):
    def make_pool(self, **settings: Any) -> None:
        self.harness = ProxyHarness([], ProxySettings(**settings))
        self.pool = self.harness.pool
        self.clock = self.harness.clock

    def setUp(self) -> None:
        self.make_pool()

    def count(self, target: Target = TARGET) -> int:
        return self.pool._backends[(target.host, target.port)].count

    def open(self, target: Target = TARGET, timeout: float = 5.0) -> tuple[UpstreamProtocol, BackendConnection]:
        """A new connection to C{target}, accepted by the fake backend."""
        attempt = self.pool.connect(target, timeout)
        backend = self.harness.accept()
        return self.successResultOf(attempt), backend


class CheckoutTests(PoolTestCase):
    def test_empty(self) -> None:
        self.assertIsNone(self.pool.checkout(TARGET))

    def test_connect_records_the_attempt(self) -> None:
        self.pool.connect(TARGET, 2.5)
        [(host, port, _, timeout, _)] = self.harness.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.0.0.5", 8080, 2.5))
        self.assertEqual(self.count(), 1)

    def test_ipv6_target(self) -> None:
        self.pool.connect(Target("2001:db8::5", 80), 1)
        self.assertEqual(self.harness.reactor.tcpClients[0][:2], ("2001:db8::5", 80))

    def test_last_in_first_out(self) -> None:
        first, _ = self.open()
        second, _ = self.open()
        self.pool.release(first)
        self.pool.release(second)
        self.assertEqual(self.pool.idle_count(TARGET), 2)
        self.assertIs(self.pool.checkout(TARGET), second)
        self.assertIs(self.pool.checkout(TARGET), first)
        self.assertIsNone(self.pool.checkout(TARGET))
        self.assertEqual(self.count(), 2, "checked-out connections still count")

    def test_backends_are_separate(self) -> None:
        connection, _ = self.open(TARGET)
        self.pool.release(connection)
        self.assertIsNone(self.pool.checkout(OTHER))
        self.assertIs(self.pool.checkout(TARGET), connection)

    def test_max_idle(self) -> None:
        self.make_pool(pool_max_idle=2)
        opened = [self.open() for _ in range(3)]
        for connection, _ in opened:
            self.pool.release(connection)
        self.assertEqual(self.pool.idle_count(TARGET), 2)
        self.assertEqual([backend.closing for _, backend in opened], [False, False, True])
        opened[2][1].close()
        self.assertEqual(self.count(), 2)


class SweepTests(PoolTestCase):
    def setUp(self) -> None:
        self.make_pool(pool_idle_timeout=60)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def test_idle_connection_closed_after_the_timeout(self) -> None:
        connection, backend = self.open()
        self.pool.release(connection)
        self.clock.advance(45)
        self.assertFalse(backend.closing)
        self.clock.advance(15)
        self.assertTrue(backend.closing)
        self.assertEqual(self.pool.idle_count(TARGET), 0)
        backend.close()
        self.assertEqual(self.count(), 0)

    def test_recently_used_connection_kept(self) -> None:
        old, old_backend = self.open()
        recent, recent_backend = self.open()
        self.pool.release(old)
        self.clock.advance(30)
        self.pool.release(recent)
        self.clock.advance(30)
        self.assertTrue(old_backend.closing)
        self.assertFalse(recent_backend.closing)
        self.assertIs(self.pool.checkout(TARGET), recent)

    def test_busy_connection_not_swept(self) -> None:
        connection, backend = self.open()
        self.pool.release(connection)
        self.clock.advance(50)
        self.assertIs(self.pool.checkout(TARGET), connection)
        self.clock.advance(100)
        self.assertFalse(backend.closing)

    def test_stop_closes_idle_connections(self) -> None:
        idle, idle_backend = self.open()
        _, busy_backend = self.open()
        self.pool.release(idle)
        self.pool.stop()
        self.assertTrue(idle_backend.closing)
        self.assertFalse(busy_backend.closing)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BoundTests(PoolTestCase):
    def setUp(self) -> None:
        self.make_pool(pool_max_per_backend=1)

    def test_waiter_gets_the_released_connection(self) -> None:
        connection, _ = self.open()
        waiting = self.pool.connect(TARGET, 5)
        self.assertEqual(self.harness.connect_attempts, 1, "the bound was exceeded")
        self.assertNoResult(waiting)
        self.pool.release(connection)
        self.assertIs(self.successResultOf(waiting), connection)
        self.assertEqual(self.pool.idle_count(TARGET), 0)

    def test_waiters_served_in_order(self) -> None:
        connection, _ = self.open()
        first = self.pool.connect(TARGET, 5)
        second = self.pool.connect(TARGET, 5)
        self.pool.release(connection)
        self.assertIs(self.successResultOf(first), connection)
        self.assertNoResult(second)

    def test_wait_times_out_with_503(self) -> None:
        self.open()
        waiting = self.pool.connect(TARGET, 5)
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        problem = self.failureResultOf(waiting, GatewayError).value
        self.assertEqual(problem.status, 503)
        self.assertIn("10.0.0.5:8080", problem.detail)

    def test_timed_out_waiter_skipped(self) -> None:
        connection, _ = self.open()
        late = self.pool.connect(TARGET, 1)
        self.clock.advance(1)
        self.failureResultOf(late, GatewayError)
        self.pool.release(connection)
        self.assertEqual(self.pool.idle_count(TARGET), 1)

    def test_lost_connection_makes_room_for_a_waiter(self) -> None:
        _, backend = self.open()
        waiting = self.pool.connect(TARGET, 5)
        backend.close()
        self.assertEqual(self.harness.pending_attempts(), [1])
        self.harness.accept()
        replacement = self.successResultOf(waiting)
        self.assertIsInstance(replacement, UpstreamProtocol)
        self.assertEqual(self.count(), 1)

    def test_waiter_times_out_while_its_connection_opens(self) -> None:
        _, backend = self.open()
        waiting = self.pool.connect(TARGET, 5)
        backend.close()
        self.clock.advance(5)
        self.assertEqual(self.failureResultOf(waiting, GatewayError).value.status, 503)
        # The connection opened for the waiter arrives after it gave up: it
        # must not be lost to the books (nor raise AlreadyCalledError).
        self.harness.accept()
        self.assertEqual(self.harness.connect_attempts, 2)
        later = self.pool.connect(TARGET, 5)
        if self.harness.pending_attempts():
            self.harness.accept()
        self.assertIsInstance(self.successResultOf(later), UpstreamProtocol)

    def test_waiter_errback_when_its_connection_fails(self) -> None:
        _, backend = self.open()
        waiting = self.pool.connect(TARGET, 5)
        backend.close()
        self.harness.refuse()
        self.assertEqual(self.failureResultOf(waiting, GatewayError).value.status, 502)
        self.assertEqual(self.count(), 0)


class BookkeepingTests(PoolTestCase):
    def test_lost_idle_connection_leaves_the_pool(self) -> None:
        connection, backend = self.open()
        self.pool.release(connection)
        backend.close()
        self.assertEqual(self.pool.idle_count(TARGET), 0)
        self.assertEqual(self.count(), 0)
        self.assertIsNone(self.pool.checkout(TARGET))

    def test_lost_busy_connection(self) -> None:
        _, backend = self.open()
        _, other = self.open()
        backend.close()
        self.assertEqual(self.count(), 1)
        other.close()
        self.assertEqual(self.count(), 0)

    def test_discard_aborts(self) -> None:
        connection, backend = self.open()
        self.pool.discard(connection)
        self.assertTrue(backend.transport.aborted)
        backend.close()
        self.assertEqual(self.count(), 0)

    def test_lost_unknown_connection(self) -> None:
        stranger = UpstreamProtocol(self.pool, ("192.0.2.1", 1))
        self.pool.lost(stranger)
        self.assertNotIn(("192.0.2.1", 1), self.pool._backends)

    def test_refused_connection_not_counted(self) -> None:
        attempt = self.pool.connect(TARGET, 5)
        self.harness.refuse()
        problem = self.failureResultOf(attempt, GatewayError).value
        self.assertEqual(problem.status, 502)
        self.assertIn("refused", problem.detail)
        self.assertEqual(self.count(), 0)

    def test_connect_timeout_not_counted(self) -> None:
        attempt = self.pool.connect(TARGET, 3)
        self.harness.refuse(reason=error.TimeoutError())
        problem = self.failureResultOf(attempt, GatewayError).value
        self.assertEqual(problem.status, 504)
        self.assertIn("3s", problem.detail)
        self.assertEqual(self.count(), 0)


class ConnectErrorTests(SynchronousTestCase):
    def status(self, exception: BaseException) -> GatewayError:
        from twisted.python.failure import Failure

        return connect_error(Failure(exception), TARGET, 5)

    def test_statuses(self) -> None:
        self.assertEqual(self.status(error.ConnectionRefusedError()).status, 502)
        self.assertEqual(self.status(error.TimeoutError()).status, 504)
        self.assertEqual(self.status(defer.TimeoutError()).status, 504)
        self.assertEqual(self.status(defer.CancelledError()).status, 504)
        self.assertEqual(self.status(error.ConnectError("no route")).status, 502)
        problem = self.status(error.DNSLookupError("backend.svc"))
        self.assertEqual(problem.status, 502)
        self.assertIn("does not resolve", problem.detail)

    def test_gateway_error_kept(self) -> None:
        self.assertEqual(self.status(GatewayError(503, "busy")).status, 503)


class UpstreamProtocolTests(PoolTestCase):
    def test_idle_backend_that_speaks_is_closed(self) -> None:
        connection, backend = self.open()
        self.pool.release(connection)
        backend.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(backend.closing)

    def test_events_reach_the_listener(self) -> None:
        events: list[Any] = []

        class Listener:
            def response_head(self, status: int, reason: bytes, plain: Any, special: Any) -> None:
                events.append(("head", status, reason, plain, special))

            def response_body(self, data: bytes) -> None:
                events.append(("body", data))

            def response_complete(self, reusable: bool) -> None:
                events.append(("complete", reusable))

        connection, backend = self.open()
        connection.begin(Listener(), False)  # type: ignore[arg-type]
        backend.send(b"HTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(
            events,
            # Fields passed on as they are arrive formatted; those the
            # gateway interprets arrive lower-cased beside their raw name.
            [("head", 201, b"Created", [b"X-A: 1"], [(b"content-length", b"Content-Length", b"2")]),
             ("body", b"ok"), ("complete", True)],
        )
        self.assertIsNone(connection.listener)
        self.assertEqual(connection.requests, 1)
