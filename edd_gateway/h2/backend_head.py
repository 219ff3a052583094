"""
Pure header work of a stream relayed to an h2c backend (C{protocol: grpc}
or C{h2c} routes, L{edd_gateway.h2.backend_exchange}): the HTTP/2 request
head the backend gets, and the response head the client gets.

The same decisions as the HTTP/1.1 side's
(L{edd_gateway.http.headers.upstream_request_head}): hop-by-hop fields
dropped, X-Forwarded-For/-Real-IP/-Proto/-Host set (appended to only for a
trusted peer), X-Request-ID; but C{te: trailers} is kept (gRPC servers
refuse a call without it) and the request is an HTTP/2 header list, with
pseudo-fields first.  C{info} is the request's HTTP/1.1 view
(L{edd_gateway.h2.request.h1_view}, checked by C{analyse_request}): its
C{host} field is C{:authority}'s, and the C{transfer-encoding: chunked} it
adds for a body of unannounced length is dropped like any hop-by-hop field.
"""

from __future__ import annotations

from edd_gateway.http.headers import FORWARDING, HOP_BY_HOP, RequestInfo
from edd_gateway.routes.model import HeaderEdits

Headers = list[tuple[bytes, bytes]]

__all__ = ["backend_request_headers", "client_response_head"]

_SKIPPED = HOP_BY_HOP | {b"host", b"x-request-id"}


def backend_request_headers(info: RequestInfo, path_and_query: bytes, client_ip: str, scheme: str,
                            trusted: bool) -> Headers:
    """The HTTP/2 request head sent to the backend for the request C{info}, to C{path_and_query}."""
    head: Headers = [(b":method", info.method), (b":scheme", b"http"), (b":path", path_and_query)]
    if info.host is not None:
        head.append((b":authority", info.host))
    forwarded_for = real_ip = proto = forwarded_host = b""
    # The fields are h1_view's: names lower-case, te only "trailers" (RFC 9113 8.2).
    for name, value in info.headers:
        if name in FORWARDING:
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                forwarded_for = forwarded_for + b", " + value if forwarded_for else value
            elif name == b"x-real-ip":
                real_ip = value
            elif name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-host":
                forwarded_host = value
            else:
                head.append((name, value))
        elif name == b"te":
            # RFC 9113 8.2.2: the only TE HTTP/2 allows; gRPC needs it.
            head.append((b"te", b"trailers"))
        elif name not in _SKIPPED:
            head.append((name, value))
    client = client_ip.encode("ascii")
    head += [(b"x-forwarded-for", forwarded_for + b", " + client if forwarded_for else client),
             (b"x-real-ip", real_ip or client), (b"x-forwarded-proto", proto or scheme.encode("ascii"))]
    if forwarded_host or info.host is not None:
        head.append((b"x-forwarded-host", forwarded_host or info.host or b""))
    head.append((b"x-request-id", info.request_id.encode("ascii")))
    return head


def client_response_head(head: Headers, edits: HeaderEdits | None, request_id: str) -> Headers:
    """
    The backend's response head as the client gets it: the route's edits
    applied (names lower-case, as HTTP/2 wants them), X-Request-ID added as
    the HTTP/1.1 side adds it.
    """
    if edits is not None:
        head = [(name, value) for name, value in head if name not in edits.drop]
        for line in edits.add:
            name, _, value = line.partition(b": ")
            head.append((name.lower(), value))
    if not any(name == b"x-request-id" for name, _ in head):
        head.append((b"x-request-id", request_id.encode("ascii")))
    return head
