"""
What the connection paths report when something ends: an HTTP request, a
byte tunnel (WebSocket, TLS passthrough), an SSH session.  Metrics and the
access log both listen here, so the hot paths make one call per ending and
know nothing about either.

An HTTP request is reported as the object that carried it (the proxy's
L{edd_gateway.http.exchange.Exchange} or a
L{edd_gateway.http.answer.LocalAnswer}): building a record per request
would cost more than the metrics themselves.  L{HTTPRequestRecord} names
what an observer may read from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from edd_gateway.routes.model import Route

__all__ = [
    "GatewayObserver", "HTTPRequestRecord", "Observers", "SSHSessionRecord", "TunnelRecord", "route_label",
    "tunnel_reporter",
]


def route_label(route: Route | None) -> str:
    """How metrics and the access log name a route (L{Route.label}), C{-} for none."""
    return "-" if route is None else route.label


class HTTPRequestRecord(Protocol):
    """
    One finished (or abandoned) HTTP request, read only during the call.

    @ivar client_ip: the client's address (the PROXY-protocol one when the
        listener is behind a balancer).
    @ivar scheme: C{http} or C{https}.
    @ivar method: the request method; C{b"-"} when the request head itself
        was refused (400, 408, 431...).
    @ivar host: the Host header as sent, or L{None}.
    @ivar request_target: the request target as sent (path and query).
    @ivar status: the status the client got; 0 when the client left or the
        connection was cut before a response head.
    @ivar route_label: C{host/path} of the route, C{container} for container
        routes, C{-} when no route was involved.
    @ivar backend: C{host:port} of the backend, or C{-}.
    @ivar bytes_in: request body bytes read from the client.
    @ivar bytes_out: response body bytes sent to the client.
    @ivar started: clock time the request head was complete.
    @ivar responded: clock time the backend's response head arrived, or
        L{None} (local answers, failures).
    @ivar request_id: the X-Request-ID the request carried or was given.
    @ivar completed: false when the response was cut short.
    @ivar grpc_status: a gRPC call's status (C{grpc-status}: the backend's,
        or the gateway's own answer's), C{""} for any other request.
    """

    client_ip: str
    scheme: str
    status: int
    bytes_in: int
    bytes_out: int
    started: float
    responded: float | None
    completed: bool
    grpc_status: str

    @property
    def method(self) -> bytes: ...
    @property
    def host(self) -> bytes | None: ...
    @property
    def request_target(self) -> bytes: ...
    @property
    def route_label(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def proto(self) -> str:
        """C{http/1.1}, or C{h2} for a request on an HTTP/2 stream."""


@dataclass(frozen=True, slots=True)
class TunnelRecord:
    """
    A byte tunnel that ended: C{kind} is C{websocket} (an HTTP upgrade) or
    C{tls-passthrough}; C{bytes_up} went from the client to the backend.
    """

    kind: str
    client_ip: str
    route_label: str
    backend: str
    bytes_up: int
    bytes_down: int
    started: float
    ended: float
    request_id: str = "-"


def tunnel_reporter(
    observer: GatewayObserver | None, clock: IReactorTime, kind: str, client_ip: str, label: str,
    backend: str, request_id: str = "-",
) -> Callable[[int, int], None] | None:
    """
    A relay's C{on_close} (L{edd_gateway.net.relay.splice}): the tunnel it ends
    reported as one L{TunnelRecord}, timed from now; L{None} without an
    observer.
    """
    if observer is None:
        return None
    started = clock.seconds()

    def report(up: int, down: int) -> None:
        observer.tunnel(TunnelRecord(kind, client_ip, label, backend, up, down, started, clock.seconds(), request_id))

    return report


@dataclass(frozen=True, slots=True)
class SSHSessionRecord:
    """
    An SSH connection that ended.  C{outcome} is C{relayed} when the user
    logged in and reached the container, else why not (C{refused},
    C{timeout}, C{unreachable}, C{closed}); C{bytes_up} went from the user
    to the container.
    """

    client_ip: str
    username: str
    container: str
    backend: str
    outcome: str
    bytes_up: int
    bytes_down: int
    started: float
    ended: float


class GatewayObserver(Protocol):
    """Something told of every ending; it must not raise and must be quick."""

    def http_request(self, request: HTTPRequestRecord, now: float) -> None: ...
    def tunnel(self, record: TunnelRecord) -> None: ...
    def ssh_session(self, record: SSHSessionRecord) -> None: ...
    def ssh_login(self, outcome: str) -> None: ...
    def http2(self, event: str, code: str) -> None:
        """An HTTP/2 event: C{connection} (its first stream), C{stream} (opened), C{reset-sent}, C{reset-received} or C{goaway-sent}, with its error code's name (C{-} for none)."""


class Observers:
    """Several observers as one (metrics and the access log)."""

    def __init__(self, observers: Sequence[GatewayObserver]) -> None:
        self.observers = tuple(observers)

    def http_request(self, request: HTTPRequestRecord, now: float) -> None:
        for observer in self.observers:
            observer.http_request(request, now)

    def tunnel(self, record: TunnelRecord) -> None:
        for observer in self.observers:
            observer.tunnel(record)

    def ssh_session(self, record: SSHSessionRecord) -> None:
        for observer in self.observers:
            observer.ssh_session(record)

    def ssh_login(self, outcome: str) -> None:
        for observer in self.observers:
            observer.ssh_login(outcome)

    def http2(self, event: str, code: str) -> None:
        for observer in self.observers:
            observer.http2(event, code)
