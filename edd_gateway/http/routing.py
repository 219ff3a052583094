"""
Routing one request head: the host and target normalised, the route table
(then the containers) asked, and the job that answers it chosen — an
L{Exchange} with the route's backend, or the gateway's own L{LocalAnswer}
(redirects, internal pages).  Security checks that depend on the request as
a whole live here: CONNECT refused, absolute-form targets, 421 for a host
the TLS connection was not set up for.
"""

from __future__ import annotations

from edd_gateway.http.answer import LocalAnswer
from edd_gateway.http.clientside import ClientSide, Job
from edd_gateway.http.errors import GatewayError, render_error
from edd_gateway.http.exchange import Exchange
from edd_gateway.http.headers import BODY_NONE, RequestInfo
from edd_gateway.http.internal import internal_answer
from edd_gateway.routes.model import Route
from edd_gateway.routes.normalize import (
    BadRequestTarget,
    normalize_host,
    normalize_request_target,
    split_absolute_form,
)

__all__ = ["may_keep_alive", "route_request"]


def route_request(client: ClientSide, info: RequestInfo) -> Exchange | LocalAnswer | Job:
    """
    What answers one request head: an exchange with the route's backend, or
    the gateway's own answer (a redirect, an internal page).

    @raise GatewayError: the status and reason of a request that cannot be
        routed (400, 404, 405, 421, or a container's 502/503).
    """
    host, path, query = _host_and_target(info)
    context = client.context
    containers = context.containers
    if containers is not None and containers.under_domain(host):
        # Past the LRU: thousands of container hosts would evict the static routes' answers.
        match = context.routes.current.lookup(host, path)
    else:
        match = context.routes.lookup(host, path)
    main_site = context.main_site
    if match is None and main_site is not None and _is_ip_address(host):
        # A visitor who typed the cloud's address goes to its main site.
        return _local(client, info, 301, render_error(
            301, f"This address serves no site: {main_site}", info.request_id,
            close=not may_keep_alive(info), extra_headers=(("Location", main_site),),
        ))
    misdirected = context.misdirected
    if misdirected is not None and context.scheme == "https" and misdirected(context.transport, host):
        raise GatewayError(421, f"This TLS connection was not set up for {host}: open a new one for it.")
    if match is None and containers is not None:
        match = containers.http_match(host, path, context.transport)
    if match is None:
        raise GatewayError(404, f"No route for host {host} and path {path}.")
    route = match.route
    if context.protocol == "h2c" and not route.http2_backend:
        # HTTP/2 cleartext (prior knowledge, edd_gateway.h2.prior_knowledge) serves gRPC and h2c routes only.
        raise GatewayError(421, f"{host}{path} is not served over HTTP/2 cleartext: use HTTP/1.1 or TLS.")
    if route.redirect_https and context.scheme == "http":
        authority = f"[{host}]" if ":" in host else host
        location = f"https://{authority}{path}" + (f"?{query}" if query else "")
        if context.protocol == "h2c":
            # A prior-knowledge client (a gRPC stub) follows no redirect and
            # reads an HTML page as "unexpected content-type": 421 (gRPC's
            # UNIMPLEMENTED for a call), naming the address to use.
            raise GatewayError(421, f"{host}{path} is served over HTTPS only: {location}")
        return _local(client, info, 301, render_error(
            301, f"This site is served over HTTPS: {location}", info.request_id,
            close=not may_keep_alive(info), extra_headers=(("Location", location),),
        ), route)
    if route.target.internal is not None:
        status, response = internal_answer(route, info, host, path, context.client_ip)
        return _local(client, info, status, response, route)
    upstream_path = match.upstream_path + ("?" + query if query else "")
    if route.http2_backend:
        return _http2_job(client, info, route, upstream_path.encode("latin-1"))
    return Exchange(client, info, route, upstream_path.encode("latin-1"))


def _http2_job(client: ClientSide, info: RequestInfo, route: Route, path_and_query: bytes) -> Job:
    """A route whose backend speaks HTTP/2 (gRPC): relayed stream to stream, for HTTP/2 clients only."""
    relay = client.context.http2_relay
    if relay is None or client.context.protocol == "http/1.1":
        # An HTTP/1.1 request cannot carry what such a backend needs
        # (trailers, a stream both ways): refused, not translated.
        raise GatewayError(505, f"{route.host}{route.path} is served over HTTP/2 only (its backend speaks "
                                f"{route.protocol}): connect with HTTP/2 (ALPN h2 over TLS).")
    if info.upgrade:
        # An RFC 8441 WebSocket reaches here as an HTTP/1.1 upgrade; relayed,
        # the backend would see a plain GET and the client take its 200 for
        # an open tunnel.
        raise GatewayError(501, f"{route.host}{route.path} does not take WebSockets: its backend speaks "
                                f"{route.protocol}.")
    return relay(client, info, route, path_and_query)


def _host_and_target(info: RequestInfo) -> tuple[str, str, str]:
    """
    The request's normalised host, path and query; an absolute-form target's
    authority replaces the Host header (in C{info}).

    @raise GatewayError: 400, 404 (C{OPTIONS *}) or 405 (CONNECT).
    """
    if info.method == b"CONNECT":
        raise GatewayError(405, "CONNECT is not served: the gateway is not a forward proxy.")
    target = info.target
    host_value = info.host
    if target[:1] != b"/":
        try:
            absolute = split_absolute_form(target)
        except BadRequestTarget as problem:
            raise GatewayError(400, f"The request target is invalid: {problem}.") from None
        if absolute is None:
            if target == b"*" and info.method == b"OPTIONS":
                raise GatewayError(404, "OPTIONS * has no route.")
            raise GatewayError(400, "The request target is not a path.")
        host_value, target = absolute
        # RFC 9112 3.2.2: the target's authority replaces the Host header.
        info.host = host_value
        info.headers = [h for h in info.headers if h[0].lower() != b"host"]
        info.headers.append((b"Host", host_value))
    host = normalize_host(host_value) if host_value is not None else None
    if host is None:
        raise GatewayError(400, "The Host header is missing or invalid.")
    try:
        path, query = normalize_request_target(target)
    except BadRequestTarget as problem:
        raise GatewayError(400, f"The request target is invalid: {problem}.") from None
    return host, path, query


def _local(client: ClientSide, info: RequestInfo, status: int, response: bytes,
           route: Route | None = None) -> LocalAnswer:
    if route is not None:
        response = with_fields(response, route.own_answer_headers(client.context.scheme))
    return LocalAnswer(client, info, response, may_keep_alive(info), status, route=route)


def with_fields(response: bytes, fields: tuple[tuple[str, str], ...]) -> bytes:
    """C{response} (a whole rendered answer) with C{fields} added after its status line."""
    if not fields:
        return response
    end = response.index(b"\r\n") + 2
    lines = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in fields)
    return response[:end] + lines + response[end:]


def may_keep_alive(info: RequestInfo) -> bool:
    """
    Whether the connection can serve another request after the gateway
    answered this one itself: not when a body is still unread, nor after
    an upgrade or CONNECT head (llhttp stops parsing after those).
    """
    return info.keep_alive and not info.upgrade and info.body == BODY_NONE and info.method != b"CONNECT"


def _is_ip_address(host: str) -> bool:
    # normalize_host only lets an all-digit last label through for IPv4.
    return ":" in host or host.rpartition(".")[2].isdigit()
