"""
Protocol sniffing: decide from a connection's first bytes whether it speaks
TLS, HTTP or SSH, then hand the connection to that kind's protocol.

L{classify} (L{edd_gateway.front.classify}) is a pure function of the bytes
seen so far; it answers
L{Verdict.NEED_MORE} until the bytes are decisive and never changes its mind
once they are.  L{SniffingFactory} builds one L{SniffingProtocol} per
connection: it buffers at most a few bytes for at most C{timeout} seconds,
then swaps the chosen protocol in below the transport and replays every byte
it read, so the chosen protocol sees the connection as if it had been there
from the start.  The sniffer stays out of the data path afterwards.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.front.classify import SERVED_KINDS, SNIFF_MAX_BYTES, Verdict, classify
from edd_gateway.net.transport import swap_protocol
from edd_gateway.front.admission import NO_ADMISSION, Admission, NoAdmission
from edd_gateway.front.drain import ConnectionTracker
from edd_gateway.net.addresses import describe_peer
from edd_gateway.net.proxyprotocol import awaiting_header


#: Seconds a client may stay silent (or stall mid-opening) before the
#: sniffer decides for it.
DEFAULT_SNIFF_TIMEOUT = 5.0


@dataclass
class SniffStats:
    """
    What became of the connections one listener sniffed.

    @ivar handed_off: connections handed to a handler, by kind (those handed
        to the default kind after a silent timeout included).
    @ivar unsupported: connections recognised but closed because no handler
        serves their kind on this listener.
    @ivar unknown: connections closed because their first bytes were not TLS,
        HTTP or SSH.
    @ivar silent_timeouts: clients that sent nothing within the timeout.
    @ivar partial_timeouts: clients that started an opening but did not
        finish it within the timeout (closed).
    @ivar closed_early: clients that went away before a verdict.
    @ivar no_proxy_header: connections to a C{haproxy:} listener closed
        because they sent no valid PROXY protocol header (in time).
    """

    handed_off: collections.Counter[Verdict] = field(default_factory=collections.Counter)
    unsupported: collections.Counter[Verdict] = field(default_factory=collections.Counter)
    unknown: int = 0
    silent_timeouts: int = 0
    partial_timeouts: int = 0
    closed_early: int = 0
    no_proxy_header: int = 0


class SniffingProtocol(Protocol):
    """
    Buffers a connection's first bytes until L{classify} decides, then hands
    the transport to the handler for that kind.
    """

    _log = Logger()

    def __init__(self, factory: SniffingFactory, peer: IAddress) -> None:
        self._factory = factory
        self._peer = peer
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._done = False
        self._admitted = False

    def connectionMade(self) -> None:
        # Behind a PROXY-protocol wrapper the peer is the balancer's until
        # the header is read: admission waits for the first bytes after it
        # (or the silent timeout), which only come once the header is there.
        if not self._admitted and not awaiting_header(self.transport) and not self._admit():
            return
        self._factory.tracker.add(self.transport)
        self._timer = self._factory.clock.callLater(self._factory.timeout, self._timedOut)

    def _admit(self) -> bool:
        """Ask admission; a refused connection is aborted and forgotten here."""
        self._admitted = True
        if self._factory.admission.admit_transport(self.transport, self._factory.listener_name):
            return True
        self._decide()
        return False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if not self._admitted and not self._admit():
            return
        self._buffer += data
        verdict = classify(self._buffer[:SNIFF_MAX_BYTES], request_lines=self._factory.raw is None)
        if verdict is Verdict.NEED_MORE:
            if len(self._buffer) < SNIFF_MAX_BYTES:
                return
            # Unreachable with today's openings (all shorter than the bound;
            # classify itself gives up on a longer word), kept so the bound
            # holds whatever openings are added.
            verdict = Verdict.UNKNOWN
        self._decide()
        if verdict is Verdict.UNKNOWN and self._factory.raw is not None:
            self._handOff(Verdict.UNKNOWN)
            return
        if verdict is Verdict.UNKNOWN:
            self._factory.stats.unknown += 1
            self._factory.admission.garbage(self._peerHost())
            # Abort: nothing was promised to a client speaking no known
            # protocol, and it may be hostile; no need to linger.
            self._giveUp(
                "on {listener} sent {first!r}, not TLS, HTTP or SSH",
                abort=True,
                first=self._buffer[:SNIFF_MAX_BYTES],
            )
            return
        self._handOff(verdict)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done:
            self._decide()
            if self._refused_proxy_header(reason):
                return
            self._factory.stats.closed_early += 1
            self._log.debug(
                "sniff: {peer} left {listener} after {count} bytes, before a verdict",
                peer=self._peerText(),
                listener=self._factory.listener_name,
                count=len(self._buffer),
            )

    def _timedOut(self) -> None:
        self._timer = None
        if self._done:
            return
        self._decide()
        stats, timeout = self._factory.stats, self._factory.timeout
        if awaiting_header(self.transport):
            # Behind a balancer the header comes first, at once: whoever is
            # silent here is not the balancer, and gets no default kind.
            stats.no_proxy_header += 1
            self._hit(None)
            self._giveUp("on {listener} sent no PROXY protocol header in {timeout}s", timeout=timeout)
            return
        if not self._admitted and not self._admit():
            return
        if self._buffer:
            stats.partial_timeouts += 1
            self._hit(self._peerHost())
            self._giveUp(
                "on {listener} sent only {first!r} in {timeout}s",
                first=self._buffer,
                timeout=timeout,
            )
            return
        stats.silent_timeouts += 1
        if self._factory.raw is not None:
            # A container port: the server may be the one to speak first.
            self._handOff(Verdict.UNKNOWN)
            return
        default = self._factory.default
        if default is None:
            self._hit(self._peerHost())
            self._giveUp("on {listener} sent nothing in {timeout}s", timeout=timeout)
            return
        self._handOff(default)

    def _hit(self, host: str | None) -> None:
        self._factory.admission.hit("sniff-timeout", host)

    def _refused_proxy_header(self, reason: Failure) -> bool:
        """
        Log and count a connection that Twisted's PROXY-protocol wrapper
        closed because its header was missing or malformed: the wrapper
        closes it itself (or a parse error escapes it) and says nothing.
        """
        transport = self.transport
        if not awaiting_header(transport):
            return False
        if not transport.disconnecting and reason.check(ConnectionDone, ConnectionLost):  # type: ignore[union-attr]  # a wrapper
            # Left before sending a header, like a balancer's TCP health check.
            return False
        self._factory.stats.no_proxy_header += 1
        self._log.info(
            "sniff: {peer} on {listener} sent no valid PROXY protocol header; closed",
            peer=self._peerText(),
            listener=self._factory.listener_name,
        )
        return True

    def _decide(self) -> None:
        """Mark the sniff finished: no timer, no more bytes taken."""
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handOff(self, kind: Verdict) -> None:
        transport = self.transport
        assert transport is not None
        handler = self._factory.raw if kind is Verdict.UNKNOWN else self._factory.handlers.get(kind)
        if handler is None:
            self._factory.stats.unsupported[kind] += 1
            self._giveUp("spoke {kind} on {listener}, not served yet", kind=kind.value)
            return
        protocol = handler.buildProtocol(self._peerAddress())
        if protocol is None:
            self._factory.stats.unsupported[kind] += 1
            self._giveUp("spoke {kind} on {listener}, refused by its handler", kind=kind.value)
            return
        self._factory.stats.handed_off[kind] += 1
        # Swap first so that anything the transport delivers from inside
        # connectionMade already reaches the new protocol; makeConnection
        # then gives it its one connectionMade, and the replay follows.
        swap_protocol(transport, protocol)
        protocol.makeConnection(transport)
        replay, self._buffer = self._buffer, b""
        self.transport = None
        if replay and _still_open(transport):
            protocol.dataReceived(replay)

    def _giveUp(self, what: str, abort: bool = False, **fields: object) -> None:
        """Log C{sniff: <peer> <what>; closing} and close."""
        self._log.info(
            "sniff: {peer} " + what + "; closing",
            peer=self._peerText(),
            listener=self._factory.listener_name,
            **fields,
        )
        if abort:
            self.transport.abortConnection()  # type: ignore[union-attr]  # set by makeConnection
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]  # set by makeConnection

    def _peerAddress(self) -> IAddress:
        # Asked at decision time: behind a PROXY-protocol wrapper the address
        # given to buildProtocol is the proxy's, the transport's is the client's.
        if self.transport is not None:
            return self.transport.getPeer()
        return self._peer

    def _peerText(self) -> str:
        return describe_peer(self._peerAddress())

    def _peerHost(self) -> str:
        return str(getattr(self._peerAddress(), "host", ""))


def _still_open(transport: object) -> bool:
    """
    Whether bytes read from C{transport} should still be delivered: a real
    transport stops reading once its protocol closes it, so a handler that
    closes in connectionMade gets no replay either.
    """
    return bool(getattr(transport, "connected", True)) and not getattr(
        transport, "disconnecting", False
    )


class SniffingFactory(Factory):
    """
    Builds a L{SniffingProtocol} per connection of one listener.

    @param handlers: the factory serving each kind; a kind missing here is
        recognised, logged and closed ("not served yet").
    @param default: the kind a client gets when it stays silent for
        C{timeout} seconds (some SSH clients wait for the server to speak
        first); L{None} closes silent connections.
    @param timeout: seconds to wait for decisive bytes.
    @param clock: schedules the timeout.
    @param listener_name: names the listener in log lines, e.g. C{tcp:8080}.
    @param admission: decides whether each new connection is served at all
        (limits, bans) and hears of the sniffer's limit hits and garbage;
        L{NoAdmission} (the default) admits everything.
    @param raw: on container ports, the handler of connections that speak
        none of the three (or stay silent): relayed as raw TCP; L{None}
        closes them.
    """

    noisy = False

    def __init__(
        self,
        handlers: Mapping[Verdict, IProtocolFactory],
        *,
        clock: IReactorTime,
        listener_name: str,
        default: Verdict | None = None,
        timeout: float = DEFAULT_SNIFF_TIMEOUT,
        admission: Admission | NoAdmission = NO_ADMISSION,
        raw: IProtocolFactory | None = None,
    ) -> None:
        wrong = set(handlers) - SERVED_KINDS
        if wrong:
            raise ValueError(f"no connection is ever handed to {sorted(map(str, wrong))}")
        if default is not None and default not in SERVED_KINDS:
            raise ValueError(f"default must be one of TLS, HTTP, SSH or None, not {default}")
        self.handlers = dict(handlers)
        self.raw = raw
        self.default = default
        self.timeout = timeout
        self.clock = clock
        self.listener_name = listener_name
        self.stats = SniffStats()
        self.tracker = ConnectionTracker(listener_name)
        self.admission = admission

    def buildProtocol(self, addr: IAddress) -> SniffingProtocol:  # type: ignore[override]  # a port's peer
        return SniffingProtocol(self, addr)

    def startFactory(self) -> None:
        # The handlers never listen themselves, so nobody else starts them
        # (TLSMemoryBIOFactory, for one, sets up its context in doStart).
        for handler in self.handlers.values():
            handler.doStart()

    def stopFactory(self) -> None:
        for handler in self.handlers.values():
            handler.doStop()


__all__ = ["DEFAULT_SNIFF_TIMEOUT", "SniffStats", "SniffingFactory", "SniffingProtocol"]
