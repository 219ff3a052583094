"""
Targets the gateway serves itself (``target: internal:NAME``): the welcome
page of the embedded default, so that a new install answers a request before
any backend exists; and the ACME HTTP-01 answers of custom domains
(L{edd_gateway.domains.router}), whose one-off routes carry the key
authorization in the target's (otherwise unused) host.
"""

from __future__ import annotations

from html import escape

from edd_gateway import __version__
from edd_gateway.http.headers import RequestInfo
from edd_gateway.routes.model import Route


#: The internal target of an HTTP-01 challenge answer; the key authorization is the target's C{host}.
ACME_HTTP01 = "acme-http-01"


def internal_answer(
    route: Route, info: RequestInfo, host: str, path: str, client_ip: str
) -> tuple[int, bytes]:
    """The complete response of an internal target."""
    internal = route.target.internal
    if internal == ACME_HTTP01:
        answer = route.target.host.encode("ascii")
        body = answer if info.method != b"HEAD" else b""
        return 200, _response(200, "OK", "application/octet-stream", body, info, len(answer))
    if internal != "welcome":
        body = f"unknown internal target {route.target.internal}\n".encode()
        return 404, _response(404, "Not Found", "text/plain; charset=utf-8", body, info)
    text = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>edd-gateway</title></head>\n"
        "<body><h1>edd-gateway is running</h1>\n"
        f"<p>This page is the built-in <code>internal:welcome</code> target, matched by the route "
        f"at <code>{escape(route.source)}</code> for host <code>{escape(host)}</code>.</p>\n"
        "<p>Point a route at your own backend to replace it:</p>\n"
        "<pre>routes:\n  - host: localhost\n    path: /\n    target: 127.0.0.1:3000\n</pre>\n"
        f"<p>Your address: <code>{escape(client_ip)}</code>; path: <code>{escape(path)}</code>; "
        f"request id: <code>{escape(info.request_id)}</code>.</p>\n"
        f"<hr><p><small>edd-gateway {__version__}</small></p></body></html>\n"
    )
    body = text.encode("utf-8") if info.method != b"HEAD" else b""
    length = len(text.encode("utf-8"))
    return 200, _response(200, "OK", "text/html; charset=utf-8", body, info, length)


def _response(
    status: int, phrase: str, content_type: str, body: bytes, info: RequestInfo, length: int | None = None
) -> bytes:
    keep_alive = info.keep_alive and info.body == 0
    head = [
        f"HTTP/1.1 {status} {phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if length is None else length}",
        f"X-Request-ID: {info.request_id}",
    ]
    if not keep_alive:
        head.append("Connection: close")
    elif not info.http11:
        head.append("Connection: keep-alive")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
