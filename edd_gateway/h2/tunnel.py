"""
A WebSocket over one HTTP/2 stream (RFC 8441), relayed to the HTTP/1.1
backend connection that answered the upgrade with 101.

The HTTP/1.1 side splices two transports (L{edd_gateway.net.relay.splice});
here one end is a stream, so the relay is its own: the backend's bytes go
out as DATA frames (held while the stream's window is spent, the backend
paused meanwhile), the client's DATA go to the backend (and are acknowledged
only as the backend's buffer takes them, so a slow backend spends the
client's window, not the gateway's memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from edd_gateway.net.transport import swap_protocol
from edd_gateway.http.flow import Throttle
from edd_gateway.ops.observe import tunnel_reporter

if TYPE_CHECKING:
    from edd_gateway.h2.stream import H2Stream
    from edd_gateway.http.clientside import TunnelledRequest

__all__ = ["StreamTunnel"]


class StreamReading:
    """
    A stream's reading as the transport a L{Throttle} pauses: a backend's
    full buffer (an exchange's, or the tunnel's) stops the stream's
    WINDOW_UPDATEs, not the connection's reading.
    """

    __slots__ = ("stream", "producer")

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.producer: Any = None

    def pauseProducing(self) -> None:
        self.stream.pause_reading()

    def resumeProducing(self) -> None:
        self.stream.resume_reading()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        raise NotImplementedError("a stream's reading produces for nobody")

    def unregisterProducer(self) -> None:
        pass


class _BackendEnd(Protocol):
    """The backend connection's protocol once the tunnel owns it."""

    def __init__(self, tunnel: StreamTunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.to_client(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tunnel.backend_lost()


class StreamTunnel:
    """The relay between one stream and one backend transport."""

    def __init__(self, stream: H2Stream, backend: ITransport, request: TunnelledRequest, rest: bytes) -> None:
        self.stream = stream
        self.backend = backend
        self.request = request
        self.bytes_up = 0
        self.bytes_down = 0
        self._backend_paused = False
        self._done = False
        context = stream.context
        self._on_close = tunnel_reporter(context.observer, context.clock, "websocket", context.client_ip,
                                         request.route_label, request.backend, request.request_id)
        swap_protocol(backend, _BackendEnd(self))
        backend.registerProducer(Throttle(StreamReading(stream)), True)  # type: ignore[attr-defined]  # TCP transports have it
        backend.resumeProducing()  # type: ignore[attr-defined]  # held paused by the pool until now
        if rest:
            self.to_client(rest)

    def to_client(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.stream.send_body(data)

    def to_backend(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.backend.write(data)

    def pause_backend(self) -> None:
        if not self._backend_paused:
            self._backend_paused = True
            self.backend.pauseProducing()  # type: ignore[attr-defined]  # TCP transports have it

    def resume_backend(self) -> None:
        if self._backend_paused and not self._done:
            self._backend_paused = False
            self.backend.resumeProducing()  # type: ignore[attr-defined]  # TCP transports have it

    def client_ended(self) -> None:
        """END_STREAM from the client: its half is done (a TCP half-close, as RFC 8441 5 says)."""
        shut: Any = getattr(self.backend, "loseWriteConnection", None)
        if shut is not None:
            shut()
        else:
            self.backend.loseConnection()

    def client_lost(self) -> None:
        if not self._done:
            self._done = True
            self.backend.loseConnection()
            self._report()

    def backend_lost(self) -> None:
        if self._done:
            return
        self._done = True
        self.stream.finish()
        self._report()

    def _report(self) -> None:
        if self._on_close is not None:
            self._on_close(self.bytes_up, self.bytes_down)
