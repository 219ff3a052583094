"""
Reading the requests of one HTTP/1.1 connection: llhttp (through httptools)
parses, and this reader bounds each head and body as it arrives and turns
what llhttp refuses into the answer the client gets.

Apart from the connection (L{edd_gateway.http.server}) because the two
change for different reasons: this side follows llhttp and the request
limits, the connection follows the job queue and its deadlines.  The reader
reports complete heads, body chunks and message ends to a L{RequestSink},
and every refusal through it, so that it holds no job of its own.
"""

from __future__ import annotations

from typing import Protocol

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.http.errors import GatewayError
from edd_gateway.http.headers import BODY_NONE, RequestInfo, analyse_request
from edd_gateway.http.requestline import is_h2_preface, method_refusal
from edd_gateway.http.settings import ProxySettings

log = Logger()


class LimitError(GatewayError):
    """A limit's answer, naming the limit when the status alone does not."""

    def __init__(self, status: int, detail: str, limit: str) -> None:
        super().__init__(status, detail)
        self.limit = limit


class RequestSink(Protocol):
    """What the reader tells its connection (L{edd_gateway.http.server.HTTPServerProtocol})."""

    def message_begun(self) -> None:
        """A request head began arriving."""

    def head_read(self, info: RequestInfo) -> None:
        """A request head arrived whole and within the limits."""

    def body_read(self, data: bytes) -> None:
        """Bytes of the current request's body (de-chunked), within --max-body-size."""

    def message_read(self) -> None:
        """The current request ended."""

    def upgrade_begun(self, rest: bytes) -> None:
        """An upgrade head was read; C{rest} follows it and is the new protocol's."""

    def refuse(self, status: int, detail: str, limit: str | None = None) -> None:
        """The request stream cannot go on: answer C{status} in turn, then close."""

    def refuse_http2(self) -> bool:
        """The bytes are the HTTP/2 connection preface ("prior knowledge"): whether it was answered so."""


class RequestReader:
    """
    The llhttp callbacks of one connection, with the bounds llhttp leaves to
    the application: the request line, the number and size of header fields,
    the body size, and bytes held inside llhttp that move no event.
    """

    def __init__(self, sink: RequestSink, settings: ProxySettings, client_ip: str) -> None:
        self.sink: RequestSink = sink
        self.settings = settings
        self.client_ip = client_ip
        self.parser: HttpRequestParser | None = HttpRequestParser(self)
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._unaccounted = 0
        self._header_bytes = 0
        self._body_size = 0
        #: Messages begun plus messages completed: tells whether the message
        #: llhttp refused began at the start of the bytes just fed.
        self._message_events = 0

    def feed(self, data: bytes) -> bool:
        """
        Parse C{data}; each event and each refusal goes to the sink.  Whether
        reading goes on: False after an upgrade head or a refusal.
        """
        parser = self.parser
        if parser is None:
            return False
        # Bytes that move the parser past no event (a header line, a body
        # chunk, a message end) are held inside httptools: an endless
        # header or trailer line must meet a bound.
        self._unaccounted += len(data)
        events = self._message_events
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self.sink.upgrade_begun(data[upgrade.args[0]:])
            return False
        except HttpParserCallbackError as problem:
            cause = problem.__context__
            if isinstance(cause, GatewayError):
                self.sink.refuse(cause.status, cause.detail, cause.limit if isinstance(cause, LimitError) else None)
            else:
                log.failure("http: unexpected error", Failure(cause) if cause else None)
                self.sink.refuse(500, "The gateway failed to handle this request.")
            return False
        except HttpParserInvalidMethodError as problem:
            if self._message_events == events + 1:
                # Only the refused message began in these bytes, so they
                # start with its method (always so for the sniffer's replay).
                refusal = method_refusal(data)
                self.sink.refuse(refusal.status, refusal.detail)
            else:
                self.sink.refuse(400, f"The request is malformed ({_llhttp_reason(problem)}).")
            return False
        except HttpParserError as problem:
            if is_h2_preface(parser.get_method(), b"".join(self._url)) and self.sink.refuse_http2():
                return False
            self.sink.refuse(400, f"The request is malformed ({_llhttp_reason(problem)}).")
            return False
        if self._unaccounted > self.settings.max_header_bytes:
            self.sink.refuse(431, "The request head or trailer is larger than the gateway accepts.")
            return False
        return True

    def stop(self) -> None:
        """
        Read nothing more.  Drops the parser and the sink, which both call
        back into this reader: cycles that only the cyclic collector would
        free, which the gateway runs seldom (edd_gateway.runtime.gc).  After
        an attack of thousands of connections that held megabytes until a
        full pass; broken here, reference counting frees each connection as
        it closes.
        """
        self.parser = None
        self.sink = _STOPPED

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._message_events += 1
        self._unaccounted = 0
        self._url = []
        self._url_size = 0
        self._headers = []
        self._header_bytes = 0
        self._body_size = 0
        self.sink.message_begun()

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self.settings.max_request_line:
            raise GatewayError(414, "The request target is longer than the gateway accepts.")
        self._url.append(url)
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._unaccounted = 0
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self.settings.max_headers:
            raise LimitError(431, "The request has more header fields than the gateway accepts.", "header-count")
        # Counted here as well as per read: a head that completes within
        # one read is never seen "in progress" by feed.
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.settings.max_header_bytes:
            raise GatewayError(431, "The request head is larger than the gateway accepts.")

    def on_headers_complete(self) -> None:
        self._unaccounted = 0
        parser = self.parser
        assert parser is not None  # llhttp calls back only from feed_data
        info = analyse_request(
            parser.get_method(), b"".join(self._url), parser.get_http_version(), self._headers,
            allow_underscores=self.settings.allow_underscore_headers,
        )
        if info.dropped:
            log.info(
                "http: dropped header {names} from {client}: a name with an underscore "
                "(--allow-underscore-headers passes them)",
                names=", ".join(name.decode("latin-1") for name in info.dropped), client=self.client_ip,
            )
        limit = self.settings.max_body_size
        if limit and info.content_length > limit:
            raise GatewayError(413, f"The request body is larger than {limit} bytes.")
        if info.upgrade and info.body != BODY_NONE:
            # llhttp hands over whatever follows an upgrade head as the new
            # protocol's bytes, body included: the backend would wait for a
            # body that never comes.  WebSocket handshakes have none.
            raise GatewayError(400, "An upgrade request cannot carry a body.")
        self.sink.head_read(info)

    def on_body(self, data: bytes) -> None:
        self._unaccounted = 0
        limit = self.settings.max_body_size
        if limit:
            self._body_size += len(data)
            if self._body_size > limit:
                raise GatewayError(413, f"The request body is larger than {limit} bytes.")
        self.sink.body_read(data)

    def on_message_complete(self) -> None:
        self._message_events += 1
        self._unaccounted = 0
        self.sink.message_read()


class _Stopped:
    """The sink of a stopped reader: it hears nothing more."""

    def message_begun(self) -> None:
        pass

    def head_read(self, info: RequestInfo) -> None:
        pass

    def body_read(self, data: bytes) -> None:
        pass

    def message_read(self) -> None:
        pass

    def upgrade_begun(self, rest: bytes) -> None:
        pass

    def refuse(self, status: int, detail: str, limit: str | None = None) -> None:
        pass

    def refuse_http2(self) -> bool:
        return True


_STOPPED = _Stopped()


def _llhttp_reason(problem: HttpParserError) -> str:
    text = str(problem) or type(problem).__name__
    return text.strip().rstrip(".")
