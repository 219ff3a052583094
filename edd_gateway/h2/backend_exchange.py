"""
A client's HTTP/2 stream on a C{protocol: grpc} or C{h2c} route, relayed as
one stream of an h2c connection to the backend (L{edd_gateway.h2.backend}'s
pool, one for the whole gateway) instead of being turned into an HTTP/1.1
exchange: HEADERS, DATA and trailers both ways, RST_STREAM both ways, and
C{grpc-status} passed on untouched.

Routing, the 421 check and the limits are the HTTP/1.1 code's as for any
stream (L{edd_gateway.http.routing.route_request} hands such a route to
L{H2BackendRelay}); only the job differs.  Flow control is backpressure both
ways: the client's DATA are taken off its stream (and so acknowledged to it)
only while the backend stream's window has room (L{request_window_closed}
pauses the stream's reading), and the backend's DATA are acknowledged to it
only once the client stream's window has let them out (the stream's
throttle, paused while its bytes wait for a window).  A slow client stalls
its own backend stream, never the backend connection's other streams.

The gateway's own answers on these streams (no backend, a timeout) are
gRPC-shaped for gRPC calls (L{edd_gateway.h2.grpc_status}), its usual pages
otherwise.
"""

from __future__ import annotations

from typing import Any, Protocol

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.h2.backend import BackendStream, BackendStreamListener
from edd_gateway.h2.backend_head import backend_request_headers, client_response_head
from edd_gateway.h2.grpc_status import grpc_answer, grpc_code, grpc_timeout, is_grpc
from edd_gateway.h2.request import malformed_trailers
from edd_gateway.h2.stream import H2Stream
from edd_gateway.http.clientside import ClientSide
from edd_gateway.http.errors import GatewayError, render_error
from edd_gateway.http.flow import Throttle
from edd_gateway.http.headers import BODY_NONE, RequestInfo
from edd_gateway.http.record import RequestRecordFields
from edd_gateway.routes.model import Route, Target

Headers = list[tuple[bytes, bytes]]

__all__ = ["BackendExchange", "H2BackendRelay", "StreamOpener"]

log = Logger()


class StreamOpener(Protocol):
    """What the relay needs of the h2c backend pool (L{edd_gateway.h2.backend.H2BackendPool})."""

    def open_stream(self, target: Target, headers: Headers, listener: BackendStreamListener, timeout: float,
                    end_stream: bool = False) -> Deferred[BackendStream]: ...


class H2BackendRelay:
    """What the HTTP side calls for a request on an HTTP/2-backend route (C{ClientContext.http2_relay})."""

    def __init__(self, pool: StreamOpener) -> None:
        self.pool = pool

    def __call__(self, client: ClientSide, info: RequestInfo, route: Route, path_and_query: bytes) -> BackendExchange:
        if not isinstance(client, H2Stream):
            raise GatewayError(505, f"The site {route.host}{route.path} is served over HTTP/2 only.")
        return BackendExchange(client, info, route, path_and_query, self.pool)


class _BackendReading:
    """
    The backend stream's reading as the transport the client stream's
    L{Throttle} pauses: paused, its DATA are not acknowledged to the backend.
    """

    __slots__ = ("exchange", "producer")

    def __init__(self, exchange: BackendExchange) -> None:
        self.exchange = exchange
        self.producer: Any = None

    def pauseProducing(self) -> None:
        pass  # the exchange reads the throttle's flag as its DATA come

    def resumeProducing(self) -> None:
        self.exchange.client_window_open()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        raise NotImplementedError("a backend stream's reading produces for nobody")

    def unregisterProducer(self) -> None:
        pass


class BackendExchange(RequestRecordFields):
    """One client stream and its backend stream: the client side's L{Job}, the backend stream's listener."""

    info: RequestInfo
    route: Route

    def __init__(self, stream: H2Stream, info: RequestInfo, route: Route, path_and_query: bytes,
                 pool: StreamOpener) -> None:
        self.stream = stream
        context = self.context = stream.context
        self.info, self.route, self.pool = info, route, pool
        self.grpc = route.protocol == "grpc" or is_grpc(info.headers)
        self.head = backend_request_headers(info, path_and_query, context.client_ip, context.scheme,
                                            context.trusted_peer)
        self.upstream: BackendStream | None = None
        self.request_done = info.body == BODY_NONE
        self.keep_alive = True
        self.finished = False
        self.status = 0
        #: The call's status as the backend (or the gateway) gave it, for the access log; "" for none.
        self.grpc_status = ""
        self.bytes_in = self.bytes_out = 0
        self.started = context.clock.seconds()
        self.responded: float | None = None
        self.completed = True
        self._request_trailers: Headers | None = None
        self._response_trailers: Headers | None = None
        #: Response bytes passed to the client stream but not acknowledged to the backend (its window spent).
        self._unacknowledged = 0
        self._throttle: Throttle | None = None
        self._timer: IDelayedCall | None = None
        #: END_STREAM went to the backend (with the HEADERS when there was no body).
        self._end_sent = self.request_done
        #: The body as sent, while it fits --body-buffer-size: what a stream the backend refused sends again.
        self._replay: list[bytes] | None = []
        self._retried = False

    # The client side (Job)

    def start(self) -> None:
        if not self.request_done:
            self.stream.pause_reading()  # the body waits in the client's window until the backend stream opens
        timeout = self.route.connect_timeout or self.context.settings.connect_timeout
        opened = self.pool.open_stream(self.route.target, self.head, self, timeout, end_stream=self._end_sent)
        opened.addCallbacks(self._opened, self._not_opened)

    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        replay = self._replay
        if replay is not None:
            replay.append(data)
            if self.bytes_in > self.context.settings.body_buffer_size:
                self._replay = None
        if self.upstream is not None:
            self.upstream.send_data(data)

    def request_trailers(self, headers: Headers) -> None:
        """The client's trailers: sent when its request ends, unless malformed (h2's own checks are off)."""
        problem = malformed_trailers(headers)
        if problem is None:
            self._request_trailers = headers
            return
        log.info("h2: {client} sent malformed trailers on stream {stream} ({problem}); RST_STREAM PROTOCOL_ERROR",
                 client=self.context.client_ip, stream=self.stream.stream_id, problem=problem)
        self.context.admission.garbage(self.context.client_ip)
        self.stream.reset(int(ErrorCodes.PROTOCOL_ERROR))
        self.client_lost()  # the backend stream is reset too

    def request_complete(self) -> None:
        self.request_done = True
        self.stream.body_complete()
        if self.upstream is not None:
            self._end_request(self.upstream)

    def _end_request(self, backend: BackendStream) -> None:
        if self._end_sent:
            self._await_response()
            return
        self._end_sent = True
        try:
            backend.end_request(self._request_trailers)
        except ProtocolError as problem:
            backend.reset(ErrorCodes.PROTOCOL_ERROR)
            self._failed(400, f"The request's trailers cannot be sent over HTTP/2 ({problem}).")
            return
        self._await_response()

    def client_lost(self) -> None:
        """The client reset its stream (or its connection went): the backend's stream is reset too."""
        if self.finished:
            return
        self._end()
        self.completed = False
        if self.upstream is not None:
            self.upstream.reset(ErrorCodes.CANCEL)
        self._report()

    def client_window_open(self) -> None:
        """The client stream's window let out what waited: the backend may send as much more."""
        unacknowledged, self._unacknowledged = self._unacknowledged, 0
        if self.upstream is not None and unacknowledged:
            self.upstream.consumed(unacknowledged)

    # Opening the backend stream

    def _opened(self, backend: BackendStream) -> None:
        if self.finished:
            backend.reset(ErrorCodes.CANCEL)
            return
        self.upstream = backend
        if self._retried:
            for data in self._replay or ():
                backend.send_data(data)
        self._throttle = self.stream.throttle_backend(_BackendReading(self))
        # From now on only silence bounds the stream (--websocket-idle-timeout): a gRPC stream may stay open long.
        self.stream.response_started()
        if self.request_done:
            self._end_request(backend)
        else:
            self.stream.resume_reading()

    def _not_opened(self, failure: Failure) -> None:
        if self.finished:
            return
        problem = failure.value
        if not isinstance(problem, GatewayError):
            log.failure("h2c: opening a stream to {target} failed", failure, target=str(self.route.target))
            problem = GatewayError(502, f"The backend {self.route.target} could not be reached over HTTP/2.")
        if problem.status == 504:
            self.stream.limit_hit("backend-connect-timeout")
        self._failed(problem.status, problem.detail)

    def _await_response(self) -> None:
        if self.responded is None and self._timer is None and not self.finished:
            timeout = self._response_timeout()
            self._timer = self.context.clock.callLater(timeout, self._response_timed_out, timeout)

    def _response_timeout(self) -> float:
        """
        The route's response timeout; else, for a gRPC call with a deadline
        (C{grpc-timeout}), that deadline: a server answers a unary call only
        once it is done, and a call the client allows five minutes must not
        be cut at the gateway's default (a little later than the deadline,
        so that the backend's own DEADLINE_EXCEEDED comes first), bounded by
        --websocket-idle-timeout; else the gateway's default.
        """
        settings = self.context.settings
        if self.route.response_timeout is not None:
            return self.route.response_timeout
        deadline = grpc_timeout(self.info.headers) if self.grpc else None
        if deadline is not None:
            return min(deadline + 1.0, settings.websocket_idle_timeout)
        return settings.response_timeout

    def _response_timed_out(self, timeout: float) -> None:
        self._timer = None
        if self.finished or self.responded is not None:
            return
        self.stream.limit_hit("backend-response-timeout")
        if self.upstream is not None:
            self.upstream.reset(ErrorCodes.CANCEL)
        self._failed(504, f"The backend {self.route.target} did not answer in {timeout:g}s.")

    # The backend stream (BackendStreamListener)

    def response_headers(self, headers: Headers) -> None:
        if self.finished:
            return
        self._stop_timer()
        self._replay = None  # answered: never sent again
        self.responded = self.context.clock.seconds()
        status = dict(headers).get(b":status", b"")
        self.status = int(status) if status.isdigit() else 0  # h2 checked it is there, not that it is a number
        self._note_grpc_status(headers)
        self.stream.send_head(client_response_head(headers, self.route.edits_for(self.context.scheme),
                                                   self.info.request_id))

    def response_data(self, data: bytes) -> None:
        if self.finished or not data:
            return
        self.bytes_out += len(data)
        self.stream.send_body(data)
        throttle = self._throttle
        if throttle is not None and throttle.paused:
            self._unacknowledged += len(data)
        elif self.upstream is not None:
            self.upstream.consumed(len(data))

    def response_trailers(self, headers: Headers) -> None:
        self._response_trailers = headers
        self._note_grpc_status(headers)

    def response_ended(self) -> None:
        if self.finished:
            return
        self._end()
        if not self._end_sent and self.upstream is not None:
            # The client's stream ends with the response (RST_STREAM NO_ERROR for the rest of its request,
            # RFC 9113 8.1): the backend stream's request side would stay open, its slot held, for good.
            self.upstream.reset(ErrorCodes.CANCEL)
        self._report()
        self.stream.finish(self._response_trailers)

    def response_reset(self, error_code: int) -> None:
        if self.finished:
            return
        if self.responded is None and error_code == ErrorCodes.REFUSED_STREAM:
            if self._retried or self._replay is None:
                self._failed(503, f"The backend {self.route.target} refused the stream.")
            else:
                self._retry()
            return
        self._cut_off(error_code)

    def _retry(self) -> None:
        """
        The backend refused the stream unprocessed (RFC 9113 8.7: its GOAWAY
        came first): sent once more, on another connection, whatever the
        method, with the body kept so far; the client's further DATA wait meanwhile.
        """
        self._retried = True
        self.upstream = None
        self._end_sent = self.info.body == BODY_NONE
        self.start()

    def backend_lost(self, detail: str) -> None:
        if self.finished:
            return
        if self.responded is None:
            self._failed(502, detail)
        else:
            log.info("h2c: {detail} (stream {stream} of {client})", detail=detail,
                     stream=self.stream.stream_id, client=self.context.client_ip)
            self._cut_off(ErrorCodes.INTERNAL_ERROR)

    def request_window_closed(self) -> None:
        self.stream.pause_reading()

    def request_window_open(self) -> None:
        if not self.finished:
            self.stream.resume_reading()

    # Ending

    def _failed(self, status: int, detail: str) -> None:
        """The gateway's own answer (gRPC-shaped for a gRPC call), or RST_STREAM once the response has begun."""
        if self.finished:
            return
        if self.responded is not None:
            self._cut_off(ErrorCodes.INTERNAL_ERROR)
            return
        self._end()
        request_id = self.info.request_id
        log.info("h2c: {status} to {client} for {method} {host}: {detail}", status=status,
                 client=self.context.client_ip, method=self.info.method.decode("latin-1"),
                 host=(self.info.host or b"-").decode("latin-1"), detail=detail)
        if self.grpc:
            self.status = 200
            answer = grpc_answer(status, detail, request_id)
            self.grpc_status = str(grpc_code(status))
        else:
            self.status = status
            answer = render_error(status, detail, request_id)
        self._report()
        self.stream.write(answer)
        self.stream.finish()

    def _cut_off(self, error_code: int) -> None:
        """The response cannot end well: the client's stream is reset with the backend's code."""
        self._end()
        self.completed = False
        self._report()
        self.stream.reset(error_code)

    def _end(self) -> None:
        """
        Nothing more goes to or comes from the backend stream: the response
        timer stopped, and the bytes still waiting for the client's window
        acknowledged at once.  They count against the backend connection's
        window too, which its other streams share: a client that leaves (or a
        response whose last frame goes out with END_STREAM, so that the
        stream's throttle is never resumed) must not shrink it for good.
        """
        self.finished = True
        self._stop_timer()
        self.client_window_open()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _note_grpc_status(self, headers: Headers) -> None:
        for name, value in headers:
            if name == b"grpc-status":
                self.grpc_status = value.decode("latin-1")
