"""
In-memory transports and protocols shared by the unit tests of the front door
(sniffing, admission, the relay): a transport whose protocol is swapped the
way a wrapping transport's is, and a handler protocol and factory that record
what they were given.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure

__all__ = ["HandoverTransport", "RecordingFactory", "RecordingProtocol"]


class HandoverTransport(StringTransportWithDisconnection):
    """
    An in-memory transport that can change protocols the way a wrapping
    transport does (swap_protocol sets C{wrappedProtocol}); tests deliver
    bytes to C{transport.protocol}, as a real transport would.
    """

    @property
    def wrappedProtocol(self) -> protocol.Protocol:
        # None until a test sets C{protocol}, so that hasattr() (swap_protocol) finds it anyway.
        return getattr(self, "protocol", None)  # type: ignore[return-value]  # None only before that

    @wrappedProtocol.setter
    def wrappedProtocol(self, value: protocol.Protocol) -> None:
        self.protocol = value


class RecordingProtocol(protocol.Protocol):
    """Notes every event it gets, in order."""

    def __init__(self, close_at_start: bool = False) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.close_at_start = close_at_start

    def connectionMade(self) -> None:
        self.events.append(("made", b""))
        if self.close_at_start:
            self.transport.loseConnection()  # type: ignore[union-attr]  # set by makeConnection

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.events.append(("lost", b""))

    def received(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "data")


class RecordingFactory(protocol.Factory):
    def __init__(self, close_at_start: bool = False, refuse: bool = False) -> None:
        self.built: list[RecordingProtocol] = []
        self.peers: list[IAddress] = []
        self.close_at_start = close_at_start
        self.refuse = refuse

    def buildProtocol(self, addr: IAddress) -> RecordingProtocol | None:  # type: ignore[override]  # a port's peer
        self.peers.append(addr)
        if self.refuse:
            return None
        built = RecordingProtocol(self.close_at_start)
        self.built.append(built)
        return built
