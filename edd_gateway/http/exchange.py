"""
One request and its response, from the moment the request head is read to
the moment the response is finished.

The exchange pairs a client connection with a backend connection: it sends
the head, streams the request body one way and the response body the other,
with each transport registered as the producer of the other so that a slow
reader pauses the fast writer.  Errors before the response head become the
gateway's own answer; errors after it can only close the client connection.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.transport import write_now
from edd_gateway.http.clientside import ClientSide
from edd_gateway.http.errors import render_error
from edd_gateway.http.headers import BODY_CHUNKED, BODY_NONE, BODY_UNTIL_CLOSE, RequestInfo, upstream_request_head
from edd_gateway.http.response_head import Special, client_framing, interim_head
from edd_gateway.http.flow import Throttle
from edd_gateway.http.record import RequestRecordFields
from edd_gateway.http.retry import may_send_again
from edd_gateway.http.upstream import UpstreamProtocol, connect_error
from edd_gateway.routes.model import Route

__all__ = ["Exchange", "Throttle"]

log = Logger()

_CHUNK_END = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange(RequestRecordFields):
    """
    A proxied request.  Its client side (L{ClientSide}) feeds it the request;
    the backend connection feeds it the response.
    """

    # Always set here (RequestRecordFields allows None, for a refused head).
    info: RequestInfo
    route: Route

    def __init__(self, client: ClientSide, info: RequestInfo, route: Route, path_and_query: bytes) -> None:
        self.client = client
        context = self.context = client.context
        self.flow = client.flow
        self.info = info
        self.route = route
        self.target = route.target
        self.request_done = info.body == BODY_NONE
        #: The body is read (up to --body-buffer-size) before a backend
        #: connection is taken, so that a slow client holds none.
        self._buffer_first = not self.request_done and context.settings.body_buffer_size > 0 and not info.upgrade
        # The gateway answers 100 Continue itself when it reads the body
        # first, so the backend is not asked (it would answer a second one).
        self._continue_ourselves = self._buffer_first and info.expect_continue and info.http11
        self.head = upstream_request_head(
            info, path_and_query, context.client_ip, context.scheme, context.trusted_peer,
            keep_expect=not self._continue_ourselves,
        )
        self.upstream: UpstreamProtocol | None = None
        self.pending_body: list[bytes] = []
        self._buffered = 0
        self._buffering = False
        #: The body as sent, when it was sent whole: what a retry sends again.
        self._replay: list[bytes] | None = None
        self._stream_held = False
        self.response_started = False
        self.finished = False
        self.retried = False
        self.status = 0
        self._response_body = BODY_NONE
        self._chunk_to_client = False
        self.keep_alive = info.keep_alive
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = context.clock.seconds()
        self.responded: float | None = None
        self.completed = True
        self._out: list[bytes] = []
        self._awaiting = False
        self._throttle_backend: Throttle | None = None
        self._throttle_client: Throttle | None = None

    # Start: find a backend connection

    def start(self) -> None:
        if self._buffer_first and not self.request_done and self._buffered < self.context.settings.body_buffer_size:
            self._buffering = True
            if self._continue_ourselves and not self._buffered:
                self.client.write(_CONTINUE)
            return
        self._take_connection()

    def _take_connection(self, fresh: bool = False) -> None:
        """A pooled connection (unless C{fresh}), or a new one; a slot first while the body still arrives."""
        context = self.context
        pool = context.pool
        if not self.request_done and not self._stream_held:
            if not pool.take_stream(context.client_ip, self.target):
                self.client.limit_hit("body-streams")
                self.fail(429, f"Too many request bodies from {context.client_ip} are on their way to "
                               f"{self.target} at once; try again when one has arrived.")
                return
            self._stream_held = True
        connection = None if fresh else pool.checkout(self.target, self)
        if connection is not None:
            self._attach(connection)
            return
        timeout = self.route.connect_timeout or context.settings.connect_timeout
        pool.connect(self.target, timeout).addCallbacks(self._connected, self._connect_failed)

    def _release_stream(self) -> None:
        if self._stream_held:
            self._stream_held = False
            self.context.pool.release_stream(self.context.client_ip, self.target)

    def _connected(self, connection: UpstreamProtocol) -> None:
        if self.finished:
            self.context.pool.release(connection)
            return
        self._attach(connection)

    def _connect_failed(self, failure: Failure) -> None:
        if self.finished:
            return
        problem = connect_error(failure, self.target, self.context.settings.connect_timeout)
        if problem.status == 504:
            self.client.limit_hit("backend-connect-timeout")
        self.fail(problem.status, problem.detail)

    def _attach(self, connection: UpstreamProtocol) -> None:
        self.upstream = connection
        connection.begin(self, self.info.method == b"HEAD")
        transport = connection.transport
        # Each side is the producer of the other (the flow's docstring says
        # when each is registered).
        flow = self.flow
        if self.info.body != BODY_NONE or self.info.upgrade:
            self._throttle_client = flow.throttle_client(transport)
        if flow.register_at_once:
            self._throttle_backend = flow.throttle_backend(transport)
        try:
            if self.pending_body:
                if self.request_done:
                    self._replay = self.pending_body
                transport.writeSequence([self.head, *self.pending_body])
                self.pending_body = []
                self.client.resume_reading()
            else:
                write_now(transport, self.head)
        except RuntimeError as problem:
            # uvloop refuses to write on a socket it closed before Twisted
            # saw the close (the idle backend hung up): as if lost unanswered.
            self.upstream_lost(Failure(error.ConnectionLost(str(problem))))
            return
        if self.request_done:
            self._awaiting = True
            self.client.awaiting_response(self._response_timeout())

    def _response_timeout(self) -> float:
        return self.route.response_timeout or self.context.settings.response_timeout

    # Request side, fed by the client side

    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.response_started:
            self.client.body_progress()
        if self.info.body == BODY_CHUNKED:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.upstream is None:
            if self.finished:
                return
            self.pending_body.append(data)
            self._buffered += len(data)
            if not self._buffering:
                self.client.pause_reading()  # until connected
            elif self._buffered >= self.context.settings.body_buffer_size:
                # Larger than the buffer: the rest streams.
                self._buffering = False
                self.client.pause_reading()
                self._take_connection()
        else:
            self.upstream.write(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.info.body == BODY_CHUNKED:
            if self.upstream is None:
                self.pending_body.append(_CHUNK_END)
            else:
                self.upstream.write(_CHUNK_END)
        if self.info.body != BODY_NONE:
            self._release_stream()
            self.client.body_complete()
        if self._buffering:
            self._buffering = False
            self._take_connection()
            return
        if self.upstream is not None and not self.response_started and not self._awaiting:
            self._awaiting = True
            self.client.awaiting_response(self._response_timeout())

    # Response side, fed by the backend connection

    def response_head(self, status: int, reason: bytes, plain: list[bytes], special: Special) -> None:
        status_line = b"HTTP/1.1 %d %b" % (status, reason)
        if status < 200:
            if status == 101:
                self.status = status
                self._pending_upgrade_head = interim_head(status_line, plain, special, self.info.request_id,
                                                          upgrade=True)
            elif self.info.http11:
                # 1xx answers (100 Continue, 103 Early Hints) are relayed at once, ahead of a final head an HTTP/2
                # stream takes as fields (below); HTTP/1.0 clients do not know them.
                self.flow.write(interim_head(status_line, plain, special, self.info.request_id))
            return
        client = self.client
        self.responded = self.context.clock.seconds()
        self.status = status
        body, length, self._chunk_to_client, framed = client_framing(
            status, special, self.info.method == b"HEAD", self.info.http11)
        self._response_body = body
        # A declined upgrade's leftover bytes were never HTTP; a body the
        # backend answered before it all arrived (an early 413, a redirect)
        # cannot be skipped safely: either way the connection ends here.
        self.keep_alive = (self.keep_alive and framed and self.request_done and not self.info.upgrade
                           and not client.closing and not self.context.listener.draining)
        self.response_started = True
        client.response_started()
        head = client.final_head(status_line, plain, special, body, length, self._chunk_to_client, self.keep_alive,
                                 self.info.http11, self.info.request_id, False, self.route.edits_for(self.context.scheme))
        if head is None:  # an HTTP/2 stream took it as fields: the body follows as it is
            self._chunk_to_client = False
        else:
            self._out.append(head)

    def response_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client.body_progress()
        if self._chunk_to_client:
            self._out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._out.append(data)

    def flush(self) -> None:
        """
        Write what one read of the backend produced, in one send: the head
        and the first body bytes of a small answer leave together, as
        nginx sends them, instead of costing a system call each.
        """
        out = self._out
        if out:
            flow = self.flow
            flow.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self._throttle_backend is None and self.upstream is not None and flow.queued():
                self._throttle_backend = flow.throttle_backend(self.upstream.transport)

    def response_complete(self, reusable: bool) -> None:
        if self._chunk_to_client:
            self._out.append(_CHUNK_END)
        self.flush()
        upstream = self.upstream
        self._detach()
        if upstream is not None:
            if reusable and self.request_done:
                self.context.pool.release(upstream)
            else:
                self.context.pool.discard(upstream)
        self._finish()

    def response_upgraded(self, rest: bytes) -> None:
        upstream = self.upstream
        if upstream is None or self.status != 101 or not self.info.upgrade:
            self.upstream_failed("The backend switched protocols unasked.")
            return
        self._detach()
        self.flush()
        self.finished = True
        self.responded = self.context.clock.seconds()
        self._report()
        # The backend connection leaves the pool's books: the relay owns it.
        self.context.pool.lost(upstream)
        self.client.start_tunnel(self, upstream.transport, self._pending_upgrade_head, rest)

    def upstream_failed(self, detail: str) -> None:
        upstream = self.upstream
        self._detach()
        if upstream is not None:
            self.context.pool.discard(upstream)
        self.fail(502, detail)

    def upstream_lost(self, reason: Failure) -> None:
        upstream = self.upstream
        self._detach()
        if self.finished:
            return
        if self.response_started:
            if self._response_body == BODY_UNTIL_CLOSE and reason.check(error.ConnectionDone):
                # A body delimited by the close has ended.
                if self._chunk_to_client:
                    self._out.append(_CHUNK_END)
                self.flush()
                self._finish()
                return
            log.info(
                "http: backend {target} closed mid-response to {client} ({reason})",
                target=str(self.target), client=self.context.client_ip,
                reason=reason.getErrorMessage(),
            )
            self._cut_off()
            return
        if may_send_again(self.info, upstream, retried=self.retried, whole_body=self._replay is not None,
                          request_done=self.request_done):
            # Most often a pooled connection the backend closed while it
            # sat idle (the race every keep-alive proxy meets): sent again,
            # once, on a new connection, when sending twice is harmless.
            log.info("http: backend {target} closed the connection before answering {method} from {client} "
                     "({reason}); sending it again on a new connection", target=str(self.target),
                     method=self.info.method.decode("latin-1"), client=self.context.client_ip,
                     reason=reason.getErrorMessage())
            self.retried = True
            self._awaiting = False
            if self._replay is not None:
                self.pending_body = list(self._replay)
            self._take_connection(fresh=True)
            return
        self.fail(502, f"The backend {self.target} closed the connection before answering.")

    # Ending

    def fail(self, status: int, detail: str) -> None:
        """Answer with the gateway's own page, or cut the client off."""
        if self.finished:
            return
        self._let_backend_go()
        if self.response_started:
            self._cut_off()
            return
        self.status = status
        log.info("http: {status} to {client} for {method} {host}: {detail}", status=status,
                 client=self.context.client_ip, method=self.info.method.decode("latin-1"),
                 host=(self.info.host or b"-").decode("latin-1"), detail=detail)
        # A body still on its way cannot be skipped safely: close after.
        client = self.client
        self.keep_alive = self.keep_alive and self.request_done and not client.closing
        client.write(render_error(status, detail, self.info.request_id, close=not self.keep_alive,
                                  extra_headers=self.route.own_answer_headers(self.context.scheme)))
        self.response_started = True
        self._finish()

    def client_lost(self) -> None:
        """The client went away: drop the backend connection too."""
        if self.finished:
            return
        self.finished = True
        self.completed = False
        self._let_backend_go()
        self._report()

    def _let_backend_go(self) -> None:
        """Give up the backend connection, the body slot and the body held for it: nothing more goes there."""
        upstream = self.upstream
        self._detach()
        self._release_stream()
        self.pending_body = []
        if upstream is not None:
            self.context.pool.discard(upstream)

    def _cut_off(self) -> None:
        """End a response already under way the only way left: close the client connection."""
        self.finished = True
        self.completed = False
        self._report()
        self.client.abort()

    def _detach(self) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        self.upstream = None
        upstream.listener = None
        if self._throttle_backend is not None or self._throttle_client is not None:
            self.flow.release(upstream.transport, self._throttle_backend, self._throttle_client)

    def _finish(self) -> None:
        if self.finished:
            return
        if self._stream_held:
            self._release_stream()
        self.finished = True
        self._report()
        self.client.job_finished(self)

