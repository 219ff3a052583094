"""
Flow control between one client connection and the backend connections of
its exchanges: the one object that decides how a response is written to the
client (straight to the socket, or through the transport's buffer) and that
registers and unregisters the producers that make a slow side pause the
fast one.

An exchange asks it, and never the client transport itself: an HTTP/2
stream will give its exchange a flow of its own, whose "queued" means a
spent stream window, not a full socket buffer.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from edd_gateway.net.transport import is_plain_tcp, queued, socket_below, write_now

__all__ = ["ConnectionFlow", "FlowTransport", "Throttle"]


class FlowTransport(Protocol):
    """What flow control uses of a transport (Twisted's TCP and TLS transports have it all)."""

    producer: Any

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@implementer(IPushProducer)
class Throttle:
    """
    Registered as the producer of the other side of an exchange: passes
    pause and resume to a transport, remembers whether it paused it, and
    ignores stopProducing (the exchange handles a lost connection itself).
    """

    __slots__ = ("transport", "paused")

    def __init__(self, transport: FlowTransport) -> None:
        self.transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class ConnectionFlow:
    """
    The flow control of one HTTP/1.1 client connection (its transport).

    Each side of an exchange is the producer of the other: a full write
    buffer on one pauses reading on the other.  Through a L{Throttle},
    because Twisted stops a registered producer when the consumer's
    connection is lost — which would close the client whenever a backend
    connection ends.  Registered only where it can matter, since it costs on
    every request: the client throttles the backend when there is a request
    body to stream; the backend throttles the client as soon as a write to
    the client is left queued (L{queued}: TCP, or TLS over TCP), or at once
    (L{register_at_once}) when the client transport cannot say (other
    wrappers).

    @ivar write: write bytes to the client, straight to the socket when
        nothing is queued and the transport is plain TCP (not through TLS).
    @ivar queued: whether a write to the client was left queued.
    @ivar paused: whether reading from the client is paused.
    """

    __slots__ = ("transport", "register_at_once", "write", "queued", "paused", "stopped")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        # Asked of the transport once, not per write: which TCP connection
        # tells whether a write was left queued (None: none can), and
        # whether writes can go to that socket at once (not through TLS).
        tcp_connection = socket_below(transport)
        self.register_at_once = tcp_connection is None
        # Bound once: the per-request path calls these without an extra frame.
        self.write = (partial(write_now, transport, connection=tcp_connection) if is_plain_tcp(transport)
                      else transport.write)
        self.queued = partial(queued, transport, tcp_connection)
        self.paused = False
        #: Set when the connection is closing or handed over: reading is not resumed.
        self.stopped = False

    # Reading from the client

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self.paused and not self.stopped:
            self.paused = False
            self.transport.resumeProducing()

    def hand_over(self) -> None:
        """The byte relay reads the client from now on: nothing here pauses or resumes it."""
        self.stopped = True
        self.paused = False

    # Producers

    def throttle_backend(self, backend: FlowTransport) -> Throttle:
        """Let the client's full buffer pause C{backend}."""
        throttle = Throttle(backend)
        self.transport.registerProducer(throttle, True)
        return throttle

    def throttle_client(self, backend: FlowTransport) -> Throttle:
        """Let C{backend}'s full buffer pause reading from the client."""
        throttle = Throttle(self.transport)
        backend.registerProducer(throttle, True)
        return throttle

    def release(self, backend: FlowTransport, backend_throttle: Throttle | None,
                client_throttle: Throttle | None) -> None:
        """Unregister what an exchange registered, and resume whatever it paused."""
        # Unregister whatever the transports report as their producer (TLS
        # transports report their own).
        if backend_throttle is not None:
            _unregister(self.transport)
        if client_throttle is not None:
            _unregister(backend)
        # Whatever this exchange paused must not stay paused: a parked
        # backend connection has to notice its close, and the client has to
        # send its next request.
        if backend_throttle is not None and backend_throttle.paused:
            backend_throttle.resumeProducing()
        if client_throttle is not None and client_throttle.paused:
            client_throttle.paused = False
            if not self.paused and not self.stopped:
                self.transport.resumeProducing()


def _unregister(transport: FlowTransport | None) -> None:
    if transport is not None and getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
