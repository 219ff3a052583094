"""
When a request whose backend connection failed before answering may be sent
again: the race every keep-alive proxy meets, a pooled connection the
backend closed while it sat idle, answered the way nginx's
C{proxy_next_upstream} and HAProxy's C{retry-on conn-failure} answer it.
"""

from __future__ import annotations

from typing import Protocol

from edd_gateway.http.headers import BODY_NONE, RequestInfo

#: RFC 9110 9.2.2: methods whose repetition has the effect of one, which
#: may be sent again when a backend connection fails before answering.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UsedConnection(Protocol):
    """What a backend connection tells of its past (L{edd_gateway.http.upstream.UpstreamProtocol})."""

    @property
    def requests(self) -> int: ...
    @property
    def received(self) -> int: ...


def may_send_again(info: RequestInfo, upstream: UsedConnection | None, *, retried: bool, whole_body: bool,
                   request_done: bool) -> bool:
    """
    Whether C{info}, whose connection C{upstream} failed unanswered, may be
    sent again on a new one: once, not after the backend said anything, not
    on a new connection (the backend failed on this very request), only
    with its body kept whole, and only when sending it twice is harmless.
    """
    if upstream is None or upstream.received:
        return False
    if upstream.requests < 2:
        return False  # a new connection closed unanswered: the backend failed on this request
    return sendable_again(info, retried=retried, whole_body=whole_body, request_done=request_done)


def sendable_again(info: RequestInfo, *, retried: bool, whole_body: bool, request_done: bool) -> bool:
    """
    Whether C{info} could be sent again if a reused connection failed
    before answering (L{may_send_again}'s part that needs no connection):
    the pool looks at an idle connection before reuse only for requests
    that could not (L{edd_gateway.http.pool.UpstreamPool.checkout}).
    """
    if retried or not request_done:
        return False
    if info.body != BODY_NONE and not whole_body:
        return False  # streamed: what was sent is gone
    if info.method in IDEMPOTENT:
        return True
    # draft-ietf-httpapi-idempotency-key-header: the client says so.
    return any(name.lower() == b"idempotency-key" for name, _ in info.headers)


def look_before_reuse(info: RequestInfo, retried: bool, request_done: bool) -> bool:
    """
    Whether a pooled connection for C{info} is looked at before it is
    reused: only when a failed reuse could not be mended by sending the
    request again (L{edd_gateway.http.exchange.Exchange.upstream_lost}); a
    body that has all arrived is kept whole for that.
    """
    return not sendable_again(info, retried=retried, whole_body=request_done, request_done=request_done)
