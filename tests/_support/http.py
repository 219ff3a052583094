"""
The HTTP unit tests' routes, requests and answers: a route table of backends
on private addresses, a GET and a 200 as bytes on the wire.
"""

from __future__ import annotations

from edd_gateway.http.headers import BODY_NONE, RequestInfo
from edd_gateway.http.testing import backend_route
from edd_gateway.routes.model import MatchKind, Route, Target

CLIENT_IP = "203.0.113.7"
#: The backend of ROUTES' first route (app.test).
BACKEND = Target("10.0.0.5", 8080)


ROUTES = [
    backend_route("app.test", "/", "10.0.0.5:8080"),
    backend_route("api.test", "/v1", "10.0.0.6:9090", strip_prefix=True),
    backend_route("slow.test", "/", "10.0.0.7:7070", connect_timeout=1.5, response_timeout=2.0),
    backend_route("secure.test", "/", "10.0.0.8:80", redirect_https=True),
    Route(host="welcome.test", path="/", target=Target("", 0, internal="welcome"), source="routes.yaml:3"),
    Route(host="exact.test", path="/only", target=Target("10.0.0.9", 80), match=MatchKind.EXACT),
]


GET = b"GET /x?y=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\nX-Request-ID: req-1\r\n\r\n"


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def get(path: str = "/", host: str = "app.test", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: %s\r\n%s\r\n" % (path.encode(), version, host.encode(), extra)


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def request_info(method: bytes, body: int = BODY_NONE, headers: list[tuple[bytes, bytes]] | None = None
                 ) -> RequestInfo:
    """A request head as analyse_request reads it, for code that takes one whole."""
    return RequestInfo(method=method, target=b"/", http11=True, headers=headers or [], host=b"app.test", body=body,
                       content_length=0, keep_alive=True, upgrade=False, expect_continue=False, request_id="1",
                       connection_tokens=frozenset())
