"""
Tests for L{edd_gateway.net.relay}: forwarding, producer wiring, half and full
close and the idle timeout over in-memory transports.  Backpressure and
half-close over real loopback TCP: C{tests/integration/test_relay_loopback.py}.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableDescriptor, IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from edd_gateway.net.relay import RelayProtocol, splice
from edd_gateway.testing.transports import HandoverTransport

CLIENT = IPv4Address("TCP", "203.0.113.7", 51234)
BACKEND = IPv4Address("TCP", "10.1.2.3", 8080)


@implementer(IHalfCloseableDescriptor)
class HalfCloseTransport(HandoverTransport):
    """Also half-closes, like TCP; records that it was asked to."""

    write_shut = False

    def loseWriteConnection(self) -> None:
        self.write_shut = True


class RelayUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.closed: list[tuple[int, int]] = []

    def pair(
        self, kind: type[HandoverTransport] = HandoverTransport, **kwargs: object
    ) -> tuple[HandoverTransport, HandoverTransport, RelayProtocol, RelayProtocol]:
        a, b = kind(peerAddress=CLIENT), kind(peerAddress=BACKEND)
        kwargs.setdefault("on_close", lambda *counts: self.closed.append(counts))
        end_a, end_b = splice(a, b, **kwargs)  # type: ignore[arg-type]
        return a, b, end_a, end_b

    def test_protocols_swapped_in(self) -> None:
        a, b, end_a, end_b = self.pair()
        self.assertIs(a.protocol, end_a)
        self.assertIs(b.protocol, end_b)
        self.assertIs(end_a.transport, a)
        self.assertIs(end_b.peer, end_a)

    def test_bytes_forwarded_and_counted(self) -> None:
        a, b, end_a, end_b = self.pair()
        a.protocol.dataReceived(b"hello")
        a.protocol.dataReceived(b", world")
        b.protocol.dataReceived(b"hi")
        self.assertEqual(b.value(), b"hello, world")
        self.assertEqual(a.value(), b"hi")
        self.assertEqual((end_a.bytes_in, end_b.bytes_in), (12, 2))

    def test_initial_bytes_written_first_and_counted(self) -> None:
        a, b, end_a, end_b = self.pair(
            a_to_b_initial=b"\x16\x03\x01hello", b_to_a_initial=b"after-101"
        )
        a.protocol.dataReceived(b"-more")
        self.assertEqual(b.value(), b"\x16\x03\x01hello-more")
        self.assertEqual(a.value(), b"after-101")
        self.assertEqual((end_a.bytes_in, end_b.bytes_in), (13, 9))

    def test_each_transport_produces_for_the_other(self) -> None:
        a, b, _, _ = self.pair()
        self.assertIs(a.producer, b)
        self.assertIs(b.producer, a)
        self.assertTrue(a.streaming)
        self.assertTrue(b.streaming)

    def test_full_buffer_pauses_the_other_side(self) -> None:
        a, b, _, _ = self.pair()
        b.producer.pauseProducing()  # b's buffer filled up
        self.assertEqual(a.producerState, "paused")
        self.assertEqual(b.producerState, "producing")
        b.producer.resumeProducing()  # drained
        self.assertEqual(a.producerState, "producing")

    def test_splice_resumes_reading(self) -> None:
        """A client paused while its backend was being connected reads again."""
        a, b = HandoverTransport(), HandoverTransport()
        a.pauseProducing()
        splice(a, b)
        self.assertEqual(a.producerState, "producing")

    def test_close_on_a_closes_b(self) -> None:
        a, b, _, _ = self.pair()
        a.protocol.dataReceived(b"abc")
        a.loseConnection()
        self.assertFalse(b.connected)
        self.assertFalse(b.disconnected, "b is closed after flushing, not aborted")
        self.assertIsNone(a.producer)
        self.assertIsNone(b.producer)
        self.assertEqual(self.closed, [(3, 0)])

    def test_close_on_b_closes_a(self) -> None:
        a, b, _, _ = self.pair()
        b.protocol.dataReceived(b"xy")
        b.loseConnection()
        self.assertFalse(a.connected)
        self.assertIsNone(a.producer)
        self.assertIsNone(b.producer)
        self.assertEqual(self.closed, [(0, 2)])

    def test_half_close_mirrored(self) -> None:
        a, b, end_a, end_b = self.pair(HalfCloseTransport)
        a.protocol.dataReceived(b"request")
        end_a.readConnectionLost()  # client sent EOF
        self.assertTrue(b.write_shut)
        self.assertTrue(b.connected, "the answer can still come back")
        self.assertIsNone(b.producer, "a reads nothing more, so produces nothing")
        self.assertIs(a.producer, b)
        b.protocol.dataReceived(b"answer")
        self.assertEqual(a.value(), b"answer")
        end_b.writeConnectionLost()  # b's FIN went out
        self.assertTrue(b.connected)
        end_b.readConnectionLost()  # backend sent EOF
        self.assertTrue(a.write_shut)
        self.assertFalse(b.connected, "both directions of b are done")
        self.assertFalse(a.connected)
        self.assertEqual(self.closed, [(7, 6)])

    def test_half_close_becomes_full_close_without_support(self) -> None:
        a, b = HalfCloseTransport(), HandoverTransport()
        closed: list[tuple[int, int]] = []
        end_a, _ = splice(a, b, on_close=lambda *c: closed.append(c))
        end_a.readConnectionLost()
        self.assertFalse(b.connected)
        self.assertFalse(a.connected)
        self.assertFalse(a.write_shut)
        self.assertEqual(closed, [(0, 0)])

    def test_wrapped_transport_is_closed_not_half_closed(self) -> None:
        """
        A wrapper (TLS, PROXY protocol) claims the interfaces of the TCP
        transport below it, but shutting that transport's write side would
        cut the wrapper's own stream: the relay closes it instead.
        """
        below = HalfCloseTransport()
        wrapper = ProtocolWrapper(WrappingFactory(protocol.Factory()), protocol.Protocol())
        below.protocol = wrapper
        wrapper.makeConnection(below)
        a = HalfCloseTransport()
        end_a, end_b = splice(a, wrapper)
        self.assertIs(wrapper.wrappedProtocol, end_b)
        self.assertIs(below.producer, a)
        end_a.readConnectionLost()
        self.assertFalse(below.write_shut)
        self.assertFalse(below.connected)
        self.assertFalse(a.connected)

    def test_read_eof_twice_counts_once(self) -> None:
        a, b, end_a, _ = self.pair(HalfCloseTransport)
        end_a.readConnectionLost()
        end_a.readConnectionLost()
        self.assertTrue(b.connected)
        self.assertTrue(b.write_shut)

    def test_idle_timeout_aborts_both(self) -> None:
        clock = Clock()
        with capturedLogs() as events:
            a, b, _, _ = self.pair(idle_timeout=10, clock=clock)
            clock.advance(6)
            a.protocol.dataReceived(b"x")
            clock.advance(6)
            self.assertTrue(a.connected and b.connected, "moved 6 s ago")
            b.protocol.dataReceived(b"y")
            clock.advance(9.5)
            self.assertTrue(a.connected and b.connected, "moved 9.5 s ago")
            clock.advance(0.5)
        self.assertTrue(a.disconnected)
        self.assertTrue(b.disconnected)
        self.assertEqual(self.closed, [(1, 1)])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIn(
            "relay: 203.0.113.7:51234 <-> 10.1.2.3:8080 idle for 10s; closing",
            [formatEvent(e) for e in events],
        )

    def test_close_cancels_idle_timer(self) -> None:
        clock = Clock()
        a, _, _, _ = self.pair(idle_timeout=10, clock=clock)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        a.loseConnection()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_timeout_needs_clock(self) -> None:
        self.assertRaises(
            ValueError, splice, HandoverTransport(), HandoverTransport(), idle_timeout=1
        )

    def test_failing_on_close_is_logged(self) -> None:
        a, b = HandoverTransport(), HandoverTransport()
        splice(a, b, on_close=lambda *c: 1 / 0)
        a.loseConnection()
        self.assertFalse(b.connected)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_is_half_closeable_protocol(self) -> None:
        _, _, end_a, _ = self.pair()
        self.assertTrue(IHalfCloseableProtocol.providedBy(end_a))


# Real loopback TCP from here: client -> front listener -(relay)-> backend.
