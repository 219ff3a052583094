"""
Backend connections: the response side of the proxy.

A connection serves one exchange at a time (no pipelining towards backends,
like nginx and HAProxy), parses the response with llhttp and reports each
event to its exchange.  The pool that keeps them between requests is
L{edd_gateway.http.pool}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol as TypingProtocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet import defer, error, tcp
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from edd_gateway.net.connect import ConnectFailure, ConnectProblem
from edd_gateway.net.transport import set_no_delay, write_now
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.response_head import RESPONSE_SPECIAL, Special
from edd_gateway.routes.model import Target

if TYPE_CHECKING:
    from edd_gateway.http.pool import UpstreamPool

#: A backend as the pool keys it: (host, port).
BackendKey = tuple[str, int]


class ResponseListener(TypingProtocol):
    """What an upstream connection reports to the exchange it serves."""

    def response_head(self, status: int, reason: bytes, plain: list[bytes], special: Special) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self, reusable: bool) -> None: ...
    def response_upgraded(self, rest: bytes) -> None: ...
    def flush(self) -> None: ...
    def upstream_failed(self, detail: str) -> None: ...
    def upstream_lost(self, reason: Failure) -> None: ...


class UpstreamProtocol(Protocol):
    """One connection to a backend."""

    # connectTCP's or a TCP endpoint's, from makeConnection on (the pool holds connected ones only).
    transport: tcp.Client

    def __init__(self, pool: UpstreamPool, key: BackendKey) -> None:
        self.pool = pool
        self.key = key
        self.listener: ResponseListener | None = None
        self.parser = HttpResponseParser(self)
        self.requests = 0
        self.idle_since = 0.0
        self.received = 0
        self.head_request = False
        self._reason = b""
        self._plain: list[bytes] = []
        self._special: Special = []
        # Set when a response ended inside feed_data: the exchange is told
        # only once feed_data has returned, so that bytes after the response
        # can never be parsed into the next exchange on this connection.
        self.on_connected: defer.Deferred[UpstreamProtocol] | None = None
        self._answered: ResponseListener | None = None
        self._reusable = False
        #: Off the pool's books (closed, or handed to the relay).
        self.gone = False

    # Protocol

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        connected, self.on_connected = self.on_connected, None
        if connected is not None:
            connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            # An idle backend must not speak; whatever it says cannot be
            # matched to a request, so the connection cannot be reused.
            self.transport.loseConnection()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            if self.listener is listener:
                self.listener = None
                listener.response_upgraded(data[upgrade.args[0]:])
                return
        except HttpParserError as problem:
            if self._answered is None and self.listener is listener:
                self.listener = None
                listener.upstream_failed(f"The backend sent a malformed response ({problem}).")
            self._reusable = False
            self.transport.abortConnection()
        answered = self._answered
        if answered is not None:
            self._answered = None
            answered.response_complete(self._reusable)
        elif self.listener is not None:
            self.listener.flush()

    def connectionLost(
        self, reason: Failure = error.ConnectionDone(),  # type: ignore[assignment]  # Twisted passes a Failure
    ) -> None:
        self.connected = 0
        self.pool.lost(self)
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.upstream_lost(reason)
        # The parser calls back into this protocol: a cycle (see
        # HTTPServerProtocol.connectionLost).
        self.parser = None  # type: ignore[assignment]  # dropped once done
        self._answered = None

    # Used by exchanges

    def begin(self, listener: ResponseListener, head_request: bool) -> None:
        self.listener = listener
        self.head_request = head_request
        self.requests += 1
        self.received = 0

    def write(self, data: bytes) -> None:
        write_now(self.transport, data)

    # llhttp callbacks

    def on_message_begin(self) -> None:
        if self._answered is not None:
            # More bytes after a complete response: a confused or hostile
            # backend; its connection must not serve another request.
            self._reusable = False
        self._reason = b""
        self._plain = []
        self._special = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # Split as they come (see headers.split_response_headers).
        lowered = name.lower()
        if lowered in RESPONSE_SPECIAL:
            self._special.append((lowered, name, value))
        else:
            self._plain.append(name + b": " + value)

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        listener = self.listener
        if listener is None:
            return
        listener.response_head(status, self._reason, self._plain, self._special)
        if self.head_request and status >= 200 and self.listener is listener:
            # llhttp cannot be told that a HEAD answer has no body; end the
            # exchange here and stop the parser.  The connection is not
            # reused: bytes after this head could not be framed.
            self._end(listener, False)
            raise _HeadAnswered()

    def on_body(self, data: bytes) -> None:
        listener = self.listener
        if listener is not None:
            listener.response_body(data)

    def on_message_complete(self) -> None:
        listener = self.listener
        if listener is None or self.parser.get_status_code() < 200:
            return
        self._end(listener, self.parser.should_keep_alive())

    def _end(self, listener: ResponseListener, reusable: bool) -> None:
        self.listener = None
        self._answered = listener
        self._reusable = reusable


class _HeadAnswered(Exception):
    """Stops llhttp after the head of an answer to HEAD."""


def connect_error(failure: Failure, target: Target, timeout: float) -> GatewayError:
    """The gateway's answer to a failed backend connection attempt."""
    if failure.check(GatewayError):
        return failure.value  # type: ignore[return-value]  # checked just above
    attempt = ConnectFailure.of(failure)
    if attempt.problem is ConnectProblem.TIMED_OUT:
        return GatewayError(504, f"The backend {target} {attempt.describe(timeout)}.")
    if attempt.problem is ConnectProblem.UNRESOLVED:
        return GatewayError(502, f"The backend name {target.host} does not resolve.")
    return GatewayError(502, f"The backend {target} {attempt.describe(timeout)}.")
