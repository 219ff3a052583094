"""
One h2c (HTTP/2 cleartext) connection to a backend, L{H2BackendProtocol}
(the C{h2} library's client state machine), and the streams it carries,
L{BackendStream}, each reporting to the client-facing stream it serves
through L{BackendStreamListener}.  L{edd_gateway.h2.backend} pools them.

Memory stays flat both ways through HTTP/2 flow control: response bytes are
acknowledged to the backend only once the caller says they were passed on
(L{BackendStream.consumed}), and request bytes beyond the backend's window
(or a full socket buffer) are held while the caller is told to stop.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, Event, RemoteSettingsChanged, ResponseReceived,
                       StreamEnded, StreamReset, TrailersReceived, WindowUpdated)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from h2.utilities import HeaderValidationFlags, normalize_outbound_headers, validate_outbound_headers
from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.h2.backend_h2 import backend_h2
from edd_gateway.net.transport import set_no_delay
from edd_gateway.routes.model import Target

__all__ = ["BackendStream", "BackendStreamListener", "ConnectionOwner", "H2BackendProtocol", "Headers", "checked"]

Headers = list[tuple[bytes, bytes]]
log = Logger()

#: What a response stream may have unacknowledged (SETTINGS_INITIAL_WINDOW_SIZE): the most a slow client makes
#: the gateway hold per stream, and enough for a gRPC stream at full speed.
STREAM_WINDOW = 1 << 20
_REQUEST = HeaderValidationFlags(is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False)
_TRAILERS = _REQUEST._replace(is_trailer=True)


class BackendStreamListener(TypingProtocol):
    """
    What a backend stream reports to the client-facing stream it serves.  Exactly one of C{response_ended},
    C{response_reset} and C{backend_lost} ends it; nothing is reported after that, nor after L{BackendStream.reset}.
    """

    def response_headers(self, headers: Headers) -> None: ...
    def response_data(self, data: bytes) -> None: ...
    def response_trailers(self, headers: Headers) -> None: ...
    def response_ended(self) -> None: ...
    def response_reset(self, error_code: int) -> None: ...
    def backend_lost(self, detail: str) -> None: ...
    def request_window_closed(self) -> None: ...
    def request_window_open(self) -> None: ...


def checked(headers: Headers, flags: HeaderValidationFlags = _REQUEST) -> Headers:
    """
    C{headers} normalised (names lower-cased, connection-specific fields dropped) and validated as h2 would
    while sending them, or L{ProtocolError}.  Before h2 sees them: h2 validates lazily, inside its HPACK encoder,
    so a bad field found half-way would leave the encoder out of step with the backend's decoder for good.
    """
    return list(validate_outbound_headers(normalize_outbound_headers(headers, flags, False), flags))


class ConnectionOwner(TypingProtocol):
    """What a connection needs of its pool (L{edd_gateway.h2.backend.H2BackendPool})."""

    clock: IReactorTime
    stream_window: int

    def serve(self, target: Target) -> None: ...   # a stream slot may have come free
    def retire(self, connection: H2BackendProtocol) -> None: ...   # it takes no new stream
    def lost(self, connection: H2BackendProtocol) -> None: ...   # it is closed


class BackendStream:
    """One proxied request on a backend connection: the caller's handle on it."""

    def __init__(self, connection: H2BackendProtocol, stream_id: int, listener: BackendStreamListener) -> None:
        self.connection, self.stream_id, self.listener = connection, stream_id, listener
        #: Request bytes the windows (or a full socket buffer) do not let out yet.
        self.held = bytearray()
        self.trailers: Headers | None = None
        self.ending = self.request_done = self.window_closed = False
        #: The listener has had its last event.
        self.answered = False

    def send_data(self, data: bytes) -> None:
        """Request body bytes: sent as the windows allow, the rest held (the listener told to stop meanwhile)."""
        if not self.ending:
            self.held += data
            self.connection.flush(self)

    def end_request(self, trailers: Headers | None = None) -> None:
        """END_STREAM once the held bytes are out, on C{trailers} if given (L{ProtocolError} if they are invalid)."""
        if self.ending:
            return
        self.trailers = checked(trailers, _TRAILERS) if trailers else None
        self.ending = True
        self.connection.flush(self)

    def last_word(self) -> bool:
        """Whether the listener may still be told how the stream ended (once only)."""
        first, self.answered = not self.answered, True
        return first

    def consumed(self, n: int) -> None:
        """C{n} response bytes were passed on: the backend may send as much more."""
        self.connection.acknowledge(self.stream_id, n)

    def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM: the client went away.  The listener hears nothing more."""
        self.connection.reset(self, error_code)


@implementer(IPushProducer)
class H2BackendProtocol(Protocol):
    """One h2c connection to a backend; the producer its transport pauses when the socket buffer is full."""

    def __init__(self, pool: ConnectionOwner, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.streams: dict[int, BackendStream] = {}
        self.h2: H2Connection | None = None
        #: The backend's GOAWAY came, or the pool closes this: no new stream.
        self.closing = False
        self.paused = False
        self.idle_since = pool.clock.seconds()
        #: Until the backend's SETTINGS come, its stream limit is unknown: one stream only.
        self._settings_seen = False
        self._send_call: IDelayedCall | None = None

    # Protocol

    def connectionMade(self) -> None:
        self.h2 = backend_h2(self.pool.stream_window)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]  # TCP transports have it
        # Before the preface, as the HTTP/1.1 side does: a turn's frames leave
        # in one write, and Nagle would hold the next turn's behind its ACK.
        set_no_delay(self.transport)
        self._send()

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is None:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as problem:
            self._protocol_error(problem)
            return
        for event in events:
            self._event(event)
        self._send()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        if reason.check(error.ConnectionDone):
            detail = f"The backend {self.target} closed its HTTP/2 connection with the response unfinished."
        else:
            detail = f"The HTTP/2 connection to the backend {self.target} was lost ({reason.getErrorMessage()})."
        self._abandon(detail)

    # Events

    def _event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._data(event.stream_id or 0, event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, (ResponseReceived, TrailersReceived)):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and not stream.answered:
                # Names lower-cased and checked by h2, and bytes (header_encoding=None).
                headers = event.headers or []
                if isinstance(event, ResponseReceived):
                    stream.listener.response_headers(headers)
                else:
                    stream.listener.response_trailers(headers)
        elif isinstance(event, StreamEnded):
            self._response_ended(event.stream_id or 0)
        elif isinstance(event, StreamReset):
            self._reset_by_backend(event.stream_id or 0, int(event.error_code or 0))
        elif isinstance(event, WindowUpdated):
            self._flush_opened(event.stream_id or 0)
        elif isinstance(event, RemoteSettingsChanged):
            self._settings_seen = True
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._flush_opened()
            self.pool.serve(self.target)
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event)
        # Informational (1xx) responses are dropped: gRPC sends none, and the client-facing side asked for none.

    def _flush_opened(self, stream_id: int = 0) -> None:
        """Send what a window opened on C{stream_id} lets out (0: the connection's, so every stream's)."""
        for stream in list(self.streams.values()):
            if stream_id in (0, stream.stream_id):
                self.flush(stream)

    def _data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered:
            self.acknowledge(stream_id, flow_controlled)  # nobody will consume them
            return
        # Padding is never passed on, so it is acknowledged at once.
        self.acknowledge(stream_id, flow_controlled - len(data))
        stream.listener.response_data(data)

    def _response_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.last_word():
            return
        stream.listener.response_ended()
        if stream.request_done:
            self._finish(stream)

    def _reset_by_backend(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._finish(stream)
        # After a complete response, a reset (gRPC servers send NO_ERROR) only stops the request.
        if stream.last_word():
            stream.listener.response_reset(code)

    def _goaway(self, event: ConnectionTerminated) -> None:
        self.closing = True
        last = event.last_stream_id or 0
        if event.error_code:
            log.info("h2c: the backend {target} sent GOAWAY {code} ({data!r})", target=str(self.target),
                     code=getattr(event.error_code, "name", event.error_code), data=event.additional_data or b"")
        # Streams above last_stream_id were never processed: the caller may send them again (RFC 9113 6.8).
        for stream in [s for stream_id, s in self.streams.items() if stream_id > last]:
            self._finish(stream)
            if stream.last_word():
                stream.listener.response_reset(ErrorCodes.REFUSED_STREAM)
        self.pool.retire(self)
        if not self.streams:
            self.close()

    def _protocol_error(self, problem: ProtocolError) -> None:
        detail = f"The backend {self.target} broke the HTTP/2 protocol ({str(problem) or type(problem).__name__})."
        log.info("h2c: {detail} GOAWAY and closing", detail=detail)
        self._send()  # h2 has queued its GOAWAY
        self._abandon(detail)

    def _abandon(self, detail: str) -> None:
        """The connection is done: each unfinished stream's listener told C{detail}, once."""
        self.closing = True
        self.h2 = None
        if self._send_call is not None:
            self._send_call.cancel()
            self._send_call = None
        streams, self.streams = list(self.streams.values()), {}
        self.pool.lost(self)
        for stream in streams:
            stream.held.clear()
            if stream.last_word():
                stream.listener.backend_lost(detail)
        if self.transport is not None:
            self.transport.loseConnection()

    # Used by the pool and by streams

    def has_room(self) -> bool:
        # A connection that used the last client stream id (2**31 - 1) can take no new stream.
        if self.h2 is None or self.closing or self.h2.highest_outbound_stream_id >= (1 << 31) - 3:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams if self._settings_seen else 1
        return len(self.streams) < limit

    def open(self, headers: Headers, listener: BackendStreamListener, end_stream: bool) -> BackendStream:
        """A new stream: HEADERS with C{headers} (already L{checked}), sent at the end of this turn."""
        assert self.h2 is not None and self.has_room()
        stream = BackendStream(self, self.h2.get_next_available_stream_id(), listener)
        self.streams[stream.stream_id] = stream
        self.h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        stream.ending = stream.request_done = end_stream
        self._send_soon()
        return stream

    def flush(self, stream: BackendStream) -> None:
        """Send what the windows allow of a stream's held bytes, then its END_STREAM once they are out."""
        h2 = self.h2
        if h2 is None or self.streams.get(stream.stream_id) is not stream:
            stream.held.clear()  # reset or lost: nothing more is sent
            return
        held = stream.held
        if held and not self.paused:
            allowed = min(len(held), h2.local_flow_control_window(stream.stream_id))
            for start in range(0, allowed, h2.max_outbound_frame_size):
                h2.send_data(stream.stream_id, bytes(held[start:min(start + h2.max_outbound_frame_size, allowed)]))
            del held[:allowed]
            self._send_soon()
        if held:
            if not stream.window_closed:
                stream.window_closed = True
                stream.listener.request_window_closed()
            return
        if stream.ending and not stream.request_done:
            stream.request_done = True
            if stream.trailers:
                h2.send_headers(stream.stream_id, stream.trailers, end_stream=True)
            else:
                h2.end_stream(stream.stream_id)
            self._send_soon()
            if stream.answered:
                self._finish(stream)
        if stream.window_closed:
            stream.window_closed = False
            stream.listener.request_window_open()

    def acknowledge(self, stream_id: int, length: int) -> None:
        if self.h2 is not None and length > 0:
            self.h2.acknowledge_received_data(length, stream_id)
            self._send_soon()

    def reset(self, stream: BackendStream, code: int) -> None:
        stream.held.clear()
        if self.h2 is None or self.streams.get(stream.stream_id) is not stream:
            return
        stream.answered = True
        self.h2.reset_stream(stream.stream_id, code)
        self._send_soon()
        self._finish(stream)

    def close(self) -> None:
        """GOAWAY, then close: idle for too long, or the pool is stopping."""
        if self.h2 is not None:
            self.closing = True
            self.h2.close_connection()
            self._send()
            self.h2 = None  # nothing more is read or sent; streams still open hear at connectionLost
        if self.transport is not None:
            self.transport.loseConnection()

    def _finish(self, stream: BackendStream) -> None:
        """A stream is over both ways (or reset): its slot is free."""
        self.streams.pop(stream.stream_id, None)
        stream.held.clear()
        if self.streams:
            self.pool.serve(self.target)
        elif self.closing:
            self.close()
        else:
            self.idle_since = self.pool.clock.seconds()
            self.pool.serve(self.target)

    def _send_soon(self) -> None:
        """Send at the end of this turn: a request's HEADERS, DATA and END_STREAM leave in one write."""
        if self._send_call is None:
            self._send_call = self.pool.clock.callLater(0, self._send)

    def _send(self) -> None:
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()  # sent now, by dataReceived's end
        self._send_call = None
        if self.h2 is not None and self.transport is not None:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    # IPushProducer: the backend's socket buffer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush_opened()

    def stopProducing(self) -> None:
        pass
