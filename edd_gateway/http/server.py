"""
The client side of the HTTP proxy: one protocol per client connection.

Its L{RequestReader} parses the requests with llhttp and bounds them; each
complete head becomes an L{Exchange} (or the gateway's own answer) in a
queue, so pipelined requests are answered in order while only the first
talks to a backend.  A request
received while another is being answered pauses reading: the gateway holds
at most one socket read of a pipelined request, never a whole body.

The connection is the L{ClientSide} of its exchanges: they see its frozen
L{ClientContext} and its L{ConnectionFlow}, and call nothing else of it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Union

from twisted.internet import error
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.http.deadline import Deadline
from edd_gateway.net.transport import set_no_delay
from edd_gateway.http.answer import LocalAnswer
from edd_gateway.http.clientside import ClientContext, ContextSource, TunnelledRequest
from edd_gateway.http.clientside import Job as AnyJob
from edd_gateway.http.errors import GatewayError, render_error
from edd_gateway.http.exchange import Exchange
from edd_gateway.http.flow import ConnectionFlow
from edd_gateway.http.phase import LINGER_TIMEOUT, Link, Phase
from edd_gateway.http.headers import RequestInfo, new_request_id
from edd_gateway.http.response_head import client_head
from edd_gateway.http.request_reader import RequestReader
from edd_gateway.http.requestline import HTTP2_REFUSAL
from edd_gateway.http.routing import may_keep_alive, route_request
from edd_gateway.ops.observe import tunnel_reporter
from edd_gateway.net.relay import splice

log = Logger()

Job = Union[Exchange, LocalAnswer]

_OPEN = Link.OPEN
_IDLE, _HEAD, _BODY, _WAITING, _BUSY, _STREAMING = (
    Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.WAITING, Phase.BUSY, Phase.STREAMING)

# The limit (edd_gateway.front.admission.LIMITS) each fatal answer reports.
_LIMIT_BY_STATUS = {408: "header-timeout", 413: "body-size", 414: "request-line", 431: "header-size"}


class HTTPServerProtocol(Protocol):
    """One client connection speaking HTTP/1.1 to the gateway."""

    transport: ITCPTransport  # TCP's or TerminatedTLS, from makeConnection on

    def __init__(self, factory: ContextSource) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.scheme = factory.scheme
        self.jobs: deque[Job] = deque()
        self.receiving: Job | None = None
        self._link = _OPEN
        self._phase = _IDLE
        self._upgrade_rest: list[bytes] = []
        self.client_ip = ""
        #: Bytes moved since the BODY or STREAMING deadline was last set.
        self._moved = False
        self.context: ClientContext
        self.flow: ConnectionFlow
        self.reader: RequestReader

    # Connection

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "")
        if host.startswith("::ffff:"):
            host = host[7:]
        self.client_ip = host
        self.context = self.factory.context_for(self.transport, host)
        self.flow = ConnectionFlow(self.transport)
        self.reader = RequestReader(self, self.settings, host)
        self.deadline = Deadline(self.context.clock, self._deadline_passed)
        # The first request is already under way (the sniffer saw its first
        # bytes; over TLS, the handshake has begun): the head's deadline, not
        # the idle one, which would be replaced at once by a second timer.
        self.deadline.set(self.settings.header_timeout)
        set_no_delay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        link = self._link
        if link is not _OPEN:
            if link is Link.UPGRADING:
                self._upgrade_rest.append(data)
                self.pause_reading()
            return
        if not self.reader.feed(data):
            return
        receiving = self.receiving
        if receiving is not None and self.jobs and receiving is not self.jobs[0]:
            self.pause_reading()
        elif len(self.jobs) > self.settings.max_pipelined:
            self.pause_reading()

    def connectionLost(
        self, reason: Failure = error.ConnectionDone(),  # type: ignore[assignment]  # Twisted passes a Failure
    ) -> None:
        self._end(Link.CLOSED)
        self.deadline.cancel()
        for job in self.jobs:
            job.client_lost()
        self.jobs.clear()
        self.receiving = None
        # The reader and the deadline call back into this protocol: cycles
        # broken here (see RequestReader.stop).
        self.reader.stop()
        self.deadline.release()

    # What the reader reports (RequestSink)

    def message_begun(self) -> None:
        if not self.jobs:
            self._phase = _HEAD
            self.deadline.set(self.settings.header_timeout)

    def head_read(self, info: RequestInfo) -> None:
        job = self._job_for(info)
        self.receiving = job
        self.jobs.append(job)
        if len(self.jobs) == 1:
            self._start(job)

    def body_read(self, data: bytes) -> None:
        self._moved = True
        job = self.receiving
        if job is not None:
            job.request_body(data)

    def message_read(self) -> None:
        job = self.receiving
        self.receiving = None
        if job is not None:
            job.request_complete()

    def upgrade_begun(self, rest: bytes) -> None:
        self._upgrade_rest.append(rest)
        self._link = Link.UPGRADING
        self.pause_reading()

    # Routing

    def _job_for(self, info: RequestInfo) -> Job:
        try:
            job = route_request(self, info)
            # An HTTP/1.1 connection is never relayed to an HTTP/2 backend (routing answers 505).
            assert isinstance(job, (Exchange, LocalAnswer))
            return job
        except GatewayError as problem:
            return self._local_error(info, problem.status, problem.detail)

    def _local_error(self, info: RequestInfo, status: int, detail: str) -> LocalAnswer:
        log.info(
            "http: {status} to {client}: {detail}",
            status=status, client=self.client_ip, detail=detail,
        )
        keep_alive = may_keep_alive(info)
        response = render_error(status, detail, info.request_id, close=not keep_alive)
        return LocalAnswer(self, info, response, keep_alive, status)

    # Jobs

    def _start(self, job: Job) -> None:
        if isinstance(job, Exchange) and not job.request_done:
            # Its body is on its way: it must keep coming (--body-timeout).
            self._phase = _BODY
            self._moved = False
            self.deadline.set(self.settings.body_timeout)
        else:
            self._phase = _BUSY
            self.deadline.clear()
        job.start()

    def body_complete(self) -> None:
        """The request body of the exchange being answered has all arrived."""
        if self._phase == _BODY:
            self._phase = _BUSY
            self.deadline.clear()

    def job_finished(self, job: AnyJob) -> None:
        if self.jobs and self.jobs[0] is job:
            self.jobs.popleft()
        if self._link.ending:
            return
        if not job.keep_alive or not job.request_done and job is self.receiving or self.context.listener.draining:
            self._close()
            return
        if self.jobs:
            self._start(self.jobs[0])
        else:
            self._phase = _IDLE
            self.deadline.set(self.settings.keepalive_timeout)
        if self.flow.paused and (self.receiving is None or self.receiving is (self.jobs[0] if self.jobs else None)):
            self.resume_reading()

    def drain(self) -> None:
        """The gateway is stopping: close now if idle, else after the response in flight."""
        if not self._link.ending and not self.jobs and self._phase is _IDLE:
            self._close()

    def awaiting_response(self, timeout: float) -> None:
        self._phase = _WAITING
        self.deadline.set(timeout)

    def response_started(self) -> None:
        self._phase = _STREAMING
        self._moved = False
        self.deadline.set(self.settings.websocket_idle_timeout)

    #: ClientSide.final_head: the head's HTTP/1.1 bytes (no call of its own on every response).
    final_head = staticmethod(client_head)

    def body_progress(self) -> None:
        """
        Bytes moved in a started exchange.  Only noted: the idle deadline is
        pushed back when it expires (see _deadline_passed), which saves
        moving it for every body chunk.
        """
        self._moved = True

    def _deadline_passed(self) -> None:
        if self._link.ending:
            if self._link is Link.LINGERING:
                log.info("http: {client} did not take the last bytes within {seconds:g}s of the close; cutting",
                         client=self.client_ip, seconds=LINGER_TIMEOUT)
                self.transport.abortConnection()
            return
        if self._phase == _IDLE:
            self.limit_hit("idle")
            self._close()
        elif self._phase == _HEAD:
            self.refuse(408, "The request head did not arrive in time.")
        elif self._phase == _BODY and self._moved:
            self._moved = False
            self.deadline.set(self.settings.body_timeout)
        elif self._phase == _BODY and self.jobs:
            job = self.jobs[0]
            self.limit_hit("body-timeout")
            if isinstance(job, Exchange):
                job.fail(408, f"The request body stopped arriving ({self.settings.body_timeout:g}s without a byte).")
        elif self._phase == _WAITING and self.jobs:
            job = self.jobs[0]
            if isinstance(job, Exchange):
                self.limit_hit("backend-response-timeout")
                job.fail(504, f"The backend {job.target} did not answer in time.")
        elif self._phase == _STREAMING and self._moved:
            self._moved = False
            self.deadline.set(self.settings.websocket_idle_timeout)
        elif self._phase == _STREAMING:
            log.info("http: no byte moved for {client} in {seconds}s; closing",
                     client=self.client_ip, seconds=self.settings.websocket_idle_timeout)
            self.limit_hit("stream-idle")
            for job in self.jobs:
                job.client_lost()
            self.jobs.clear()
            self.abort()

    # Writing and flow control (the flow's)

    @property
    def closing(self) -> bool:
        return self._link.ending

    def write(self, data: bytes) -> None:
        self.flow.write(data)

    def pause_reading(self) -> None:
        self.flow.pause_reading()

    def resume_reading(self) -> None:
        self.flow.resume_reading()

    def limit_hit(self, limit: str) -> None:
        """Count a limit hit (and its strike) with the listeners' admission."""
        self.context.admission.hit(limit, self.client_ip)

    def refuse(self, status: int, detail: str, limit: str | None = None) -> None:
        """A fatal error in the request stream: answer in turn, then close."""
        log.info("http: {status} to {client}: {detail}", status=status, client=self.client_ip, detail=detail)
        limit = limit or _LIMIT_BY_STATUS.get(status)
        if limit is not None:
            self.limit_hit(limit)
        elif status == 400:
            self.context.admission.garbage(self.client_ip)
        request_id = new_request_id()
        response = render_error(status, detail, request_id, close=True)
        answer = LocalAnswer(self, None, response, False, status, request_id)
        self.receiving = None
        self.pause_reading()
        active = self.jobs[0] if self.jobs else None
        if isinstance(active, Exchange) and active.response_started and not active.finished:
            # A response is already on its way: no page can be slipped into it.
            for job in self.jobs:
                job.client_lost()
            self.jobs.clear()
            self.abort()
            return
        if active is not None and not active.finished and active.request_done:
            # Answer the requests already read first; drop those still
            # arriving.
            while len(self.jobs) > 1 and not self.jobs[-1].request_done:
                self.jobs.pop().client_lost()
            self.jobs.append(answer)
            self.reader.stop()
            self._link = Link.REFUSED
            return
        for job in self.jobs:
            job.client_lost()
        self.jobs.clear()
        self.jobs.append(answer)
        self._start(answer)

    def refuse_http2(self) -> bool:
        """
        The client assumed HTTP/2 ("prior knowledge"): tell it, in HTTP/2,
        that HTTP/1.1 is required, then close.  An HTTP/1.1 error page would
        read to it as a broken frame.  Only at the start of a connection
        (whether it was told): after HTTP/1.1 requests, the preface is a
        malformed request like any other.
        """
        if self.jobs:
            return False
        log.info(
            "http: {client} sent the HTTP/2 connection preface on an HTTP/1.1 ({scheme}) listener; "
            "answered GOAWAY HTTP_1_1_REQUIRED and closing",
            client=self.client_ip, scheme=self.scheme,
        )
        self.receiving = None
        self.reader.stop()
        self.write(HTTP2_REFUSAL)
        self._close()
        return True

    def _close(self) -> None:
        if not self._link.ending:
            self._end(Link.LINGERING)
            # loseConnection waits for the client to take what is queued: a
            # client that stops reading would hold the connection for ever.
            self.deadline.set(LINGER_TIMEOUT)
            self.transport.loseConnection()

    def abort(self) -> None:
        self._end(Link.CLOSED)
        self.deadline.cancel()
        self.transport.abortConnection()

    def _end(self, link: Link) -> None:
        self._link = link
        self.flow.stopped = True

    # Upgrades

    def start_tunnel(self, request: TunnelledRequest, backend: ITransport, head: bytes, rest: bytes) -> None:
        """Hand both connections to the byte relay after a 101."""
        self._link = Link.CLOSED
        self.flow.hand_over()
        self.deadline.cancel()
        self.jobs.clear()
        self.write(head)
        client_bytes = b"".join(self._upgrade_rest)
        self._upgrade_rest = []
        splice(
            self.transport, backend,
            a_to_b_initial=client_bytes, b_to_a_initial=rest,
            idle_timeout=self.settings.websocket_idle_timeout, clock=self.context.clock,
            on_close=self._tunnel_report(request), on_idle=lambda: self.limit_hit("websocket-idle"),
        )
        # No resumeProducing here: splice resumed both sides before its
        # initial writes, and a pause those writes caused must stand.

    def _tunnel_report(self, request: TunnelledRequest) -> Callable[[int, int], None] | None:
        """The relay's C{on_close}: one tunnel record for metrics and the access log."""
        context = self.context
        return tunnel_reporter(context.observer, context.clock, "websocket", self.client_ip,
                               request.route_label, request.backend, request.request_id)
