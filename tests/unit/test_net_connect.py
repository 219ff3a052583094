"""
Tests for L{edd_gateway.net.connect}: how a failed connection attempt is
classified and worded, and L{connect_and_splice} over in-memory transports
with an endpoint the test completes by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, ITransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.net.connect import ConnectFailure, ConnectProblem, Splice, connect_and_splice, endpoint_to
from edd_gateway.net.relay import RelayProtocol
from edd_gateway.testing.transports import HandoverTransport

CLIENT = IPv4Address("TCP", "203.0.113.7", 51234)
BACKEND = IPv4Address("TCP", "10.1.2.3", 8080)


class ConnectFailureTests(SynchronousTestCase):
    def classify(self, exception: Exception) -> ConnectFailure:
        return ConnectFailure.of(Failure(exception))

    def test_deadlines_are_timeouts(self) -> None:
        for exception in (error.TimeoutError(), defer.TimeoutError(), defer.CancelledError()):
            self.assertIs(self.classify(exception).problem, ConnectProblem.TIMED_OUT)
        self.assertEqual(self.classify(error.TimeoutError()).describe(2.5),
                         "did not accept a connection within 2.5s")

    def test_refused_unresolved_and_the_rest(self) -> None:
        refused = self.classify(error.ConnectionRefusedError())
        self.assertEqual((refused.problem, refused.describe(5)),
                         (ConnectProblem.REFUSED, "refused the connection"))
        unresolved = self.classify(error.DNSLookupError("nowhere.invalid"))
        self.assertEqual((unresolved.problem, unresolved.describe(5)),
                         (ConnectProblem.UNRESOLVED, "does not resolve"))
        other = self.classify(error.NoRouteError("no route to host"))
        self.assertEqual(other.problem, ConnectProblem.UNREACHABLE)
        self.assertEqual(other.describe(5), f"could not be reached ({other.detail})")
        self.assertIn("no route to host", other.detail)


class EndpointTests(SynchronousTestCase):
    def test_addresses_are_dialled_directly_and_names_resolved(self) -> None:
        reactor = MemoryReactorClock()
        self.assertIsInstance(endpoint_to(reactor, "10.0.0.1", 22, 5), TCP4ClientEndpoint)
        self.assertIsInstance(endpoint_to(reactor, "fd00::1", 22, 5), TCP6ClientEndpoint)
        self.assertIsInstance(endpoint_to(reactor, "web1.svc", 22, 5), HostnameEndpoint)


class HandEndpoint:
    """An endpoint the test connects (or fails) when it likes."""

    def __init__(self) -> None:
        self.attempt: defer.Deferred[Any] = defer.Deferred()
        self.factory: IProtocolFactory | None = None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        self.factory = factory
        return self.attempt

    def complete(self, transport: HandoverTransport) -> None:
        assert self.factory is not None
        protocol = self.factory.buildProtocol(BACKEND)
        assert protocol is not None
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.attempt.callback(protocol)


class ConnectAndSpliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = HandoverTransport(peerAddress=CLIENT)
        self.backend = HandoverTransport(peerAddress=BACKEND)
        self.endpoint = HandEndpoint()
        self.asked: list[ITransport] = []

    def start(self, splice: Splice | None) -> defer.Deferred[None]:
        def ready(backend: ITransport) -> Splice | None:
            self.asked.append(backend)
            return splice

        return connect_and_splice(self.endpoint, self.client, ready)  # type: ignore[arg-type]  # duck-typed endpoint

    def test_client_paused_until_the_relay_starts(self) -> None:
        self.start(Splice(b"hello", None, None))
        self.assertEqual(self.client.producerState, "paused")
        self.endpoint.complete(self.backend)
        self.assertEqual(self.asked, [self.backend])
        self.assertEqual(self.client.producerState, "producing")
        self.assertEqual(self.backend.value(), b"hello")
        self.assertIsInstance(self.client.protocol, RelayProtocol)
        self.client.protocol.dataReceived(b" world")
        self.assertEqual(self.backend.value(), b"hello world")

    def test_idle_timeout_and_report(self) -> None:
        clock, closed = Clock(), []
        self.start(Splice(b"", 3, clock, on_close=lambda up, down: closed.append((up, down))))
        self.endpoint.complete(self.backend)
        self.backend.protocol.dataReceived(b"pong")
        clock.advance(3)
        self.assertTrue(self.client.disconnecting or not self.client.connected)
        self.client.protocol.connectionLost(Failure(error.ConnectionDone()))
        self.backend.protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(closed, [(0, 4)])

    def test_client_gone_closes_the_backend(self) -> None:
        result = self.start(None)
        self.endpoint.complete(self.backend)
        self.successResultOf(result)
        self.assertFalse(self.backend.connected)
        self.assertEqual(self.backend.value(), b"")

    def test_a_failed_attempt_fails_the_result(self) -> None:
        result = self.start(Splice(b"x", None, None))
        self.endpoint.attempt.errback(error.ConnectionRefusedError())
        self.failureResultOf(result, error.ConnectionRefusedError)
        self.assertEqual(self.asked, [])
