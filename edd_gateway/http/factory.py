"""
The factory of the HTTP proxy's client connections: what every connection
of one listener shares (routes, backend pool, settings, clock, scheme and
the optional TLS and container hooks, admission), and the frozen
L{ClientContext} each connection is given from it.
"""

from __future__ import annotations

from typing import Any, Callable

from edd_gateway.http.clientside import ClientSide, Job
from edd_gateway.http.headers import RequestInfo
from edd_gateway.routes.model import Route

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from edd_gateway.front.admission import NO_ADMISSION
from edd_gateway.routes.containers import HostRouter
from edd_gateway.http.clientside import AdmissionHooks, ClientContext
from edd_gateway.http.server import HTTPServerProtocol
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.pool import UpstreamPool
from edd_gateway.ops.observe import GatewayObserver
from edd_gateway.routes.table import LiveRouteTable


class HTTPProxyFactory(Factory):
    """Builds L{HTTPServerProtocol}s that share the routes, pool and settings."""

    noisy = False

    def __init__(
        self,
        routes: LiveRouteTable,
        pool: UpstreamPool,
        settings: ProxySettings,
        clock: IReactorTime,
        scheme: str = "http",
        *,
        main_site: str | None = None,
        misdirected: Callable[[Any, str], bool] | None = None,
        containers: HostRouter | None = None,
        observer: GatewayObserver | None = None,
        admission: AdmissionHooks = NO_ADMISSION,
        http2_relay: Callable[[ClientSide, RequestInfo, Route, bytes], Job] | None = None,
    ) -> None:
        """
        @param main_site: where a request whose Host is an IP address that no
            route names is redirected (301); L{None} answers 404 as usual.
        @param misdirected: for C{scheme="https"}, C{(tls_transport, host)}
            is true when the connection's certificate was not chosen for
            C{host}: the request gets 421 (see L{edd_gateway.tls.authority}).
        @param containers: routes C{<container-id>.<container-domain>} hosts
            that no static route matches to their containers; L{None} for
            no container routing.
        @param observer: told of every request that ends (metrics, access
            log) and of every WebSocket tunnel.
        @param admission: hears of limit hits and garbage
            (L{edd_gateway.front.admission.Admission}); none counted by default.
        @param http2_relay: the job of a request on a C{protocol: grpc} or
            C{h2c} route (L{edd_gateway.h2.backend_exchange.H2BackendRelay});
            without one such requests are refused (505).
        """
        self.routes = routes
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.scheme = scheme
        self.main_site = main_site
        self.misdirected = misdirected
        self.containers = containers
        self.observer = observer
        #: Set when the gateway drains: no response keeps its connection.
        self.draining = False
        self.admission = admission
        self.http2_relay = http2_relay

    def context_for(self, transport: Any, client_ip: str) -> ClientContext:
        """What a connection from C{client_ip} on C{transport} shares, fixed as it opens."""
        settings = self.settings
        return ClientContext(
            client_ip, self.scheme, settings.is_trusted(client_ip), settings, self.pool, self.clock,
            self.observer, self.admission, self, self.routes, self.containers, self.main_site,
            self.misdirected, transport, http2_relay=self.http2_relay,
        )

    def buildProtocol(self, addr: object) -> HTTPServerProtocol:
        protocol = HTTPServerProtocol(self)
        protocol.factory = self
        return protocol
