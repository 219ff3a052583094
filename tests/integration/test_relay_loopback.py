"""
L{edd_gateway.net.relay} over real loopback TCP: half-close, and backpressure
that keeps memory flat under a slow reader.  Forwarding, producer wiring,
close and the idle timeout over in-memory transports are
C{tests/unit/test_relay.py}'s.
"""

from __future__ import annotations

import hashlib

from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from edd_gateway.net.relay import splice


TOTAL = 64 * 1024 * 1024


CHUNK = bytes(range(256)) * 256  # 64 KiB


def track_pending(transport: object) -> dict[str, int]:
    """Record the most bytes ever queued in a TCP transport's write buffer."""
    seen = {"max_pending": 0, "paused_producer": 0}
    original = transport.write  # type: ignore[attr-defined]

    def write(data: bytes) -> None:
        original(data)
        pending = len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[attr-defined]
        seen["max_pending"] = max(seen["max_pending"], pending)
        seen["paused_producer"] |= bool(transport.producerPaused)  # type: ignore[attr-defined]

    transport.write = write  # type: ignore[attr-defined]
    return seen


class FrontProtocol(protocol.Protocol):
    """Pauses its client, connects the backend, then splices the two."""

    def __init__(self, relay: LoopbackRelay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]
        endpoint = TCP4ClientEndpoint(self.relay.reactor, "127.0.0.1", self.relay.backend_port)
        connectProtocol(endpoint, BackendSide(self.relay, self.transport))


class BackendSide(protocol.Protocol):
    def __init__(self, relay: LoopbackRelay, front: object) -> None:
        self.relay = relay
        self.front = front

    def connectionMade(self) -> None:
        transport = self.transport
        splice(
            self.front,  # type: ignore[arg-type]
            transport,  # type: ignore[arg-type]
            on_close=lambda *counts: self.relay.closed.callback(counts),
        )
        self.relay.backend_seen = track_pending(transport)


class LoopbackRelay:
    """A front port relaying every connection to a backend factory's port."""

    def __init__(self, test: TestCase, backend: protocol.Factory) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.closed: Deferred[tuple[int, int]] = Deferred()
        self.backend_seen: dict[str, int] = {}
        backend_port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        test.addCleanup(backend_port.stopListening)
        self.backend_port = backend_port.getHost().port
        front = protocol.Factory.forProtocol(lambda: FrontProtocol(self))
        front_port = reactor.listenTCP(0, front, interface="127.0.0.1")
        test.addCleanup(front_port.stopListening)
        self.front_port = front_port.getHost().port

    def connect(self, client: protocol.Protocol) -> Deferred[protocol.Protocol]:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.front_port)
        return connectProtocol(endpoint, client)


@implementer(IHalfCloseableProtocol)
class EchoOnEOF(protocol.Protocol):
    """Backend answering C{got:<everything>} once the client half-closes."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(b"got:" + self.received)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class HalfClosingClient(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        # Both directions are done; TCP leaves the final close to us.
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self.received)


@implementer(IPushProducer)
class FloodingClient(protocol.Protocol):
    """Writes TOTAL bytes as fast as its transport lets it, and no faster."""

    def __init__(self) -> None:
        self.sent = 0
        self.paused = False
        self.digest = hashlib.sha256()
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < TOTAL:
            self.sent += len(CHUNK)
            self.digest.update(CHUNK)
            self.transport.write(CHUNK)  # type: ignore[union-attr]
        if self.sent >= TOTAL and not self.paused:
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(None)


class PausedReceiver(protocol.Protocol):
    """Backend that starts paused and closes once it has TOTAL bytes."""

    def __init__(self) -> None:
        self.received = 0
        self.digest = hashlib.sha256()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        if self.received >= TOTAL:
            self.transport.loseConnection()  # type: ignore[union-attr]


class LoopbackRelayTests(TestCase):
    @inlineCallbacks
    def test_half_close_over_tcp(self):  # type: ignore[no-untyped-def]
        relay = LoopbackRelay(self, protocol.Factory.forProtocol(EchoOnEOF))
        client = HalfClosingClient(b"hello")
        yield relay.connect(client)
        answer = yield client.done
        self.assertEqual(answer, b"got:hello")
        counts = yield relay.closed
        self.assertEqual(counts, (5, 9))

    @inlineCallbacks
    def test_slow_reader_keeps_memory_flat(self):  # type: ignore[no-untyped-def]
        receivers: list[PausedReceiver] = []

        def build() -> PausedReceiver:
            receivers.append(PausedReceiver())
            return receivers[-1]

        relay = LoopbackRelay(self, protocol.Factory.forProtocol(build))
        client = FloodingClient()
        yield relay.connect(client)
        stalled = yield self.until_stalled(client)
        self.assertTrue(stalled, "the client never had to stop writing")
        self.assertLess(client.sent, TOTAL, "the relay swallowed everything")
        [receiver] = receivers
        self.assertEqual(receiver.received, 0)
        receiver.transport.resumeProducing()  # type: ignore[union-attr]
        yield client.done
        yield relay.closed
        self.assertEqual(receiver.received, TOTAL)
        self.assertEqual(receiver.digest.digest(), client.digest.digest())
        # Twisted's 64 KiB buffer limit plus one read of 64 KiB, with slack;
        # without backpressure it would have queued most of the 64 MiB.
        seen = relay.backend_seen
        self.assertLess(seen["max_pending"], 512 * 1024)
        self.assertTrue(seen["paused_producer"], "the relay never paused the client")

    def until_stalled(self, client: FloodingClient) -> Deferred[bool]:
        """Fire once the client has been paused with nothing sent for 300 ms."""
        from twisted.internet import reactor

        done: Deferred[bool] = Deferred()
        history: list[int] = []

        def poll() -> None:
            history.append(client.sent if client.paused else -1)
            if len(history) > 6 and len(set(history[-6:])) == 1 and history[-1] > 0:
                loop.stop()
                done.callback(True)
            elif client.sent >= TOTAL:
                loop.stop()
                done.callback(False)

        loop = LoopingCall(poll)
        loop.clock = reactor
        loop.start(0.05)
        return done
