"""
L{still_open} on a real socket pair: what an idle pooled backend connection
shows before it is reused (issue 14).  The body buffering and the
keep-alive race on the in-memory harness are
C{tests/unit/test_http_body_buffering.py}'s.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.testing import ProxyHarness
from edd_gateway.http.pool import RECHECK_AFTER, PooledBackend, still_open
from edd_gateway.http.upstream import UpstreamProtocol
from edd_gateway.http.headers import BODY_LENGTH
from tests._support.http import BACKEND, ROUTES, request_info


class StillOpenTests(SynchronousTestCase):
    """L{still_open} on a real socket pair: what an idle pooled connection shows before reuse."""

    def connection(self) -> tuple[UpstreamProtocol, socket.socket]:
        ours, backend = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(backend.close)
        protocol = UpstreamProtocol(ProxyHarness(ROUTES).pool, ("10.0.0.5", 8080))
        protocol.connected = 1
        protocol.transport = SimpleNamespace(socket=ours, disconnecting=False)  # type: ignore[assignment]
        return protocol, backend

    def test_quiet_is_open(self) -> None:
        protocol, _ = self.connection()
        self.assertTrue(still_open(protocol))

    def test_closed_by_the_backend(self) -> None:
        protocol, backend = self.connection()
        backend.close()
        self.assertFalse(still_open(protocol))

    def test_bytes_nobody_asked_for(self) -> None:
        protocol, backend = self.connection()
        backend.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertFalse(still_open(protocol))

    def test_disconnecting(self) -> None:
        protocol, _ = self.connection()
        protocol.transport.disconnecting = True
        self.assertFalse(still_open(protocol))

    def test_the_pool_looks_only_at_connections_idle_a_while(self) -> None:
        harness = ProxyHarness(ROUTES)
        protocol, backend = self.connection()
        protocol.pool = harness.pool
        protocol.transport.abortConnection = lambda: setattr(protocol, "aborted", True)  # type: ignore[attr-defined]
        harness.pool._backends[("10.0.0.5", 8080)] = PooledBackend(idle=[protocol], count=1)
        backend.close()
        protocol.idle_since = harness.clock.seconds()
        self.assertIs(harness.pool.checkout(BACKEND), protocol, "released this instant: handed out unchecked")
        harness.pool._backends[("10.0.0.5", 8080)].idle.append(protocol)
        harness.clock.advance(RECHECK_AFTER)
        self.assertIsNone(harness.pool.checkout(BACKEND))
        self.assertTrue(getattr(protocol, "aborted", False), "the closed connection was not dropped")

    def test_unlooked_when_a_failure_would_be_sent_again(self) -> None:
        """A GET, which a failed reuse sends again, gets an idle connection with no system call; a POST does not."""
        harness = ProxyHarness(ROUTES)
        protocol, backend = self.connection()
        protocol.pool = harness.pool
        backend.close()
        protocol.idle_since = harness.clock.seconds() - 60
        post = SimpleNamespace(info=request_info(b"POST", body=BODY_LENGTH), retried=False, request_done=True)
        harness.pool._backends[("10.0.0.5", 8080)] = PooledBackend(idle=[protocol], count=1)
        protocol.transport.abortConnection = lambda: None  # type: ignore[attr-defined]
        self.assertIsNone(harness.pool.checkout(BACKEND, post), "looked at, found closed")
        get = SimpleNamespace(info=request_info(b"GET"), retried=False, request_done=True)
        harness.pool._backends[("10.0.0.5", 8080)].idle.append(protocol)
        self.assertIs(harness.pool.checkout(BACKEND, get), protocol)
        self.assertFalse(still_open(protocol), "the backend did close it: the look would have dropped it")
