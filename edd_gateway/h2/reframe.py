"""
An HTTP/1.1 response, as an exchange writes it to its client, re-framed as
an HTTP/2 header list and body bytes.

The exchange (L{edd_gateway.http.exchange.Exchange}) and the gateway's own
answers (L{edd_gateway.http.errors.render_error}) write HTTP/1.1 bytes: the
backend's head with the gateway's edits, its body as it came (chunked when
its length is unknown).  An HTTP/2 stream reads those bytes back with llhttp
(httptools, as the HTTP/1.1 side reads requests): one parser of the
response, with the header edits, X-Request-ID and error pages exactly those
of HTTP/1.1, instead of a second response writer kept in step with the
first.  The cost is one C-level parse of bytes the gateway has just
written; the connection-specific fields (RFC 9113 8.2.2) are dropped here.
"""

from __future__ import annotations

from collections.abc import Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from edd_gateway.http.headers import HOP_BY_HOP

Headers = list[tuple[bytes, bytes]]

__all__ = ["ResponseReframer"]

#: RFC 9113 8.2.2: never sent in HTTP/2, whatever the Connection header names:
#: the HTTP/1.1 side's hop-by-hop fields.
CONNECTION_SPECIFIC = HOP_BY_HOP


class ResponseReframer:
    """
    Fed an HTTP/1.1 response's bytes in any pieces; calls C{on_head(status,
    headers)} for each head (1xx ones too) and C{on_body(data)} for the
    body, de-chunked.
    """

    def __init__(self, on_head: Callable[[int, Headers], None], on_body: Callable[[bytes], None]) -> None:
        self._on_head = on_head
        # llhttp calls the body callback straight, without a frame of ours.
        self.on_body = on_body
        self._headers: Headers = []
        self._parser: HttpResponseParser | None = HttpResponseParser(self)
        #: The head is complete; the rest is body only (a HEAD response's, say, never ends in llhttp's eyes).
        self.head_done = False

    def feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # closed: the stream is gone, so are its bytes
            return
        try:
            parser.feed_data(data)
        except HttpParserUpgrade:
            # A 101 head: the tunnel's own code answers the stream.
            pass
        except HttpParserError as problem:
            # The gateway wrote these bytes itself: a bug, not the client's doing.
            raise RuntimeError(f"the gateway wrote an HTTP/1.1 response llhttp refuses: {problem}") from None

    def close(self) -> None:
        """
        Stop: later bytes are dropped.  The parser (which holds this object)
        and the stream's callbacks are let go, so that no reference cycle
        keeps either alive.
        """
        self._parser = None
        self._on_head = _ignore_head
        self.on_body = _ignore_body

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # llhttp calls back only from feed(), which a closed re-framer skips
        status = parser.get_status_code()
        headers = self._headers
        named = {token.strip().lower() for name, value in headers if name == b"connection"
                 for token in value.split(b",")}
        kept = [(name, value) for name, value in headers if name not in CONNECTION_SPECIFIC and name not in named]
        if status >= 200:
            self.head_done = True
        self._on_head(status, kept)


def _ignore_head(status: int, headers: Headers) -> None:
    pass


def _ignore_body(data: bytes) -> None:
    pass
