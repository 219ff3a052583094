"""
One HTTP/2 stream as the L{ClientSide} of the exchange that answers it.

The exchange (or the gateway's own answer) is the HTTP/1.1 code's: it sees
this stream's L{ClientContext} (the connection's) and writes its response as
HTTP/1.1 bytes, which L{ResponseReframer} turns into HEADERS and DATA.  The
stream is also the exchange's L{Flow}: "queued" means response bytes held
for a spent flow-control window, and "reading paused" means the client's
DATA are no longer acknowledged, so that a slow stream stalls its own
backend and never the connection's other streams.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger

from edd_gateway.http.clientside import ClientContext, Job, TunnelledRequest
from edd_gateway.http.exchange import Exchange
from edd_gateway.http.flow import FlowTransport, Throttle
from edd_gateway.h2.reframe import CONNECTION_SPECIFIC, Headers, ResponseReframer
from edd_gateway.h2.response_fields import response_fields
from edd_gateway.http.response_head import Special
from edd_gateway.routes.model import HeaderEdits
from edd_gateway.h2.tunnel import StreamReading, StreamTunnel

if TYPE_CHECKING:
    from edd_gateway.h2.server import H2ServerProtocol

__all__ = ["H2Stream"]

log = Logger()

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, CANCEL = 0x0, 0x1, 0x2, 0x8


class StreamPhase(Enum):
    """Which deadline a stream is under (as L{edd_gateway.http.phase.Phase} for a connection)."""

    BODY = "body"
    WAITING = "waiting"
    BUSY = "busy"
    STREAMING = "streaming"


class H2Stream:
    """A request stream: its job, its request body in, its response out."""

    #: A producer is registered for every exchange: this flow pauses it itself.
    register_at_once = True

    def __init__(self, connection: H2ServerProtocol, stream_id: int, *, request_ended: bool = False) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.context: ClientContext = connection.context
        self.job: Job | None = None
        #: Made when HTTP/1.1 bytes first come (the gateway's own answers): a proxied head comes as fields.
        self.reframer: ResponseReframer | None = None
        self._out: deque[bytes] = deque()
        self._ending = False
        self._pending_head: Headers | None = None
        #: The exchange's final head came as fields (L{final_head}): what it writes next is body.
        self._head_taken = False
        #: Sent with END_STREAM after the body (an h2c backend's, L{edd_gateway.h2.backend_exchange}).
        self._trailers: Headers | None = None
        self.closed = False
        #: The client's DATA not yet delivered (reading paused): bytes and their flow-controlled size.
        self._held: deque[tuple[bytes, int]] = deque()
        #: END_STREAM came from the client (with the HEADERS when there is no body: nothing to tell the job).
        self._request_ended = request_ended
        self._end_told = request_ended
        self.paused = False
        self._backend_throttle: Throttle | None = None
        self.tunnel: StreamTunnel | None = None
        self.deadline = connection.stream_deadlines.deadline(self._deadline_passed)
        self.phase = StreamPhase.BUSY
        self._moved = False

    @property
    def flow(self) -> H2Stream:
        return self

    # What the connection feeds it

    def received(self, data: bytes, flow_length: int) -> None:
        if self.paused or self._held:
            self._held.append((data, flow_length))
            return
        self._deliver(data, flow_length)

    def _deliver(self, data: bytes, flow_length: int) -> None:
        self._moved = True
        if self.tunnel is not None:
            self.tunnel.to_backend(data)
        elif self.job is not None and data:
            self.job.request_body(data)
        if not self.closed:
            self.connection.acknowledge(self.stream_id, flow_length)

    def request_ended(self) -> None:
        self._request_ended = True
        if self._held or self._end_told:
            return
        self._end_told = True
        if self.tunnel is not None:
            self.tunnel.client_ended()
        elif self.job is not None:
            self.job.request_complete()

    def reset_by_client(self) -> None:
        """RST_STREAM from the client: the job loses its client, the stream is gone."""
        job, tunnel = self.job, self.tunnel
        self._gone()
        if tunnel is not None:
            tunnel.client_lost()
        elif job is not None and not job.finished:
            job.client_lost()

    def connection_lost(self) -> None:
        self.reset_by_client()

    def window_opened(self) -> None:
        self.flush()

    # ClientSide

    def write(self, data: bytes) -> None:
        """HTTP/1.1 response bytes from the job: re-framed; after a head taken as fields, body bytes as they are."""
        if self._head_taken:
            self._body(data)
            return
        reframer = self.reframer
        if reframer is None:
            reframer = self.reframer = ResponseReframer(self._head, self._body)
        reframer.feed(data)

    def final_head(self, status_line: bytes, plain: list[bytes], special: Special, body: int, content_length: int,
                   chunk_to_client: bool, keep_alive: bool, http11_client: bool, request_id: str,
                   upgrade: bool = False, edits: HeaderEdits | None = None) -> None:
        """A proxied response's head, taken as fields (L{response_fields}): the re-framer reads no more."""
        self._head_taken = True
        # The exchange's status line: b"HTTP/1.1 %d %b".
        self._head(int(status_line[9:12]), response_fields(plain, special, body, content_length, request_id, edits))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        held = self._held
        while held and not self.paused:
            self._deliver(*held.popleft())
        if not held and self._request_ended:
            self.request_ended()

    @property
    def closing(self) -> bool:
        return self.connection.closing

    def body_complete(self) -> None:
        if self.phase is StreamPhase.BODY:
            self.phase = StreamPhase.BUSY
            self.deadline.clear()

    def awaiting_response(self, timeout: float) -> None:
        self.phase = StreamPhase.WAITING
        self.deadline.set(timeout)

    def response_started(self) -> None:
        self.phase = StreamPhase.STREAMING
        self._moved = False
        self.deadline.set(self.context.settings.websocket_idle_timeout)

    def body_progress(self) -> None:
        # Counted where bytes really move (sent within the window, or read
        # from the client): a backend filling a spent window is no progress.
        pass

    def job_finished(self, job: Job) -> None:
        self.finish()

    def finish(self, trailers: Headers | None = None) -> None:
        """The response is all written: END_STREAM once the bytes held for the window have gone (on C{trailers})."""
        self._ending = True
        self._trailers = trailers
        self.connection.stream_ready(self)

    def abort(self) -> None:
        """A response already begun cannot be answered otherwise: reset this stream only."""
        self.reset(INTERNAL_ERROR)

    def limit_hit(self, limit: str) -> None:
        self.context.admission.hit(limit, self.context.client_ip)

    def start_tunnel(self, request: TunnelledRequest, backend: ITransport, head: bytes, rest: bytes) -> None:
        """RFC 8441: the backend's 101 is the stream's 200; DATA frames carry the WebSocket both ways."""
        self.job = None
        self.phase = StreamPhase.STREAMING
        self.connection.send_headers(self.stream_id, [(b":status", b"200"), *switched_headers(head)])
        self.tunnel = StreamTunnel(self, backend, request, rest)

    # Flow

    def queued(self) -> bool:
        return bool(self._out)

    def throttle_backend(self, backend: FlowTransport) -> Throttle:
        throttle = self._backend_throttle = Throttle(backend)
        if self._out:
            throttle.pauseProducing()
        return throttle

    def throttle_client(self, backend: FlowTransport) -> Throttle:
        throttle = Throttle(StreamReading(self))
        backend.registerProducer(throttle, True)
        return throttle

    def release(self, backend: FlowTransport, backend_throttle: Throttle | None,
                client_throttle: Throttle | None) -> None:
        if client_throttle is not None and getattr(backend, "producer", None) is not None:
            backend.unregisterProducer()
        if backend_throttle is not None:
            self._backend_throttle = None
            if backend_throttle.paused:
                backend_throttle.resumeProducing()
        if client_throttle is not None and client_throttle.paused:
            client_throttle.paused = False
            self.resume_reading()

    # Writing

    def _head(self, status: int, headers: Headers) -> None:
        if self.closed:
            return
        head = [(b":status", b"%d" % status), *headers]
        if status < 200:
            # 1xx: sent as they come, the final head follows.
            self.connection.send_headers(self.stream_id, head)
            return
        self.send_head(head)

    def _body(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._out.append(data)
        self.connection.stream_ready(self)

    def send_body(self, data: bytes) -> None:
        """Bytes for the client from outside the reframer (the tunnel's, an h2c backend's)."""
        self._body(data)

    def send_head(self, head: Headers) -> None:
        """A whole response head (C{:status} first) from outside the reframer: an h2c backend's."""
        if not self.closed:
            self._pending_head = head
            self.connection.stream_ready(self)

    def flush(self) -> None:
        """
        Send the head and what the windows allow of the body.  Called at the
        end of the reactor turn that produced them (L{H2ServerProtocol.stream_ready}),
        so that a response whose end is known by then goes out with
        END_STREAM on its last frame instead of one empty DATA frame more.
        """
        if self.closed:
            return
        out = self._out
        head, self._pending_head = self._pending_head, None
        if head is not None:
            end = self._ending and not out and self._trailers is None
            self.connection.send_headers(self.stream_id, head, end_stream=end)
            if end:
                self._ended()
                return
        while out:
            last = self._ending and len(out) == 1 and self._trailers is None
            sent = self.connection.send_data(self.stream_id, out[0], end_stream=last)
            if sent:
                self._moved = True
            if sent < len(out[0]):
                out[0] = out[0][sent:]
                break
            out.popleft()
            if last:
                self._ended()
                return
        throttle = self._backend_throttle
        if out:
            if throttle is not None and not throttle.paused:
                throttle.pauseProducing()
            if self.tunnel is not None:
                self.tunnel.pause_backend()
            return
        if throttle is not None and throttle.paused:
            throttle.resumeProducing()
        if self.tunnel is not None:
            self.tunnel.resume_backend()
        if self._ending:
            if self._trailers is not None:
                self.connection.send_headers(self.stream_id, self._trailers, end_stream=True)
            else:
                self.connection.end_stream(self.stream_id)
            self._ended()

    def _ended(self) -> None:
        """END_STREAM is sent: a request still arriving is stopped (RFC 9113 8.1, RST_STREAM NO_ERROR)."""
        self._ending = False
        if not (self._request_ended and not self._held):
            self.connection.reset_stream(self.stream_id, NO_ERROR, note=False)
        self._gone()

    def reset(self, code: int) -> None:
        if not self.closed:
            tunnel = self.tunnel
            self.connection.reset_stream(self.stream_id, code)
            self._gone()
            if tunnel is not None:
                tunnel.client_lost()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        held = self._held
        if held:
            # The client's DATA held undelivered still count against the connection's window, its other streams'.
            self.connection.acknowledge(self.stream_id, sum(length for _, length in held))
            held.clear()
        # What the stream built calls back into it: the deadline, the
        # re-framer (and its parser, which holds the re-framer), the job
        # and the tunnel (which hold the stream).  Let go of all of them so
        # that reference counting frees the stream's objects now; left in
        # cycles, they waited for the collector, whose passes over 500
        # streams in flight were a fifth of the gateway's CPU.
        self.deadline.release()
        if self.reframer is not None:
            self.reframer.close()
        self.job = None
        self.tunnel = None
        self._backend_throttle = None
        self.connection.stream_closed(self)

    # Deadlines (as the HTTP/1.1 connection's, per stream)

    def _deadline_passed(self) -> None:
        job, settings = self.job, self.context.settings
        if self.phase is StreamPhase.BODY and self._moved or self.phase is StreamPhase.STREAMING and self._moved:
            self._moved = False
            self.deadline.set(settings.body_timeout if self.phase is StreamPhase.BODY
                              else settings.websocket_idle_timeout)
        elif self.phase is StreamPhase.BODY and isinstance(job, Exchange):
            self.limit_hit("body-timeout")
            job.fail(408, f"The request body stopped arriving ({settings.body_timeout:g}s without a byte).")
        elif self.phase is StreamPhase.WAITING and isinstance(job, Exchange):
            self.limit_hit("backend-response-timeout")
            job.fail(504, f"The backend {job.target} did not answer in time.")
        elif self.phase is StreamPhase.STREAMING:
            log.info("h2: no byte moved on stream {stream} of {client} in {seconds}s; resetting it",
                     stream=self.stream_id, client=self.context.client_ip, seconds=settings.websocket_idle_timeout)
            self.limit_hit("stream-idle")
            if job is not None and not job.finished:
                job.client_lost()
            self.reset(CANCEL)

    def start_job(self, job: Job) -> None:
        self.job = job
        if not job.request_done:
            self.phase = StreamPhase.BODY
            self.deadline.set(self.context.settings.body_timeout)
        job.start()


#: What a 101 says that only HTTP/1.1's upgrade needs (RFC 8441 5: the 200 carries none of it).
_UPGRADE_ONLY = frozenset({b"sec-websocket-accept"})


def switched_headers(head: bytes) -> Headers:
    """
    The header fields of a backend's 101 head worth passing on in the
    stream's 200: the negotiated subprotocol and extensions above all
    (permessage-deflate's frames are unreadable to a client not told of it).
    """
    fields: Headers = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        if colon and name not in CONNECTION_SPECIFIC and name not in _UPGRADE_ONLY:
            fields.append((name, value.strip()))
    return fields
