"""
What answers one HTTP/2 stream, once its request has been read
(L{edd_gateway.h2.request.h1_view}): the HTTP/1.1 code's own checks and
routing, so the 421 check, limits and X-Forwarded-* are not a copy, or the
gateway's own error page (gRPC-shaped for a gRPC call) when the request
cannot be served.
"""

from __future__ import annotations

from twisted.logger import Logger

from edd_gateway.h2.grpc_status import refusal
from edd_gateway.h2.request import H1View, H2RequestError, Headers
from edd_gateway.h2.stream import H2Stream
from edd_gateway.http.clientside import Job
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.headers import analyse_request, new_request_id
from edd_gateway.http.routing import route_request

__all__ = ["job_for"]

log = Logger()


def job_for(stream: H2Stream, view: H1View | H2RequestError, headers: Headers, client_ip: str) -> Job:
    """
    The job for C{stream}: its routed exchange (or relay to an HTTP/2
    backend), or the gateway's refusal of C{view}'s problem, gRPC-shaped
    when the request's C{headers} are a gRPC call's.
    """
    settings = stream.context.settings
    try:
        if isinstance(view, H2RequestError):
            raise view
        info = analyse_request(view.method, view.target, "1.1", view.headers,
                               allow_underscores=settings.allow_underscore_headers)
        limit = settings.max_body_size
        if limit and info.content_length > limit:
            raise GatewayError(413, f"The request body is larger than {limit} bytes.")
        return route_request(stream, info)
    except (GatewayError, H2RequestError) as problem:
        status, detail = problem.status, problem.detail
        log.info("h2: {status} to {client}: {detail}", status=status, client=client_ip, detail=detail)
        return refusal(stream, headers, status, detail, new_request_id())
