"""
HTTP/2 cleartext with prior knowledge (RFC 9113 3.3) on the plain port,
with C{--h2c-prior-knowledge}: a connection the sniffer calls HTTP that
starts with the HTTP/2 preface (C{PRI * HTTP/2.0...}) is served by the same
HTTP/2 server as terminated TLS, scheme C{http}, protocol C{h2c}; any other
is the HTTP/1.1 server's, as without the option.

Only C{protocol: grpc} and C{h2c} routes answer on such a connection
(L{edd_gateway.http.routing.route_request} refuses the others with 421):
cleartext HTTP/2 is for gRPC clients inside the network, and a browser
never speaks it, so a site's pages stay behind HTTP/1.1 and TLS as before.

Without the option the plain port answers the preface as it always did: an
HTTP/2 GOAWAY saying HTTP/1.1 is required (L{edd_gateway.http.requestline}).
As L{edd_gateway.h2.negotiate} does for ALPN, the choice waits for the
decisive bytes, then the chosen protocol takes the transport: no layer is
left on the per-read path.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.http.requestline import H2_PREFACE
from edd_gateway.net.addresses import describe_peer
from edd_gateway.net.transport import swap_protocol

__all__ = ["PriorKnowledgeChooser", "PriorKnowledgeFactory", "starts_like_h2"]

log = Logger()


def starts_like_h2(data: bytes) -> bool | None:
    """Whether C{data} is the HTTP/2 preface (True), cannot be (False), or may still be (None)."""
    shown = min(len(data), len(H2_PREFACE))
    if data[:shown] != H2_PREFACE[:shown]:
        return False
    return True if shown == len(H2_PREFACE) else None


class PriorKnowledgeChooser(Protocol):
    """Holds a plain connection until its first bytes say HTTP/2 or not, then hands it over."""

    def __init__(self, factory: PriorKnowledgeFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self.addr = addr
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        #: Who took the connection: bytes still handed here (by a holder of this protocol) go on to it.
        self._chosen: Protocol | None = None

    def connectionMade(self) -> None:
        # The sniffer replays at most its 16 bytes: the other 8 of the preface must follow in time.
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._silent)

    def dataReceived(self, data: bytes) -> None:
        if self._chosen is not None:
            self._chosen.dataReceived(data)
            return
        self._buffer += data
        verdict = starts_like_h2(self._buffer)
        if verdict is None:
            return
        self._stop()
        transport = self.transport
        assert transport is not None
        chosen = self.factory.build_h2() if verdict else self.factory.http1.buildProtocol(self.addr)
        assert chosen is not None
        self._chosen = chosen
        swap_protocol(transport, chosen)
        chosen.makeConnection(transport)
        replay, self._buffer = self._buffer, b""
        chosen.dataReceived(replay)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop()

    def _silent(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        log.info("h2c: {client} sent {count} bytes of the HTTP/2 preface and stopped; closing",
                 client=describe_peer(transport.getPeer()), count=len(self._buffer))
        transport.loseConnection()

    def _stop(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class PriorKnowledgeFactory(Factory):
    """
    The sniffer's HTTP handler with C{--h2c-prior-knowledge}: C{http1} builds
    HTTP/1.1 connections, C{build_h2} HTTP/2 cleartext ones; C{timeout}
    bounds a preface that stops half-way.
    """

    noisy = False

    def __init__(self, http1: Factory, build_h2: Callable[[], Protocol], clock: IReactorTime,
                 timeout: float) -> None:
        self.http1 = http1
        self.build_h2 = build_h2
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: IAddress | None) -> PriorKnowledgeChooser:
        return PriorKnowledgeChooser(self, addr)
