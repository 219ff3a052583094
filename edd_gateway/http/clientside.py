"""
The seam between a client connection and the exchanges it carries: what an
L{edd_gateway.http.exchange.Exchange} (or the gateway's own
L{edd_gateway.http.answer.LocalAnswer}) may ask of the client side, and the
frozen facts of the connection it reads.

An exchange knows nothing else of its client: an HTTP/1.1 connection
(L{edd_gateway.http.server.HTTPServerProtocol}) implements L{ClientSide}
today, an HTTP/2 stream will next.  Everything here is per connection (or
per stream) and per request, never per byte; see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime, ITransport

from edd_gateway.http.settings import ProxySettings

if TYPE_CHECKING:
    from edd_gateway.http.headers import RequestInfo
    from edd_gateway.http.response_head import Special
    from edd_gateway.routes.model import HeaderEdits
    from edd_gateway.routes.containers import HostRouter
    from edd_gateway.routes.model import Route
    from edd_gateway.http.flow import FlowTransport, Throttle
    from edd_gateway.http.pool import UpstreamPool
    from edd_gateway.ops.observe import GatewayObserver
    from edd_gateway.routes.table import LiveRouteTable

__all__ = [
    "AdmissionHooks", "ClientContext", "ClientSide", "ContextSource", "Flow", "Job", "Listener", "TunnelledRequest",
]


class Listener(Protocol):
    """What every connection of a listener shares and may change while they are open."""

    #: Set when the gateway drains (edd_gateway.front.drain): no response keeps its connection.
    draining: bool


class AdmissionHooks(Protocol):
    """
    What the HTTP side tells admission (L{edd_gateway.front.admission.Admission};
    L{edd_gateway.front.admission.NoAdmission} for a listener without one).
    """

    def hit(self, limit: str, host: str | None = None) -> None: ...
    def garbage(self, host: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ClientContext:
    """
    What an exchange reads of its client connection, fixed when it opened.

    @ivar transport: the client connection's transport (over TLS: the TLS
        transport), asked only for facts of the connection — which
        certificate it was set up with (C{misdirected}), which port it came
        in on (C{containers}); never written through (see L{Flow}).
    """

    client_ip: str
    scheme: str
    #: Whether the client's X-Forwarded-* headers are believed (--trusted-proxy).
    trusted_peer: bool
    settings: ProxySettings
    pool: UpstreamPool
    clock: IReactorTime
    observer: GatewayObserver | None
    admission: AdmissionHooks
    listener: Listener
    # The route table access (edd_gateway.http.routing).
    routes: LiveRouteTable
    containers: HostRouter | None
    main_site: str | None
    misdirected: Callable[[Any, str], bool] | None
    transport: Any
    #: The protocol the client speaks: C{http/1.1}, or C{h2} (what the access log's C{proto=} says).
    protocol: str = "http/1.1"
    #: The job for a request on a route whose backend speaks HTTP/2 (C{protocol: grpc} or C{h2c}):
    #: C{(client, info, route, path_and_query)}, raising a GatewayError for a client side it cannot relay;
    #: L{None} when the gateway has no h2c backend pool.
    http2_relay: Callable[[ClientSide, RequestInfo, Route, bytes], Job] | None = None


class Flow(Protocol):
    """
    The flow control an exchange writes through (L{edd_gateway.http.flow.ConnectionFlow}
    for an HTTP/1.1 connection).
    """

    #: Whether the client's buffer cannot be watched: a producer is registered for every exchange.
    register_at_once: bool

    def write(self, data: bytes) -> None: ...
    def queued(self) -> bool: ...
    def throttle_backend(self, backend: FlowTransport) -> Throttle: ...
    def throttle_client(self, backend: FlowTransport) -> Throttle: ...
    def release(self, backend: FlowTransport, backend_throttle: Throttle | None,
                client_throttle: Throttle | None) -> None: ...


class Job(Protocol):
    """A request on a client side: an exchange or the gateway's own answer."""

    keep_alive: bool
    request_done: bool
    finished: bool

    def start(self) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_complete(self) -> None: ...
    def client_lost(self) -> None: ...


class TunnelledRequest(Protocol):
    """What the tunnel's record (metrics, the access log) names of the request that opened it."""

    @property
    def route_label(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def request_id(self) -> str: ...


class ContextSource(Protocol):
    """What a client connection is built from: its listener (L{edd_gateway.http.factory.HTTPProxyFactory})."""

    settings: ProxySettings
    scheme: str

    def context_for(self, transport: Any, client_ip: str) -> ClientContext: ...


class ClientSide(Protocol):
    """
    What a request's job may ask of the client side that carries it: one
    HTTP/1.1 connection, or (issue 16) one HTTP/2 stream.  Calls are per
    request or per event, never per byte beyond L{Flow.write}.
    """

    @property
    def context(self) -> ClientContext: ...
    @property
    def flow(self) -> Flow: ...

    def write(self, data: bytes) -> None:
        """Bytes of the response (the gateway's own answers; exchanges write through L{flow})."""

    def pause_reading(self) -> None:
        """Stop delivering the request body (until L{resume_reading})."""

    def resume_reading(self) -> None: ...

    @property
    def closing(self) -> bool:
        """Whether the client side is ending: no response keeps it open."""

    def body_complete(self) -> None:
        """The request body of the job being answered has all arrived."""

    def awaiting_response(self, timeout: float) -> None:
        """The request is all at the backend: its answer is due within C{timeout} seconds."""

    def response_started(self) -> None:
        """The response head is on its way: from now on only silence is bounded."""

    def final_head(self, status_line: bytes, plain: list[bytes], special: Special, body: int, content_length: int,
                   chunk_to_client: bool, keep_alive: bool, http11_client: bool, request_id: str,
                   upgrade: bool = False, edits: HeaderEdits | None = None) -> bytes | None:
        """
        A proxied response's final head, from its parts (the arguments of
        L{edd_gateway.http.response_head.client_head}, which is an HTTP/1.1
        connection's C{final_head}): its bytes for the exchange to write, or
        L{None} when the client side has taken it as fields (an HTTP/2
        stream: L{edd_gateway.h2.response_fields}); the body then follows as
        it came, unchunked.
        """

    def body_progress(self) -> None:
        """Bytes moved in a started response (or the body of its request)."""

    def job_finished(self, job: Job) -> None:
        """C{job}'s response is all written: the next one's turn, or the end."""

    def abort(self) -> None:
        """Cut the client off: a response already begun cannot be answered otherwise."""

    def limit_hit(self, limit: str) -> None:
        """Count a limit hit (and its strike) with admission."""

    def start_tunnel(self, request: TunnelledRequest, backend: ITransport, head: bytes, rest: bytes) -> None:
        """
        The backend switched protocols: write C{head}, then relay bytes both
        ways between the client and C{backend} (which the pool no longer
        counts), C{rest} first towards the client.
        """
