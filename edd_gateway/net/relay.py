"""
The two-way byte relay: joins two connected transports so that every byte
read on one is written to the other, until both are closed.

Used wherever the gateway stops interpreting a connection (a WebSocket after
its 101, TLS passthrough, raw TCP).  Each transport is registered as the
streaming producer of the other, so a slow reader on one side stops the
reads on the other and memory stays flat.  Half-close is mirrored where both
transports support it, a full close on one side closes the other after its
buffer drains, and an optional idle timeout closes both when nothing moves.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.net.transport import swap_protocol, write_now
from edd_gateway.net.addresses import describe_peer

#: Called once both sides are closed with (bytes a->b, bytes b->a).
OnClose = Callable[[int, int], object]


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    One end of a relay: forwards what its transport reads to the peer's
    transport.  Built by L{splice}; not meant to be built alone.

    @ivar bytes_in: bytes read from this end's transport (and so written to
        the peer), the initial bytes given to L{splice} included.
    """

    peer: RelayProtocol

    def __init__(self, session: _RelaySession) -> None:
        self._session = session
        self.bytes_in = 0
        self.read_closed = False
        self.write_closed = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._session.moved()
        write_now(self.peer.transport, data)

    def readConnectionLost(self) -> None:
        """Our client sent EOF: pass the EOF on, keep the other direction."""
        if self.read_closed:
            return
        self.read_closed = True
        peer = self.peer
        # We will read nothing more, so we are no producer for the peer.
        _unregister_producer(peer.transport)
        if not peer.lost:
            if _can_half_close(peer.transport):
                peer.transport.loseWriteConnection()  # type: ignore[union-attr]  # a connected protocol
            else:
                peer.transport.loseConnection()  # type: ignore[union-attr]  # a connected protocol
        self._close_if_both_directions_done()

    def writeConnectionLost(self) -> None:
        """Our write side is shut (after the peer's EOF was passed on)."""
        self.write_closed = True
        _unregister_producer(self.transport)
        self._close_if_both_directions_done()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.lost:
            return
        self.lost = True
        self.connected = False
        peer = self.peer
        # Producers first: a TCP transport does not finish closing while a
        # paused producer is registered with it, and a dead transport must
        # not be asked to produce.
        _unregister_producer(self.transport)
        if not peer.lost:
            _unregister_producer(peer.transport)
            if self._session.aborting:
                _abort(peer.transport)
            else:
                peer.transport.loseConnection()  # type: ignore[union-attr]  # a connected protocol
        self._session.end_lost()

    def _close_if_both_directions_done(self) -> None:
        if self.read_closed and self.write_closed and not self.lost:
            self.transport.loseConnection()  # type: ignore[union-attr]  # set by makeConnection


class _RelaySession:
    """What both ends share: the idle timer and the end-of-relay report."""

    _log = Logger()

    def __init__(
        self,
        idle_timeout: float | None,
        clock: IReactorTime | None,
        on_close: OnClose | None,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        if idle_timeout is not None and clock is None:
            raise ValueError("an idle timeout needs a clock")
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._on_close = on_close
        self._on_idle = on_idle
        self._last_moved = 0.0
        self._timer: IDelayedCall | None = None
        self._ends_lost = 0
        self.aborting = False
        self.a: RelayProtocol
        self.b: RelayProtocol

    def start(self) -> None:
        if self._idle_timeout is not None and self._clock is not None:
            self._last_moved = self._clock.seconds()
            self._timer = self._clock.callLater(self._idle_timeout, self._check_idle)

    def moved(self) -> None:
        # Only a timestamp per chunk: resetting a DelayedCall on every chunk
        # would reorder the reactor's timer heap on the hot path.
        if self._clock is not None:
            self._last_moved = self._clock.seconds()

    def _check_idle(self) -> None:
        assert self._clock is not None and self._idle_timeout is not None
        self._timer = None
        quiet_for = self._clock.seconds() - self._last_moved
        if quiet_for < self._idle_timeout:
            self._timer = self._clock.callLater(
                self._idle_timeout - quiet_for, self._check_idle
            )
            return
        self._log.info(
            "relay: {a} <-> {b} idle for {seconds}s; closing",
            a=_describe(self.a.transport),
            b=_describe(self.b.transport),
            seconds=self._idle_timeout,
        )
        if self._on_idle is not None:
            self._on_idle()
        # Abort rather than lose: whatever is still buffered has not moved
        # for the whole timeout, and loseConnection would wait for it forever.
        self.aborting = True
        for end in (self.a, self.b):
            if not end.lost:
                _abort(end.transport)

    def end_lost(self) -> None:
        self._ends_lost += 1
        if self._ends_lost < 2:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._on_close is not None:
            try:
                self._on_close(self.a.bytes_in, self.b.bytes_in)
            except Exception:
                self._log.failure("relay: on_close callback failed")


def splice(
    a: ITransport,
    b: ITransport,
    a_to_b_initial: bytes = b"",
    b_to_a_initial: bytes = b"",
    *,
    idle_timeout: float | None = None,
    clock: IReactorTime | None = None,
    on_close: OnClose | None = None,
    on_idle: Callable[[], object] | None = None,
) -> tuple[RelayProtocol, RelayProtocol]:
    """
    Relay bytes between two connected transports until both are closed.

    The protocols currently attached to C{a} and C{b} must be done with
    them (no producer of theirs still registered): from here on every event
    goes to the relay.  Reading is resumed on both transports, so one paused
    while its peer was being connected starts flowing now.

    @param a_to_b_initial: bytes already read from C{a} that C{b} must get
        first (a replayed ClientHello, bytes that followed an upgrade head).
    @param b_to_a_initial: the same for the other direction.
    @param idle_timeout: when given (with C{clock}), abort both sides once
        no byte has been read from either for that many seconds.  A reader
        so slow that the writer stays paused that long counts as idle.
    @param on_close: called once, when both sides are closed, with the bytes
        relayed from C{a} to C{b} and from C{b} to C{a}.
    @param on_idle: called when the idle timeout closes the relay (a limit hit).
    @return: the relay ends attached to C{a} and to C{b}.
    """
    session = _RelaySession(idle_timeout, clock, on_close, on_idle)
    end_a, end_b = RelayProtocol(session), RelayProtocol(session)
    end_a.peer, end_b.peer = end_b, end_a
    session.a, session.b = end_a, end_b
    swap_protocol(a, end_a)
    swap_protocol(b, end_b)
    a.registerProducer(b, True)  # type: ignore[attr-defined]  # TCP and TLS transports have it
    b.registerProducer(a, True)  # type: ignore[attr-defined]  # TCP and TLS transports have it
    # Resume before the initial writes: a write that fills a buffer pauses
    # the other side again, and that pause must win.
    a.resumeProducing()  # type: ignore[attr-defined]  # TCP and TLS transports have it
    b.resumeProducing()  # type: ignore[attr-defined]  # TCP and TLS transports have it
    if a_to_b_initial:
        end_a.bytes_in += len(a_to_b_initial)
        b.write(a_to_b_initial)
    if b_to_a_initial:
        end_b.bytes_in += len(b_to_a_initial)
        a.write(b_to_a_initial)
    session.start()
    return end_a, end_b


def _can_half_close(transport: object) -> bool:
    # Wrappers (TLS, PROXY protocol) copy the interfaces of the transport
    # below them, but neither shut their own write side on
    # loseWriteConnection nor pass readConnectionLost up: only a bare
    # half-closeable descriptor (TCP) really half-closes.
    return IHalfCloseableDescriptor.providedBy(transport) and not isinstance(
        transport, ProtocolWrapper
    )


def _unregister_producer(transport: object) -> None:
    # TCP and the test transports expose the registered producer; some
    # refuse to unregister when there is none, so look first.
    if getattr(transport, "producer", True) is not None:
        transport.unregisterProducer()  # type: ignore[attr-defined]  # TCP and TLS transports have it


def _abort(transport: object) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()  # type: ignore[attr-defined]  # a transport


def _describe(transport: object) -> str:
    try:
        peer = transport.getPeer()  # type: ignore[attr-defined]  # a transport
    except Exception:
        return repr(transport)
    return describe_peer(peer)


__all__ = ["OnClose", "RelayProtocol", "splice"]
