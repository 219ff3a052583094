"""
One client connection speaking HTTP/2 (negotiated by ALPN on terminated
TLS): the C{h2} library's state machine, fed the client's bytes and asked
for the frames to send, with one L{H2Stream} per request.

Each stream is answered by the HTTP/1.1 code (routing, limits, the backend
pool, the access log): this module only turns frames into stream events and
stream writes into frames, within the windows the client grants.  What C{h2}
does not bound one frame at a time, L{FrameGuard} does, before C{h2} reads
the bytes.
"""

from __future__ import annotations

from dataclasses import replace

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.h2.backend_exchange import BackendExchange
from edd_gateway.h2.framing import FramingConnection
from edd_gateway.h2.hpack_in import RepeatingBlockDecoder
from edd_gateway.h2.hpack_out import StaticTableEncoder
from edd_gateway.h2.guard import FrameGuard, Violation
from edd_gateway.h2.settings import CONNECTION_WINDOW, H2Settings, code_name
from edd_gateway.h2.job import job_for
from edd_gateway.h2.request import H1View, H2RequestError, Malformed, h1_view
from edd_gateway.h2.stream import H2Stream
from edd_gateway.http.clientside import ClientContext, ContextSource
from edd_gateway.http.deadline import Deadline, DeadlineGroup
from edd_gateway.net.transport import set_no_delay

__all__ = ["H2ServerProtocol", "H2Settings"]

log = Logger()

@implementer(IPushProducer)
class H2ServerProtocol(Protocol):
    """One HTTP/2 client connection; the producer its transport pauses when the socket is full."""

    def __init__(self, factory: ContextSource, settings: H2Settings, protocol: str = "h2") -> None:
        self.factory = factory
        self.settings = settings
        self.protocol = protocol  # the access log's proto=: h2, or h2c with prior knowledge (plain port)
        self.streams: dict[int, H2Stream] = {}
        self.closing = False
        self.paused = False
        #: A stream has been opened: the connection is in use (metrics count it once).
        self._used = False
        #: Within dataReceived: frames are sent once at its end.
        self._receiving = False
        self._send_call: IDelayedCall | None = None
        #: Streams with frames to send at the end of the turn, in the order they became ready.
        self._ready: dict[H2Stream, None] = {}
        self.client_ip = ""
        self.context: ClientContext
        self.h2: FramingConnection

    # Connection

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        host = getattr(transport.getPeer(), "host", "")
        self.client_ip = host[7:] if host.startswith("::ffff:") else host
        self.context = replace(self.factory.context_for(transport, self.client_ip), protocol=self.protocol)
        proxy = self.context.settings
        # Outbound headers are not validated again: they are llhttp's
        # reading of the response (names lower-cased, connection-specific
        # fields dropped, no CR or LF), and h2's checks cost a fifth of a
        # request's time.  Inbound ones are checked by h1_view, in the pass
        # that reads them (RFC 9113 8.1.1's stream error, not h2's
        # connection error, and a tenth of a request cheaper).
        self.h2 = FramingConnection(H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False, normalize_inbound_headers=False))
        # In force from the start (not "pending until acknowledged", as an
        # update would be): h2 enforces its own local settings.
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.settings.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: self.settings.initial_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: proxy.max_header_bytes,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
        })
        # h2 gives its HPACK decoder the bound only once a changed setting
        # is acknowledged; these are in force from the start.
        self.h2.decoder = RepeatingBlockDecoder(proxy.max_header_bytes)
        self.h2.encoder = StaticTableEncoder()  # type: ignore[assignment]  # duck-typed: h2 calls encode() and sets header_table_size
        self.h2.initiate_connection()
        # The connection's window starts at 64 KiB whatever SETTINGS say: a
        # few streams' uploads would share that.  DATA are acknowledged only
        # as they are passed on, so a larger window costs no memory unless used.
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.guard = FrameGuard(self.settings.guard, self.context.clock.seconds)
        self.deadline = Deadline(self.context.clock, self._idle)
        self.stream_deadlines = DeadlineGroup(self.context.clock)  # the streams': one timer, none per request
        self.deadline.set(proxy.keepalive_timeout)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]  # TCP and TLS transports have it
        set_no_delay(transport)
        self._send()

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is None:
            return
        violation = self.guard.feed(data)
        if violation is not None:
            self._calm_down(violation)
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as problem:
            self._protocol_error(problem)
            return
        self._receiving = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._receiving = False
        self._send()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.closing = True
        if self._send_call is not None:
            self._send_call.cancel()
            self._send_call = None
        self.deadline.release()
        for stream in list(self.streams.values()):
            stream.connection_lost()
        self.streams.clear()
        self.stream_deadlines.cancel()
        self.h2 = None  # type: ignore[assignment]  # dropped once done: nothing reads it after the close

    # Events

    def _event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.received(event.data, event.flow_controlled_length)
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended()
        elif isinstance(event, WindowUpdated):
            self._window_opened(event.stream_id)
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)  # only a relay to an HTTP/2 backend passes them on
            if stream is not None and isinstance(stream.job, BackendExchange):
                stream.job.request_trailers(event.headers)
        elif isinstance(event, RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_opened(0)
        elif isinstance(event, StreamReset):
            self._note("reset-received", code_name(event.error_code))
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_by_client()
        elif isinstance(event, ConnectionTerminated):
            # The client's GOAWAY: no new stream; the open ones finish.
            self.closing = True
            if not self.streams:
                self._close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        view: H1View | H2RequestError
        try:
            view = h1_view(headers, ended)
        except Malformed as problem:
            log.info("h2: {client} sent a malformed request on stream {stream} ({problem}); RST_STREAM "
                     "PROTOCOL_ERROR", client=self.client_ip, stream=stream_id, problem=str(problem))
            self.context.admission.garbage(self.client_ip)
            self.reset_stream(stream_id, int(ErrorCodes.PROTOCOL_ERROR))
            return
        except H2RequestError as problem:
            view = problem
        stream = H2Stream(self, stream_id, request_ended=ended)
        self.streams[stream_id] = stream
        if not self._used:
            # Counted apart from TLS connections: browsers open spare
            # connections that never carry a request (preconnects).
            self._used = True
            self._note("connection", "-")
        self._note("stream", "-")
        self.deadline.clear()
        if self.closing:
            stream.reset(int(ErrorCodes.REFUSED_STREAM))
            return
        stream.start_job(job_for(stream, view, headers, self.client_ip))

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.window_opened()
            return
        for stream in list(self.streams.values()):
            stream.window_opened()

    # What streams ask

    def stream_ready(self, stream: H2Stream) -> None:
        """C{stream} has frames to send: they go at the end of this turn (L{_send})."""
        self._ready[stream] = None
        self._send_soon()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        self.h2.send_response_head(stream_id, headers, end_stream=end_stream)
        self._send_soon()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """
        Send what the windows allow of C{data} now (with END_STREAM when
        C{end_stream} and all of it goes); how many bytes went.
        """
        if self.paused or self.h2 is None:
            return 0
        h2 = self.h2
        allowed = min(len(data), h2.local_flow_control_window(stream_id))
        frame = h2.max_outbound_frame_size
        sent = 0
        while sent < allowed:
            size = min(frame, allowed - sent)
            h2.send_data_frame(stream_id, data[sent:sent + size],
                               end_stream=end_stream and sent + size == len(data))
            sent += size
        if sent:
            self._send_soon()
        return sent

    def end_stream(self, stream_id: int) -> None:
        """The response is done (an empty DATA frame with END_STREAM)."""
        if self.h2 is None:
            return
        self.h2.end_stream(stream_id)
        self._send_soon()

    def reset_stream(self, stream_id: int, code: int, note: bool = True) -> None:
        if self.h2 is None:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except StreamClosedError:
            return
        if note:
            self._note("reset-sent", code_name(code))
        self._send_soon()

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Open the windows again by C{length}: the client may send that much more."""
        if self.h2 is None or not length:
            return
        # A closed stream's bytes still count against the connection's
        # window: h2 then opens only that one.
        self.h2.acknowledge_received_data(length, stream_id)
        self._send_soon()

    def stream_closed(self, stream: H2Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.streams or self.h2 is None:
            return
        if self.closing:
            self._close()
        else:
            self.deadline.set(self.context.settings.keepalive_timeout)

    # Ending

    def drain(self) -> None:
        """The gateway is stopping: GOAWAY now, then close once the streams in flight have finished."""
        if self.closing or self.h2 is None:
            return
        self.closing = True
        self._send()
        # Written by hand: h2's close_connection moves its state machine to
        # CLOSED, after which the streams in flight could send nothing more.
        # New streams are refused by C{closing} instead.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self.transport.write(goaway.serialize())  # type: ignore[union-attr]  # connected
        self._note("goaway-sent", "NO_ERROR")
        if not self.streams:
            self._close()

    def _idle(self) -> None:
        if self.streams:
            return
        self.context.admission.hit("idle", self.client_ip)
        self.drain()

    def _calm_down(self, violation: Violation) -> None:
        log.info("h2: {client} {detail}; GOAWAY ENHANCE_YOUR_CALM and closing", client=self.client_ip,
                 detail=violation.detail)
        self.context.admission.hit(violation.limit, self.client_ip)
        self._abandon(ErrorCodes.ENHANCE_YOUR_CALM)

    def _protocol_error(self, problem: ProtocolError) -> None:
        code = code_name(getattr(problem, "error_code", ErrorCodes.PROTOCOL_ERROR))
        log.info("h2: {client} broke the protocol ({problem}); GOAWAY {code} and closing",
                 client=self.client_ip, problem=str(problem) or type(problem).__name__, code=code)
        self._note("goaway-sent", code)
        self.context.admission.garbage(self.client_ip)
        # h2 has queued its GOAWAY already.
        self._send()
        self._abandon(None)

    def _abandon(self, code: ErrorCodes | None) -> None:
        self.closing = True
        if code is not None:
            try:
                self.h2.close_connection(code)
            except ProtocolError:
                pass
            self._note("goaway-sent", code.name)
            self._send()
        for stream in list(self.streams.values()):
            stream.connection_lost()
        self.h2 = None  # type: ignore[assignment]  # no frame is read or sent after this
        self._close()

    def _note(self, event: str, code: str) -> None:
        observer = self.context.observer
        if observer is not None:
            observer.http2(event, code)

    def _close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.loseConnection()

    def _send_soon(self) -> None:
        """
        Send what is queued at the end of this turn of the reactor: a
        response's HEADERS, DATA and END_STREAM (and the other streams'
        frames of the same turn) leave in one TLS record and one system
        call instead of one each.  Inside L{dataReceived}, its own end sends.
        """
        if self._receiving or self._send_call is not None:
            return
        self._send_call = self.context.clock.callLater(0, self._send)

    def _send(self) -> None:
        if self._send_call is not None:
            if self._send_call.active():
                self._send_call.cancel()
            self._send_call = None
        h2 = self.h2
        if h2 is None:
            return
        # Inside, the streams' sends queue frames for the write just below.
        receiving, self._receiving = self._receiving, True
        try:
            while self._ready:
                ready, self._ready = self._ready, {}
                for stream in ready:
                    stream.flush()
        finally:
            self._receiving = receiving
        data = h2.data_to_send()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]  # connected

    # IPushProducer: the client's socket buffer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._window_opened(0)

    def stopProducing(self) -> None:
        pass


