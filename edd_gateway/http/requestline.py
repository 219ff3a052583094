"""
Request lines llhttp cannot parse, and what the gateway answers them: a
method it does not know (501, or 400 when the method is not even a token),
and the HTTP/2 connection preface of a client that assumed HTTP/2 (a GOAWAY
frame that says HTTP/1.1 is required).

Pure: the server protocol calls these only once llhttp has refused the
bytes, so the request path pays nothing for them.
"""

from __future__ import annotations

import re

from edd_gateway.http.errors import GatewayError

__all__ = ["H2_PREFACE", "HTTP2_REFUSAL", "is_h2_preface", "is_token", "method_refusal"]

#: RFC 9113 3.4: what a client that assumes HTTP/2 ("prior knowledge") sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Written by hand rather than with the h2 library: two constant frames are
# all the gateway ever says in HTTP/2, not worth a dependency.
# RFC 9113 3.4: the server's preface is a SETTINGS frame, and must come
# first — nghttp2 (curl) treats any other first frame as a protocol error
# and would never read the GOAWAY's reason.  Frame header: length (24 bits),
# type, flags, stream id (31 bits).
_EMPTY_SETTINGS = b"\x00\x00\x00" + b"\x04" + b"\x00" + b"\x00\x00\x00\x00"
# RFC 9113 6.8 GOAWAY on stream 0: last stream id 0 (no stream was
# processed, so the client may retry every request elsewhere) and error code
# HTTP_1_1_REQUIRED (0xd, 7), which curl and browsers understand as "ask
# again in HTTP/1.1".
_GOAWAY_HTTP_1_1_REQUIRED = (
    b"\x00\x00\x08" + b"\x07" + b"\x00" + b"\x00\x00\x00\x00"
    + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x0d"
)
#: The whole answer to the HTTP/2 preface: SETTINGS, then the 17-byte GOAWAY.
HTTP2_REFUSAL = _EMPTY_SETTINGS + _GOAWAY_HTTP_1_1_REQUIRED

# RFC 9110 5.6.2.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SHOWN = 32


def is_token(word: bytes) -> bool:
    return _TOKEN.fullmatch(word) is not None


def is_h2_preface(method: bytes | None, target: bytes) -> bool:
    """
    Whether llhttp stopped on the HTTP/2 preface: it parses C{PRI * HTTP/2.0}
    as a request line with method PRI (the method exists for nothing else)
    and then refuses it.
    """
    return method == b"PRI" and target in (b"", b"*")


def method_refusal(start: bytes) -> GatewayError:
    """
    The answer to a request whose method llhttp does not know, from the
    bytes the request starts with.

    Methods are case-sensitive tokens (RFC 9110 9.1): C{get} is a method the
    gateway does not implement (501), like C{FOO}; a method that is not a
    token (C{G@T}), or a line with no space after it, is no request at all
    (400).
    """
    line = start.lstrip(b"\r\n").split(b"\r", 1)[0].split(b"\n", 1)[0]
    method, space, _ = line.partition(b" ")
    shown = method[:_SHOWN].decode("latin-1")
    if space and is_token(method):
        return GatewayError(501, f"The method {shown!r} is not implemented by the gateway "
                                 "(methods are case-sensitive).")
    return GatewayError(400, f"The request line does not start with a method ({shown!r} is not a token).")
