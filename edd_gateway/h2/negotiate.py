"""
The protocol inside terminated TLS, chosen by what ALPN negotiated: HTTP/2
for C{h2}, HTTP/1.1 otherwise (C{http/1.1}, or a client without ALPN).

The TLS wrapper builds its protocol before the handshake, when ALPN is not
yet known; the choice waits for the first decrypted bytes, which come only
after the handshake (as twisted.web's C{_GenericHTTPChannelProtocol} does),
and the chosen protocol then takes the transport for itself: no layer is
left on the per-read path.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.addresses import describe_peer
from edd_gateway.net.transport import swap_protocol

__all__ = ["H2_ALPN", "ProtocolChooser", "ProtocolChooserFactory"]

log = Logger()

H2_ALPN = b"h2"


class ProtocolChooser(Protocol):
    """Holds a terminated connection until its first bytes, then hands it over."""

    def __init__(self, factory: ProtocolChooserFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self.addr = addr
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # The handshake and then the first request must come in time: the
        # handshake has its own bound, this one covers a silent client after it.
        self._timer = self.factory.clock.callLater(self.factory.first_bytes_timeout, self._silent)

    def dataReceived(self, data: bytes) -> None:
        self._stop()
        transport = self.transport
        assert transport is not None
        negotiated = getattr(transport, "negotiatedProtocol", None)
        chosen = (self.factory.build_h2() if negotiated == H2_ALPN
                  else self.factory.http1.buildProtocol(self.addr))
        assert chosen is not None
        swap_protocol(transport, chosen)
        chosen.makeConnection(transport)
        chosen.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop()

    def _silent(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        log.info("https: {client} sent nothing within {seconds:g}s of the handshake; closing",
                 client=describe_peer(transport.getPeer()), seconds=self.factory.first_bytes_timeout)
        transport.loseConnection()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ProtocolChooserFactory(Factory):
    """
    The factory terminated TLS wraps when HTTP/2 is on: C{http1} builds
    HTTP/1.1 connections, C{build_h2} HTTP/2 ones.
    """

    noisy = False

    def __init__(self, http1: Factory, build_h2: Callable[[], Protocol], clock: IReactorTime,
                 first_bytes_timeout: float) -> None:
        self.http1 = http1
        self.build_h2 = build_h2
        self.clock = clock
        self.first_bytes_timeout = first_bytes_timeout

    def buildProtocol(self, addr: IAddress | None) -> ProtocolChooser:
        return ProtocolChooser(self, addr)
