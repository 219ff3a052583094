"""
An HTTP/2 request head as the rest of the gateway reads requests: the
method, target and HTTP/1.1 header list that
L{edd_gateway.http.headers.analyse_request} checks, so that routing, the
421 check, X-Forwarded-* and the limits are the HTTP/1.1 code, not a copy.

What RFC 9113 8.2-8.3 makes malformed (uppercase or empty names, CR, LF
or NUL in a value, connection-specific fields, C{te} other than
C{trailers}, pseudo-fields unknown, repeated, out of place or missing, a
Host that differs from C{:authority}) is refused here, in the one pass
that reads the fields: C{h2}'s own inbound checks are turned off, since
their chain of seven generators per header list cost more than a tenth of
a request (callgrind, C{bench/instructions.py --modes h2}).  The rest is
translation: C{:authority} becomes C{Host}, cookie crumbs are joined (8.2.3), a body of
unannounced length becomes chunked towards the HTTP/1.1 backend, and an
extended CONNECT for WebSocket (RFC 8441) becomes the HTTP/1.1 upgrade
request a backend understands (RFC 6455 4.1, with a key of the gateway's
own, since an HTTP/2 client sends none).

A client's requests differ in little but their paths (a browser's), or not
at all (a poller, a load generator): the view of a header list is kept, in
a bounded table shared by all connections (L{_VIEWS}) and keyed by the list
less its C{:path}, and handed out with the request's own path as a new
L{H1View} with its own header list, so no request can change another's.
The other fields of a kept view were checked when it was made, and the path
is checked each time; a view is a pure function of the fields and
C{end_stream}, and a WebSocket's (with its random key) is never kept.
Reading the fields was a thirteenth of such a request's time through the
gateway (3.4 of about 45 microseconds).  Shared, the table tells a client
nothing it did not send: a request is answered the same way and about 3
microseconds sooner when another connection sent the same fields (its
cookie among them), which to learn it must already know.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from edd_gateway.h2.bounded import keep

Headers = list[tuple[bytes, bytes]]

__all__ = ["H2RequestError", "H1View", "Malformed", "h1_view", "malformed_trailers"]

#: RFC 9113 8.2.1: a field name has none of 0x00-0x20, 0x41-0x5a (upper case), 0x7f-0xff, nor a colon.
_NAME = re.compile(rb"[!-9;-@\[-~]+")
#: RFC 9113 8.2.1: a value has no NUL, CR or LF, and no space or tab at either end (empty is allowed).
_VALUE = re.compile(rb"(?:[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?)?")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
#: RFC 9113 8.2.2.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                  b"upgrade"})


class Malformed(Exception):
    """RFC 9113 8.1.1: a malformed request, answered by a stream error of type PROTOCOL_ERROR."""


class H2RequestError(Exception):
    """A request HTTP/2 allows but the gateway cannot pass on; the status it answers."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(slots=True)
class H1View:
    """The request as HTTP/1.1 sees it (not frozen: a frozen dataclass costs three times as much to make)."""

    method: bytes
    target: bytes
    headers: Headers
    #: An RFC 8441 WebSocket: answered C{:status 200} once the backend switches protocols.
    websocket: bool
    #: C{:authority}, or the Host header's value.
    authority: bytes | None


#: The views of header lists seen lately, keyed by the list with its
#: C{:path} left out (L{_ANY_PATH} in its place: a browser's requests differ
#: in little else) and C{end_stream}; cleared when it holds L{_VIEWS_KEPT}.
#: Only lists of up to L{_FIELDS_KEPT} fields and L{_BYTES_KEPT} bytes are
#: kept, so it stays under a megabyte.
_VIEWS: dict[tuple[tuple[tuple[bytes, bytes | None], ...], bool], H1View] = {}
_VIEWS_KEPT = 256
_FIELDS_KEPT = 24
_BYTES_KEPT = 2048
_ANY_PATH = (b":path", None)


def h1_view(h2_headers: Headers, end_stream: bool) -> H1View:
    """
    The HTTP/1.1 view of one request's HTTP/2 header list.

    @param end_stream: the HEADERS frame ended the stream: no body follows.
    @raise Malformed: RFC 9113 8.1.1.
    @raise H2RequestError: a CONNECT other than RFC 8441's WebSocket, or a
        C{:protocol} the gateway does not bridge.
    """
    fields: list[tuple[bytes, bytes | None]] = list(h2_headers)
    path = None
    for index, (name, value) in enumerate(h2_headers):
        if name == b":path":
            path, fields[index] = value, _ANY_PATH
            break
        if name[:1] != b":":
            break
    key = (tuple(fields), end_stream)
    kept = _VIEWS.get(key)
    # The path is the target; what else the view says does not depend on it,
    # once it is a valid one (RFC 9113 8.3.1: not empty; 8.2.1).
    if kept is not None and path and _VALUE.fullmatch(path) is not None:
        return H1View(kept.method, path, list(kept.headers), False, kept.authority)
    view = _read_view(h2_headers, end_stream)
    if (view.target == path and not view.websocket and len(h2_headers) <= _FIELDS_KEPT
            and sum(len(name) + len(value) for name, value in h2_headers) <= _BYTES_KEPT):
        keep(_VIEWS, key, H1View(view.method, b"", list(view.headers), False, view.authority), _VIEWS_KEPT)
    return view


def _read_view(h2_headers: Headers, end_stream: bool) -> H1View:
    """L{h1_view}, reading every field."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    host: bytes | None = None
    has_length = False
    for name, value in h2_headers:
        if _VALUE.fullmatch(value) is None:
            raise Malformed(f"a CR, LF, NUL or surrounding white space in the value of {name!r}")
        if name[:1] == b":":
            if headers or cookies or host is not None or name not in _PSEUDO or name in pseudo:
                raise Malformed(f"the pseudo-header {name!r} unknown, repeated or after a regular field")
            pseudo[name] = value
        elif _NAME.fullmatch(name) is None:
            raise Malformed(f"the field name {name!r} (empty, upper case or an invalid character)")
        elif name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            raise Malformed(f"the connection-specific field {name!r}")
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            if host is not None:
                raise Malformed("two Host fields")
            host = value
        else:
            has_length = has_length or name == b"content-length"
            headers.append((name, value))
    method, path = _checked_pseudo(pseudo, host)
    authority = pseudo.get(b":authority", host)
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    websocket = False
    if method == b"CONNECT":
        protocol = pseudo.get(b":protocol")
        if protocol is None:
            raise H2RequestError(405, "CONNECT is not served: the gateway is not a forward proxy.")
        if protocol.lower() != b"websocket":
            raise H2RequestError(501, f"Extended CONNECT for {protocol.decode('latin-1')} is not served.")
        websocket = True
        method = b"GET"
        headers += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"),
                    (b"sec-websocket-key", base64.b64encode(os.urandom(16)))]
    elif not end_stream and not has_length:
        # A body of unannounced length (DATA frames until END_STREAM): the
        # HTTP/1.1 backend is told where it ends by chunking.
        headers.append((b"transfer-encoding", b"chunked"))
    if authority is not None:
        headers.insert(0, (b"host", authority))
    return H1View(method, path, headers, websocket, authority)


def _checked_pseudo(pseudo: dict[bytes, bytes], host: bytes | None) -> tuple[bytes, bytes]:
    """
    The method and path of a request's pseudo-header fields, as RFC 9113 8.3
    and RFC 8441 4 require them; the path of a plain CONNECT (which has
    none) is C{/}.

    @raise Malformed: a field missing, empty or out of place, or a Host
        that differs from C{:authority} (8.3.1).
    """
    method = pseudo.get(b":method")
    if method is None:
        raise Malformed("no :method")
    authority = pseudo.get(b":authority")
    if authority is not None and host is not None and authority != host:
        raise Malformed("a Host field that differs from :authority")
    if authority is None and host is None:
        raise Malformed("neither :authority nor Host")
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise Malformed("a plain CONNECT with :scheme or :path")
        return method, b"/"
    if b":protocol" in pseudo and method != b"CONNECT":
        raise Malformed(":protocol outside an extended CONNECT")
    path = pseudo.get(b":path")
    if not path or b":scheme" not in pseudo:
        raise Malformed("no :scheme, or no or an empty :path")
    return method, path


def malformed_trailers(headers: Headers) -> str | None:
    """
    What makes a request's trailer section malformed (RFC 9113 8.1, 8.2:
    no pseudo-header, the field rules of a head), or C{None}.
    """
    for name, value in headers:
        if _VALUE.fullmatch(value) is None:
            return f"a CR, LF, NUL or surrounding white space in the value of {name!r}"
        if _NAME.fullmatch(name) is None:
            return f"the trailer name {name!r} (a pseudo-header, empty, upper case or an invalid character)"
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            return f"the connection-specific field {name!r}"
    return None
