"""
The pure classifier behind protocol sniffing: what a connection's first bytes
say it speaks (TLS, HTTP or SSH), decided on any prefix and never revised.

L{classify} is a function of the bytes alone, with no connection, clock or
buffer, so its promises (L{Verdict.NEED_MORE} until decisive, final once
decided, decisive within L{SNIFF_MAX_BYTES}) are checked with property tests;
L{edd_gateway.front.sniff} is the protocol that feeds it a connection's bytes.
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = ["HTTP_METHODS", "SERVED_KINDS", "SNIFF_MAX_BYTES", "Verdict", "classify"]


class Verdict(str, Enum):
    """What the first bytes of a connection say it speaks."""

    TLS = "TLS"
    HTTP = "HTTP"
    SSH = "SSH"
    NEED_MORE = "NEED_MORE"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


#: The kinds a connection can be handed to.
SERVED_KINDS = frozenset({Verdict.TLS, Verdict.HTTP, Verdict.SSH})

#: Request methods recognised as the start of HTTP/1.x: RFC 9110's, PATCH,
#: and WebDAV's (clients such as file managers open connections with them).
HTTP_METHODS: tuple[bytes, ...] = (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
    b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    b"REPORT", b"SEARCH",
)  # fmt: skip

# Every opening that decides a verdict.  No opening is a prefix of another
# one with a different verdict, which is what makes the verdict final.
_OPENINGS: tuple[tuple[bytes, Verdict], ...] = (
    # A TLS record of type handshake (22) with major version 3 (SSL 3.0 up to
    # TLS 1.3 all say 3 here).
    (b"\x16\x03", Verdict.TLS),
    # RFC 4253 4.2: the client's first line is its identification string.
    (b"SSH-", Verdict.SSH),
    *((method + b" ", Verdict.HTTP) for method in HTTP_METHODS),
)

#: The most bytes the sniffer ever needs to decide; the classifier is decisive
#: after max(len(opening)) bytes (10, for "PROPPATCH "), this leaves room for
#: longer methods without changing the documented bound.
SNIFF_MAX_BYTES = 16
assert max(len(opening) for opening, _ in _OPENINGS) <= SNIFF_MAX_BYTES

# A method-shaped word (RFC 9112 3: method SP), loosely: any visible ASCII,
# so that a method that is not a token still gets its 400.  Checked for a
# space right after it in classify.
_REQUEST_WORD = re.compile(rb"[\x21-\x7e]*")

def classify(prefix: bytes, *, request_lines: bool = False) -> Verdict:
    """
    Classify the first bytes a client sent.

    Works on any prefix, byte by byte: L{Verdict.NEED_MORE} while C{prefix}
    could still become more than one thing (the empty prefix included), then
    the verdict, which every extension of C{prefix} keeps.

    With C{request_lines}, any word of visible ASCII followed by a space is
    HTTP too, whatever the method (C{FOO /}, C{get /}, the HTTP/2 preface's
    C{PRI *}): the HTTP side then answers what it cannot serve with 501, 400
    or an HTTP/2 GOAWAY, where a silent close would tell the client nothing.
    Container ports do without: their unknown bytes are the container's
    (C{SET key value} is Redis, not HTTP).
    """
    could_grow = False
    for opening, verdict in _OPENINGS:
        if prefix.startswith(opening):
            return verdict
        if opening.startswith(prefix):
            could_grow = True
    if request_lines:
        end = _REQUEST_WORD.match(prefix).end()  # type: ignore[union-attr]  # matches any bytes
        if end == len(prefix):
            # Never decisive before the openings are: SSH- and the methods
            # share their first letters with longer words.
            could_grow = could_grow or len(prefix) < SNIFF_MAX_BYTES
        elif 0 < end < SNIFF_MAX_BYTES and prefix[end] == 0x20:
            # A word is never longer than the sniffer reads: past that the
            # verdict was UNKNOWN already, and must stay so.
            return Verdict.HTTP
    return Verdict.NEED_MORE if could_grow else Verdict.UNKNOWN
