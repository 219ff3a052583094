"""
An HTTP/2 request head as the rest of the gateway reads requests: the
method, target and HTTP/1.1 header list that
L{edd_gateway.http.headers.analyse_request} checks, so that routing, the
421 check, X-Forwarded-* and the limits are the HTTP/1.1 code, not a copy.

C{h2} has already refused what RFC 9113 8.2-8.3 makes malformed (uppercase
names, connection-specific fields, pseudo-fields out of place or repeated,
C{te} other than C{trailers}); what is left here is translation:
C{:authority} becomes C{Host}, cookie crumbs are joined (8.2.3), a body of
unannounced length becomes chunked towards the HTTP/1.1 backend, and an
extended CONNECT for WebSocket (RFC 8441) becomes the HTTP/1.1 upgrade
request a backend understands (RFC 6455 4.1, with a key of the gateway's
own, since an HTTP/2 client sends none).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

__all__ = ["H2RequestError", "H1View", "h1_view"]


class H2RequestError(Exception):
    """A request HTTP/2 allows but the gateway cannot pass on; the status it answers."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class H1View:
    """The request as HTTP/1.1 sees it."""

    method: bytes
    target: bytes
    headers: Headers
    #: An RFC 8441 WebSocket: answered C{:status 200} once the backend switches protocols.
    websocket: bool
    #: C{:authority}, or the Host header's value.
    authority: bytes | None


def h1_view(h2_headers: Headers, end_stream: bool) -> H1View:
    """
    The HTTP/1.1 view of one request's HTTP/2 header list.

    @param end_stream: the HEADERS frame ended the stream: no body follows.
    @raise H2RequestError: a CONNECT other than RFC 8441's WebSocket, or a
        C{:protocol} the gateway does not bridge.
    """
    method = path = authority = protocol = None
    headers: Headers = []
    cookies: list[bytes] = []
    has_length = False
    for name, value in h2_headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            # RFC 9113 8.3.1: :authority wins; a Host beside it is dropped.
            authority = authority if authority is not None else value
            continue
        if name == b"content-length":
            has_length = True
        headers.append((name, value))
    assert method is not None  # h2 refuses a request without :method
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    websocket = False
    if method == b"CONNECT":
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
    return H1View(method, path if path is not None else b"/", headers, websocket, authority)
