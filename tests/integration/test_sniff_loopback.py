"""
L{edd_gateway.front.sniff} over one real loopback connection: bytes trickled by a
client arrive at the chosen protocol exactly.  The classifier and the
sniffing protocol in memory are C{tests/unit/test_sniff.py}'s.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.testing.transports import RecordingFactory, RecordingProtocol


HTTP_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\n\r\n"


class ReplyingProtocol(RecordingProtocol):
    """Answers a whole HTTP-ish head with what it received, then closes."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.received().endswith(b"\r\n\r\n"):
            self.transport.write(b"got:" + self.received())  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]


class TrickleClient(protocol.Protocol):
    """Sends its payload one byte per write, a few milliseconds apart."""

    def __init__(self, reactor: object, payload: bytes) -> None:
        self.reactor = reactor
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    @inlineCallbacks
    def connectionMade(self):  # type: ignore[no-untyped-def]
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        for i in range(len(self.payload)):
            if i:
                yield deferLater(self.reactor, 0.002, lambda: None)
            self.transport.write(self.payload[i : i + 1])  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self.received)


class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_trickled_bytes_arrive_exactly(self):  # type: ignore[no-untyped-def]
        from twisted.internet import reactor

        class Handler(RecordingFactory):
            def buildProtocol(self, addr: IAddress) -> ReplyingProtocol:  # type: ignore[override]
                built = ReplyingProtocol()
                self.built.append(built)
                return built

        handler = Handler()
        factory = SniffingFactory(
            {Verdict.HTTP: handler}, clock=reactor, listener_name="loopback", timeout=30
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = TrickleClient(reactor, HTTP_REQUEST)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield connectProtocol(endpoint, client)
        answer = yield client.done
        self.assertEqual(answer, b"got:" + HTTP_REQUEST)
        [built] = handler.built
        self.assertEqual([kind for kind, _ in built.events].count("made"), 1)
        self.assertEqual(built.received(), HTTP_REQUEST)
        self.assertEqual(factory.stats.handed_off[Verdict.HTTP], 1)
