"""
The builders L{edd_gateway.tap.makeService} is made of, one per part of the
service tree: the shared core (routes, admission, observation, live state,
container routing), the HTTP proxy, the TLS side, SSH and the listeners.
Each takes the checked options (L{edd_gateway.tap.Options}) and the
services built before it; none does I/O beyond reading the files the
options name, so the whole tree can be built on a memory reactor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.logger import Logger

from edd_gateway.domains.build import CustomDomains, build_domains
from edd_gateway.front import admission as _admission
from edd_gateway.front.drain import ConnectionTracker, GatewayService, TrackedFactory
from edd_gateway.front.listeners import listener_service
from edd_gateway.front.rawtcp import RawTCPFactory
from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.h2.backend import H2BackendPool, H2PoolService
from edd_gateway.h2.backend_exchange import H2BackendRelay
from edd_gateway.h2.guard import GuardLimits
from edd_gateway.h2.negotiate import ProtocolChooserFactory
from edd_gateway.h2.prior_knowledge import PriorKnowledgeFactory
from edd_gateway.h2.server import H2ServerProtocol
from edd_gateway.h2.settings import H2Settings
from edd_gateway.http.factory import HTTPProxyFactory
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.pool import PoolService, UpstreamPool
from edd_gateway.ops.admin import Readiness
from edd_gateway.ops.logs import AccessLog
from edd_gateway.ops.domain_metrics import domain_metrics
from edd_gateway.ops.metrics import GatewayMetrics
from edd_gateway.ops.monitoring import Monitoring
from edd_gateway.ops.observe import GatewayObserver, Observers
from edd_gateway.routes.containers import ContainerRouter
from edd_gateway.routes.loader import RoutesFileError, load_routes_file
from edd_gateway.routes.model import Route
from edd_gateway.routes.service import RoutesService
from edd_gateway.routes.table import LiveRouteTable, RouteTable
from edd_gateway.runtime.rlimit import raise_open_file_limit
from edd_gateway.ssh import GatewaySSHFactory, HostKeyPins, KeyFileError, build_ssh_factory
from edd_gateway.ssh.pinning import HostKeyPolicy
from edd_gateway.state.changefeed import ChangeFeedListener
from edd_gateway.state.localfile import ContainersFileError, LocalContainersSource, LocalPinStore
from edd_gateway.state.localfile import load_containers_file
from edd_gateway.state.model import ContainerDirectory, ContainerSnapshot
from edd_gateway.state.nats import NatsEventFeed
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.service import StateService
from edd_gateway.tls.authority import misdirected_check
from edd_gateway.tls.context import ALPN_PROTOCOL, ALPN_WITH_H2
from edd_gateway.tls.listener import TLSListenerFactory
from edd_gateway.tls.service import build_tickets, build_tls

if TYPE_CHECKING:
    from edd_gateway.tap import Options

__all__ = [
    "Gateway", "LiveState", "build_core", "build_http", "build_listeners", "build_observer", "build_plain_http",
    "build_ssh",
    "build_state", "build_terminated_protocols", "build_tls_side", "installed_asyncio_reactor",
    "load_initial_routes",
]

#: The start-up lines keep the namespace operators know them by (docs/logging.md):
#: they were the tap's before its builders had a module of their own.
log = Logger(namespace="edd_gateway.tap")


def load_initial_routes(path: str) -> RouteTable:
    """The first table: an invalid file stops the start with file:line: reason."""
    try:
        return RouteTable(load_routes_file(path))
    except RoutesFileError as problem:
        raise SystemExit(f"edd-gateway: invalid routes file\n{problem}") from None
    except OSError as problem:
        raise SystemExit(f"edd-gateway: cannot read the routes file {path}: {problem}") from None


@dataclass
class LiveState:
    """The containers the listeners read, their SSH pins, and where the routes file's versions go."""

    directory: ContainerDirectory
    pins: HostKeyPins
    publish_file_routes: Callable[[Sequence[Route]], object]
    state: StateService | None = None
    database: PostgresDatabase | None = None


def build_state(config: Options, reactor: Any, live: LiveRouteTable, parent: service.MultiService,
                on_propagated: Callable[[float], object] | None = None) -> LiveState:
    """
    PostgreSQL (+ NATS) when there is a database, else the --containers
    file, else no containers at all.  Nothing here connects: a database down
    at start is retried by the state service while the routes file is served.
    """
    directory = ContainerDirectory()

    def swap(routes: Sequence[Route]) -> None:
        live.swap(RouteTable(routes))

    if config["database"] is not None:
        database = PostgresDatabase(config["database"], reactor, compute_dsn=config["compute-database"])
        servers = [url.strip() for url in (config["nats"] or "").split(",") if url.strip()]
        events = NatsEventFeed(servers, name="edd-gateway", durable=config["nats-durable"]) if servers else None
        changes = ChangeFeedListener(database.compute_dsn, reactor)
        state = StateService(database, directory, reactor, events=events, changes=changes, on_routes=swap,
                             file_routes=live.current.routes, poll_interval=config["poll-interval"],
                             resync_interval=config["resync-interval"], on_propagated=on_propagated)
        state.setServiceParent(parent)
        return LiveState(directory, database, state.set_file_routes, state, database)
    os.makedirs(os.path.dirname(os.path.abspath(config["state-file"])), mode=0o700, exist_ok=True)
    pins = LocalPinStore(config["state-file"])
    path = config["containers"]
    if path is None:
        directory.swap(ContainerSnapshot(ready=True))
    else:
        try:
            load_containers_file(path)
        except ContainersFileError as problem:
            raise SystemExit(f"edd-gateway: invalid containers file\n{problem}") from None
        LocalContainersSource(path, directory, reactor, config["reload-interval"], pins).setServiceParent(parent)
    return LiveState(directory, pins, swap)


def build_ssh(config: Options, state: LiveState, reactor: Any, *, observer: GatewayObserver | None = None,
              admission: _admission.Admission | _admission.NoAdmission = _admission.NO_ADMISSION
              ) -> GatewaySSHFactory:
    """The SSH factory (sniffed SSH and --ssh-listen); unusable key files stop the start."""
    if config["ssh-host-key-policy"] is HostKeyPolicy.IGNORE:
        log.warn("ssh: --ssh-host-key-policy ignore: containers' SSH host keys are NOT checked; anything that "
                 "answers at a container's address can take its users' sessions")
    if config["ssh-allow-sha1-rsa"]:
        log.warn("ssh: --ssh-allow-sha1-rsa: SHA-1 ssh-rsa signatures are accepted from users' RSA keys and "
                 "offered for an RSA host key")
    try:
        return build_ssh_factory(state.directory, state.pins, host_key_path=config["ssh-host-key"],
                                 client_key_path=config["ssh-client-key"],
                                 rsa_host_key_path=config["ssh-rsa-host-key"], reactor=reactor,
                                 settings=config.ssh_settings(), addressing=config.addressing(),
                                 observer=observer, admission=admission)
    except KeyFileError as problem:
        raise SystemExit(f"edd-gateway: {problem}") from None


def installed_asyncio_reactor() -> Any:
    """The installed reactor, which must be asyncio's (nats-py's futures never resolve on another)."""
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise SystemExit("edd-gateway: needs the asyncio reactor (nats-py runs on asyncio); "
                         "run it without --reactor, or with --reactor=asyncio")
    return reactor


def build_observer(config: Options, metrics: GatewayMetrics) -> GatewayObserver:
    """Metrics, and the access log unless --no-access-log."""
    if config["no-access-log"]:
        return metrics
    return Observers([metrics, AccessLog()])


@dataclass
class Gateway:
    """
    What the builders of L{makeService} share: the options, the reactor, the
    service tree they parent their services to, and the collaborators every
    listener is given at construction.
    """

    config: Options
    reactor: Any
    top: GatewayService
    metrics: GatewayMetrics
    readiness: Readiness
    monitoring: Monitoring
    settings: ProxySettings
    live: LiveRouteTable
    admission: _admission.Admission
    observer: GatewayObserver
    state: LiveState
    containers: ContainerRouter | None
    domains: CustomDomains | None = None


def build_core(config: Options, reactor: Any) -> Gateway:
    """The routes, admission, observer, live state and container routing every listener shares."""
    settings = config.settings()
    live = LiveRouteTable(load_initial_routes(config["routes"]))
    log.info("routes: loaded {count} routes from {path}", count=len(live.current), path=config["routes"])
    files = raise_open_file_limit()
    listeners = len(config.sniffing_endpoints()) + len(config["ssh-listen"])
    if files is not None and files < 4 * listeners + 1024:
        log.warn("the open-file limit ({files}) leaves little room for connections beside {listeners} listeners",
                 files=files, listeners=listeners)
    top = GatewayService(reactor, config["drain-timeout"])
    metrics, readiness = GatewayMetrics(), Readiness()
    monitoring = Monitoring(metrics, readiness, top)
    admission = _admission.build_admission(config, reactor)
    _admission.AdmissionService(admission, reactor).setServiceParent(top)
    monitoring.admission(admission)
    observer = build_observer(config, metrics)
    state = build_state(config, reactor, live, top, monitoring.event_propagation.observe)
    monitoring.state(state.state, lambda: state.directory.current.ready)
    routes = RoutesService(config["routes"], state.publish_file_routes, reactor, config["reload-interval"])
    routes.setServiceParent(top)
    monitoring.routes(live, routes)
    containers = None
    if config["container-domain"] is not None:
        containers = ContainerRouter(state.directory, config["container-domain"], config["port-map"],
                                     config.addressing())
    domains = None
    if state.database is not None:
        domains = build_domains(config, state.database, state.directory, reactor, top, containers)
        domain_metrics(metrics, domains)
    return Gateway(config, reactor, top, metrics, readiness, monitoring, settings, live, admission, observer, state,
                   containers, domains)


def build_http(gateway: Gateway) -> tuple[HTTPProxyFactory, HTTPProxyFactory]:
    """The backend pool and the HTTP proxy's two factories: plain (sniffed HTTP) and inside terminated TLS."""
    config, reactor, settings = gateway.config, gateway.reactor, gateway.settings
    pool = UpstreamPool(reactor, reactor, max_idle=settings.pool_max_idle,
                        max_per_backend=settings.pool_max_per_backend, idle_timeout=settings.pool_idle_timeout,
                        max_streams_per_client=settings.body_streams_per_client)
    PoolService(pool).setServiceParent(gateway.top)
    # One h2c pool for every listener's streams on grpc/h2c routes: their
    # backend connections are shared, as the HTTP/1.1 pool's are (each carries
    # as many streams as the backend allows: a few connections per backend).
    h2c = H2BackendPool(reactor, reactor, idle_timeout=settings.pool_idle_timeout,
                        connect_timeout=settings.connect_timeout)
    H2PoolService(h2c).setServiceParent(gateway.top)
    router = gateway.domains.router if gateway.domains is not None else gateway.containers
    shared = dict(main_site=config["main-site"], containers=router, observer=gateway.observer,
                  admission=gateway.admission, http2_relay=H2BackendRelay(h2c))
    http = HTTPProxyFactory(gateway.live, pool, settings, reactor, scheme="http", **shared)
    http.doStart()
    https = HTTPProxyFactory(gateway.live, pool, settings, reactor, scheme="https",
                             misdirected=misdirected_check(gateway.live), **shared)
    gateway.top.http_factories = [http, https]
    return http, https


def build_tls_side(gateway: Gateway, https: HTTPProxyFactory) -> TLSListenerFactory:
    """Certificates, session tickets and the TLS handler (passthrough or terminated into C{https})."""
    config, reactor, top = gateway.config, gateway.reactor, gateway.top
    tickets = build_tickets(reactor, enabled=not config["no-tls-tickets"], keys_file=config["tls-ticket-keys"],
                            rotation=config["tls-ticket-rotation"], check_interval=config["cert-check-interval"])
    if tickets.service is not None:
        tickets.service.setServiceParent(top)
    inner, alpn = build_terminated_protocols(gateway, https)
    tls = build_tls(gateway.live, inner, reactor, tls_dirs=config["tls-dir"], default_cert=config["default-cert"],
                    dev_cert_dir=config["dev-cert-dir"], check_interval=config["cert-check-interval"],
                    hello_timeout=config["tls-hello-timeout"], connect_timeout=gateway.settings.connect_timeout,
                    idle_timeout=config["tcp-idle-timeout"], handshake_timeout=config["tls-handshake-timeout"],
                    containers=gateway.containers, container_proxy_protocol=config["container-proxy-protocol"],
                    tickets=tickets, observer=gateway.observer, admission=gateway.admission, alpn=alpn,
                    sni_hook=gateway.domains.sni if gateway.domains is not None else None)
    tls.service.setServiceParent(top)
    gateway.monitoring.tls(tls.store, tls.service, tls.factory.stats)
    gateway.monitoring.tickets(tickets.ring, tickets.service)
    return tls.factory


def build_terminated_protocols(gateway: Gateway, https: HTTPProxyFactory) -> tuple[Any, tuple[bytes, ...]]:
    """What speaks inside terminated TLS, and the ALPN names offered for it: HTTP/2 and HTTP/1.1 unless --no-http2."""
    config = gateway.config
    if config["no-http2"]:
        return https, (ALPN_PROTOCOL,)
    settings = h2_settings(config)
    chooser = ProtocolChooserFactory(https, lambda: H2ServerProtocol(https, settings), gateway.reactor,
                                     gateway.settings.header_timeout)
    return chooser, ALPN_WITH_H2


def h2_settings(config: Options) -> H2Settings:
    """The HTTP/2 server's settings from the --h2-* options."""
    return H2Settings(max_concurrent_streams=config["h2-max-streams"],
                      guard=GuardLimits(resets=config["h2-max-resets"]))


def build_plain_http(gateway: Gateway, http: HTTPProxyFactory) -> Any:
    """What serves sniffed plain HTTP: C{http}, behind the HTTP/2 preface check with --h2c-prior-knowledge."""
    config = gateway.config
    if not config["h2c-prior-knowledge"]:
        return http
    settings = h2_settings(config)
    return PriorKnowledgeFactory(http, lambda: H2ServerProtocol(http, settings, protocol="h2c"), gateway.reactor,
                                 gateway.settings.header_timeout)


def build_listeners(gateway: Gateway, handlers: dict[Verdict, Any], ssh: GatewaySSHFactory) -> None:
    """The sniffing listeners (--listen, --container-ports) and the SSH-only ones (--ssh-listen)."""
    config, reactor, top, admission = gateway.config, gateway.reactor, gateway.top, gateway.admission
    default = None if config["sniff-default"] == "close" else Verdict(config["sniff-default"].upper())
    raw = None
    if gateway.containers is not None:
        raw = RawTCPFactory(gateway.containers, reactor, connect_timeout=gateway.settings.connect_timeout,
                            idle_timeout=config["tcp-idle-timeout"], observer=gateway.observer)
    container_endpoints = set(config.container_endpoints())
    for endpoint in config.sniffing_endpoints():
        factory = SniffingFactory(handlers, default=default, timeout=config["sniff-timeout"], clock=reactor,
                                  listener_name=endpoint, admission=admission,
                                  raw=raw if endpoint in container_endpoints else None)
        option = "--container-ports" if endpoint in container_endpoints else "--listen"
        top.add_listener(listener_service(option, endpoint, factory, reactor), factory.tracker)
        gateway.monitoring.listener(factory)
    for endpoint in config["ssh-listen"]:
        tracker = ConnectionTracker(endpoint)
        tracked = TrackedFactory(ssh, tracker, admission, behind_proxy=endpoint.startswith("haproxy:"))
        top.add_listener(listener_service("--ssh-listen", endpoint, tracked, reactor), tracker)
        gateway.monitoring.plain_listener(tracker, "ssh")
