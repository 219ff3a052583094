"""
``twistd edd-gateway``: the command line (L{Options}) and the service tree
(L{makeService}).

Importing this module installs Twisted's asyncio reactor (on uvloop when it
is installed) unless a reactor is already installed: nats-py needs asyncio,
and twistd imports a plugin's tap module before it installs its default
reactor, so this is the one place the choice can be made for the user.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage


def install_reactor() -> None:
    """Install the gateway's asyncio reactor (uvloop when available), if none is."""
    from edd_gateway.runtime.reactor import install

    install()


install_reactor()

from edd_gateway.ops.logs import AccessLog  # noqa: E402
from edd_gateway.front.listeners import check_endpoint, install_start_failure_hook, listener_service  # noqa: E402
from edd_gateway.ops.admin import Readiness, admin_site  # noqa: E402
from edd_gateway.front import admission as _admission  # noqa: E402
from edd_gateway.runtime.gc import settle_heap  # noqa: E402
from edd_gateway.runtime.rlimit import raise_open_file_limit  # noqa: E402
from edd_gateway.routes.containers import ContainerRouter, normalize_container_domain  # noqa: E402
from edd_gateway.routes.containers import ADDRESS_MODES, DEFAULT_SERVICE_DNS, EXTERNAL_IP, ContainerAddressing  # noqa: E402
from edd_gateway.routes.containers import parse_port_map, parse_port_range  # noqa: E402
from edd_gateway.front.drain import ConnectionTracker, GatewayService, TrackedFactory  # noqa: E402
from edd_gateway.http.factory import HTTPProxyFactory  # noqa: E402
from edd_gateway.h2.guard import GuardLimits  # noqa: E402
from edd_gateway.h2.negotiate import ProtocolChooserFactory  # noqa: E402
from edd_gateway.h2.server import H2ServerProtocol, H2Settings  # noqa: E402
from edd_gateway.tls.context import ALPN_PROTOCOL, ALPN_WITH_H2  # noqa: E402
from edd_gateway.http.settings import ProxySettings, parse_networks  # noqa: E402
from edd_gateway.http.upstream import PoolService, UpstreamPool  # noqa: E402
from edd_gateway.ops.metrics import GatewayMetrics  # noqa: E402
from edd_gateway.ops.monitoring import Monitoring  # noqa: E402
from edd_gateway.ops.observe import GatewayObserver, Observers  # noqa: E402
from edd_gateway.front.rawtcp import RawTCPFactory  # noqa: E402
from edd_gateway.routes.loader import RoutesFileError, load_routes_file  # noqa: E402
from edd_gateway.routes.model import Route  # noqa: E402
from edd_gateway.routes.service import RoutesService  # noqa: E402
from edd_gateway.routes.table import LiveRouteTable, RouteTable  # noqa: E402
from edd_gateway.front.sniff import SniffingFactory, Verdict  # noqa: E402
from edd_gateway.net.proxyprotocol import parse_version as proxy_protocol_version  # noqa: E402
from edd_gateway.ssh import DEFAULT_CLIENT_KEY, DEFAULT_HOST_KEY, KeyFileError, SSHSettings  # noqa: E402
from edd_gateway.ssh import GatewaySSHFactory, HostKeyPins, build_ssh_factory  # noqa: E402
from edd_gateway.ssh.pinning import FORGET_COMMAND, HostKeyPolicy, parse_host_key_policy  # noqa: E402
from edd_gateway.ssh import algorithms as ssh_algorithms  # noqa: E402
from edd_gateway.state.changefeed import ChangeFeedListener  # noqa: E402
from edd_gateway.state.localfile import ContainersFileError, LocalContainersSource  # noqa: E402
from edd_gateway.state.localfile import LocalPinStore, load_containers_file  # noqa: E402
from edd_gateway.state.localfile import DEFAULT_STATE_FILE  # noqa: E402
from edd_gateway.state.model import ContainerDirectory, ContainerSnapshot  # noqa: E402
from edd_gateway.state.nats import NatsEventFeed  # noqa: E402
from edd_gateway.state.postgres import PostgresDatabase  # noqa: E402
from edd_gateway.state.service import DEFAULT_RESYNC_INTERVAL, StateService  # noqa: E402
from edd_gateway.tls.authority import misdirected_check  # noqa: E402
from edd_gateway.tls.service import DEFAULT_CHECK_INTERVAL, DEFAULT_DEV_CERT_DIR, build_tickets, build_tls  # noqa: E402
from edd_gateway.tls.listener import TLSListenerFactory  # noqa: E402
from edd_gateway.tls.tickets import DEFAULT_ROTATION as DEFAULT_TICKET_ROTATION  # noqa: E402

log = Logger()

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
#: Loopback only by default: the admin endpoint is for the node's probes and scrapers.
DEFAULT_ADMIN = "tcp:9180:interface=127.0.0.1"


def default_routes_path() -> str:
    """The embedded default routes file shipped inside the package."""
    return str(files("edd_gateway") / "data" / "default-routes.yaml")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the edd cloud gateway.  Without options it serves the embedded "
        "default: the welcome page on http://127.0.0.1:8080/, and on "
        "https:// with a self-signed development certificate."
    )
    optParameters: list[list[Any]] = [
        ["routes", "r", None, "The routes file (YAML, or the gateway-routes ConfigMap manifest).", str],
        ["sniff-timeout", None, 3.0, "Seconds to wait for a client's first bytes.", float],
        ["sniff-default", None, "close", "What a silent client gets after --sniff-timeout: close, http, tls or ssh."],
        ["reload-interval", None, 1.0, "Seconds between checks of the routes file for changes.", float],
        ["header-timeout", None, 10.0, "Seconds for a request head to arrive (408 after).", float],
        ["keepalive-timeout", None, 60.0, "Seconds an idle keep-alive client connection is kept.", float],
        ["connect-timeout", None, 5.0, "Seconds to connect to a backend (504 after).", float],
        ["response-timeout", None, 60.0, "Seconds for a backend to start answering (504 after).", float],
        ["websocket-idle-timeout", None, None, "Seconds a WebSocket tunnel or a streamed response may move "
         "nothing (default 3600).", float],
        ["tcp-idle-timeout", None, None, "Seconds a TCP tunnel (TLS passthrough, raw TCP on container ports) may move nothing "
         "(default 3600).", float],
        ["tunnel-idle-timeout", None, None, "Deprecated: sets both --websocket-idle-timeout and --tcp-idle-timeout.",
         float],
        ["max-request-line", None, 8192, "Longest request target accepted, in bytes (414 beyond).", int],
        ["max-header-size", None, 32768, "Largest request head accepted, in bytes (431 beyond).", int],
        ["max-headers", None, 100, "Most request header fields accepted (431 beyond).", int],
        ["max-body-size", None, 0, "Largest request body accepted, in bytes; 0 is unlimited (413 beyond).", int],
        ["pool-max-idle", None, 64, "Idle keep-alive connections kept per backend.", int],
        ["pool-max-per-backend", None, 512, "Connections (busy and idle) per backend.", int],
        ["pool-idle-timeout", None, 60.0, "Seconds an idle backend connection is kept.", float],
        ["body-buffer-size", None, 65536, "Request bodies up to this many bytes are read whole before a backend "
         "connection is taken; 0 streams every body.", int],
        ["body-timeout", None, 30.0, "Seconds a request body may go without a byte before it gets 408.", float],
        ["body-streams-per-client", None, 8, "Backend connections one client address may hold per backend while "
         "its larger request bodies are still arriving (429 beyond); 0 is no cap.", int],
        ["default-cert", None, None, "The name whose certificate TLS clients without SNI or with an unknown one get."],
        ["dev-cert-dir", None, DEFAULT_DEV_CERT_DIR,
         "Without --tls-dir: where the self-signed development certificate is kept (made on first start)."],
        ["cert-check-interval", None, DEFAULT_CHECK_INTERVAL,
         "Seconds between checks of the --tls-dir directories for renewed certificates.", float],
        ["tls-hello-timeout", None, 10.0, "Seconds for a TLS client to send its whole ClientHello.", float],
        ["tls-ticket-keys", None, None, "A file of TLS session ticket keys shared by the replicas (HAProxy's "
         "tls-ticket-keys format: base64 48- or 80-byte keys, one a line, oldest first), re-read when it changes."],
        ["tls-ticket-rotation", None, DEFAULT_TICKET_ROTATION, "Without --tls-ticket-keys: seconds between two "
         "in-memory ticket keys (the 2 previous ones still decrypt).", float],
        ["tls-handshake-timeout", None, 10.0, "Seconds for a terminated TLS client to finish the handshake "
         "after its ClientHello.", float],
        ["main-site", None, None, "A URL where requests whose Host is an IP address no route names are redirected."],
        ["database", None, None, "PostgreSQL DSN or URL: containers, static_routes (default: $DATABASE_URL)."],
        ["compute-database", None, None, "DSN of the compute service's tables when not in --database's database."],
        ["nats", None, None, "NATS server URL(s), comma-separated: container events (needs --database)."],
        ["nats-durable", None, "gateway-service", "The JetStream durable consumer on the COMPUTE stream; a replica "
         "that finds it bound to another uses plain subscriptions."],
        ["poll-interval", None, 5.0, "Seconds between full reads of PostgreSQL while no feed (the database's "
         "change feed, NATS) is active.", float],
        ["resync-interval", None, DEFAULT_RESYNC_INTERVAL, "Seconds between full reads while a feed is active, "
         "a net for a silent feed (0: never).", float],
        ["containers", None, None, "Without --database: a YAML file of containers, re-read when it changes."],
        ["state-file", None, DEFAULT_STATE_FILE, "Without --database: where pinned container SSH host keys are kept."],
        ["container-domain", None, None, "Route <container-id>.DOMAIN (Host or SNI) to that container."],
        ["container-ports", None, None, "Open sniffing listeners on this port range, e.g. 8000-8999."],
        ["container-interface", None, "127.0.0.1", "The address --container-ports listeners bind (0.0.0.0, ::)."],
        ["ssh-host-key", None, DEFAULT_HOST_KEY, "The gateway's Ed25519 SSH host key (generated when missing)."],
        ["ssh-rsa-host-key", None, None, "An RSA SSH host key too, for old clients (generated when missing)."],
        ["ssh-client-key", None, DEFAULT_CLIENT_KEY, "The key the gateway logs in to containers with."],
        ["ssh-port", None, 22, "The port of the containers' sshd.", int],
        ["ssh-connect-timeout", None, 10.0, "Seconds to connect and log in to a container's sshd.", float],
        ["ssh-login-grace-time", None, 30.0, "Seconds a user has, from connecting, to log in.", float],
        ["ssh-host-key-policy", None, HostKeyPolicy.PIN_PER_RUN.value, "Containers' SSH host keys: pin-per-run "
         "(pinned while a container runs, afresh when it starts again), pin (for good) or ignore (not checked)."],
        ["container-address", None, EXTERNAL_IP, "Where containers are dialled: external-ip (the row's "
         "external_ip) or service-dns (--container-service-dns), on the rule's target port or the sshd port."],
        ["container-service-dns", None, DEFAULT_SERVICE_DNS, "With --container-address service-dns: the host "
         "name, from {namespace}, {id} and {user_id}."],
        ["admin", None, DEFAULT_ADMIN, "The admin endpoint: /healthz, /readyz, /metrics ('none': no endpoint)."],
        ["drain-timeout", None, 30.0, "Seconds connections get to finish after SIGTERM before they are closed.",
         float],
        ["container-proxy-protocol", None, None, "PROXY protocol header (none, v1 or v2; default none) first on "
         "TLS passed through to containers.", proxy_protocol_version],
        ["ssh-kex", None, None, "SSH key exchanges offered, comma-separated, preferred first (a subset of "
         + ",".join(n.decode() for n in ssh_algorithms.KEX) + ")."],
        ["ssh-ciphers", None, None, "SSH ciphers offered, comma-separated, preferred first (a subset of "
         + ",".join(n.decode() for n in ssh_algorithms.CIPHERS) + ")."],
        ["ssh-macs", None, None, "SSH MACs offered with the CTR ciphers, comma-separated, preferred first (a "
         "subset of " + ",".join(n.decode() for n in ssh_algorithms.MACS) + ")."],
        ["ssh-proxy-protocol", None, None, "PROXY protocol header (none, v1 or v2; default none) first on the "
         "connection to containers' sshd (stock OpenSSH reads none).", proxy_protocol_version],
        ["h2-max-streams", None, 128, "HTTP/2 streams a client may have open at once on one connection "
         "(SETTINGS_MAX_CONCURRENT_STREAMS).", int],
        ["h2-max-resets", None, 200, "HTTP/2 streams a client may reset within 10 s before the connection gets "
         "GOAWAY ENHANCE_YOUR_CALM (the rapid-reset attack, CVE-2023-44487).", int],
        *_admission.OPTIONS,
    ]

    optFlags: list[list[Any]] = [
        ["no-access-log", None, "Log no line per HTTP request, tunnel and SSH session."],
        ["allow-underscore-headers", None, "Pass request header names with an underscore to backends "
         "(dropped by default: CGI/WSGI backends read Transfer_Encoding as Transfer-Encoding)."],
        ["no-tls-tickets", None, "Issue no TLS session tickets (TLS 1.2 resumes by session id, TLS 1.3 by "
         "stateful tickets, on this replica only)."],
        ["ssh-allow-sha1-rsa", None, "Accept SHA-1 ssh-rsa signatures from users' RSA keys, and offer ssh-rsa "
         "for an RSA host key (off: rsa-sha2-256/512 only)."],
        ["no-http2", None, "Speak HTTP/1.1 only inside terminated TLS (no ALPN h2)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []
        self["tls-dir"] = []
        self["ssh-listen"] = []
        self["port-map"] = []
        self["ban-allow"] = []

    _refused = False

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            # twistd prints the options' usage before the error: for a bad
            # value that is a screenful hiding the one line that matters.
            self._refused = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        if self._refused:
            return "(twistd edd-gateway --help lists every option)"
        return super().getUsage(width)

    def opt_listen(self, endpoint: str) -> None:
        """A server endpoint string to listen on, e.g. tcp:80 (repeatable; every listener sniffs)."""
        self["listen"].append(check_endpoint("--listen", endpoint))

    def opt_trusted_proxy(self, network: str) -> None:
        """An address or CIDR whose X-Forwarded-* headers are kept (repeatable)."""
        self["trusted-proxy"].append(network)

    def opt_tls_dir(self, directory: str) -> None:
        """A TLS secret directory (tls.crt, tls.key) or a parent of several (repeatable)."""
        self["tls-dir"].append(directory)

    def opt_ssh_listen(self, endpoint: str) -> None:
        """A server endpoint string for SSH alone, e.g. tcp:2222 (repeatable)."""
        self["ssh-listen"].append(check_endpoint("--ssh-listen", endpoint))

    def opt_port_map(self, mapping: str) -> None:
        """BIND=EXTERNAL: a listener on port BIND is reached by clients on EXTERNAL (repeatable)."""
        self["port-map"].append(mapping)

    def opt_ban_allow(self, network: str) -> None:
        """An address or CIDR never refused nor banned (repeatable; default 127.0.0.1 and ::1; 'none': nobody)."""
        self["ban-allow"].append(network)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["routes"] is None:
            self["routes"] = default_routes_path()
        if self["sniff-default"] not in ("close", "http", "tls", "ssh"):
            raise usage.UsageError("--sniff-default must be close, http, tls or ssh")
        try:
            self["trusted-proxy"] = parse_networks(self["trusted-proxy"])
        except ValueError as problem:
            raise usage.UsageError(f"--trusted-proxy: {problem}") from None
        main_site = self["main-site"]
        if main_site is not None:
            parts = urlsplit(main_site)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise usage.UsageError(f"--main-site must be an http:// or https:// URL, not {main_site!r}")
        self._check_state_options()
        self._check_container_options()
        if not 1 <= self["ssh-port"] <= 65535:
            raise usage.UsageError("--ssh-port must be a port (1-65535)")
        try:
            self["ssh-host-key-policy"] = parse_host_key_policy(self["ssh-host-key-policy"])
        except ValueError as problem:
            raise usage.UsageError(f"--ssh-host-key-policy: {problem}") from None
        for name, kind in (("ssh-kex", "kex"), ("ssh-ciphers", "cipher"), ("ssh-macs", "mac")):
            if isinstance(self[name], str):
                try:
                    self[name] = ssh_algorithms.parse_algorithm_list(kind, self[name])
                except ValueError as problem:
                    raise usage.UsageError(str(problem)) from None
        if self["drain-timeout"] < 0:
            raise usage.UsageError("--drain-timeout must not be negative")
        for name in ("body-buffer-size", "body-streams-per-client"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        if self["body-timeout"] <= 0:
            raise usage.UsageError("--body-timeout must be more than 0 seconds")
        if self["tls-ticket-rotation"] <= 0:
            raise usage.UsageError("--tls-ticket-rotation must be positive")
        if self["no-tls-tickets"] and self["tls-ticket-keys"] is not None:
            raise usage.UsageError("--no-tls-tickets and --tls-ticket-keys: give one or the other")
        if self["admin"].lower() == "none":
            self["admin"] = None
        else:
            check_endpoint("--admin", self["admin"])
        _admission.check_options(self)
        for name in ("websocket-idle-timeout", "tcp-idle-timeout"):
            if self[name] is None:
                self[name] = self["tunnel-idle-timeout"] if self["tunnel-idle-timeout"] is not None else 3600.0

    def _check_state_options(self) -> None:
        source = {"database": "--database", "compute-database": "--compute-database"}
        if self["database"] is None:
            self["database"] = os.environ.get("DATABASE_URL") or None
            source["database"] = "DATABASE_URL"
        for name in ("database", "compute-database"):
            if self[name] is not None:
                _check_dsn(source[name], self[name])
        if self["database"] is None:
            for name in ("compute-database", "nats"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} needs --database (or DATABASE_URL)")
        elif self["containers"] is not None:
            raise usage.UsageError("--containers is for running without a database: give one or the other")
        if self["poll-interval"] <= 0 or self["resync-interval"] < 0:
            raise usage.UsageError("--poll-interval must be positive and --resync-interval not negative")

    def _check_container_options(self) -> None:
        try:
            if self["container-domain"] is not None:
                self["container-domain"] = normalize_container_domain(self["container-domain"])
            self["port-map"] = parse_port_map(self["port-map"])
            ports = self["container-ports"]
            self["container-ports"] = parse_port_range(ports) if ports is not None else range(0)
        except ValueError as problem:
            raise usage.UsageError(f"container routing: {problem}") from None
        if self["container-address"] not in ADDRESS_MODES:
            raise usage.UsageError(f"--container-address must be {' or '.join(ADDRESS_MODES)}")
        try:
            self.addressing()
        except ValueError as problem:
            raise usage.UsageError(f"--container-service-dns: {problem}") from None
        if self["container-address"] == EXTERNAL_IP and self["container-service-dns"] != DEFAULT_SERVICE_DNS:
            raise usage.UsageError("--container-service-dns needs --container-address service-dns")

    def settings(self) -> ProxySettings:
        return ProxySettings(
            max_request_line=self["max-request-line"],
            max_header_bytes=self["max-header-size"],
            max_headers=self["max-headers"],
            max_body_size=self["max-body-size"],
            header_timeout=self["header-timeout"],
            keepalive_timeout=self["keepalive-timeout"],
            connect_timeout=self["connect-timeout"],
            response_timeout=self["response-timeout"],
            websocket_idle_timeout=self["websocket-idle-timeout"],
            pool_max_idle=self["pool-max-idle"],
            pool_max_per_backend=self["pool-max-per-backend"],
            pool_idle_timeout=self["pool-idle-timeout"],
            body_buffer_size=self["body-buffer-size"],
            body_timeout=self["body-timeout"],
            body_streams_per_client=self["body-streams-per-client"],
            trusted_proxies=self["trusted-proxy"],
            allow_underscore_headers=bool(self["allow-underscore-headers"]),
        )

    def ssh_settings(self) -> SSHSettings:
        return SSHSettings(ssh_port=self["ssh-port"], login_grace_time=self["ssh-login-grace-time"],
                           connect_timeout=self["ssh-connect-timeout"],
                           proxy_protocol=self["ssh-proxy-protocol"],
                           host_key_policy=self["ssh-host-key-policy"], forget_command=self.forget_command(),
                           allow_sha1_rsa=bool(self["ssh-allow-sha1-rsa"]), algorithms=self.ssh_algorithms())

    def ssh_algorithms(self) -> ssh_algorithms.Algorithms:
        """C{--ssh-kex}, C{--ssh-ciphers}, C{--ssh-macs}: the defaults unless narrowed."""
        default = ssh_algorithms.Algorithms()
        return ssh_algorithms.Algorithms(kex=self["ssh-kex"] or default.kex,
                                         ciphers=self["ssh-ciphers"] or default.ciphers,
                                         macs=self["ssh-macs"] or default.macs)

    def addressing(self) -> ContainerAddressing:
        """Where containers are dialled (HTTP, TLS passthrough, raw TCP, SSH)."""
        return ContainerAddressing(self["container-address"], self["container-service-dns"])

    def forget_command(self) -> str:
        """The operator command a refused host key names: where this gateway's pins are."""
        if self["database"] is not None:
            return FORGET_COMMAND + " --database DSN"
        return FORGET_COMMAND + " --state-file " + shlex.quote(self["state-file"])

    def container_endpoints(self) -> list[str]:
        """A listener per --container-ports port."""
        interface = self["container-interface"].replace(":", "\\:")
        return [f"tcp:{port}:interface={interface}" for port in self["container-ports"]]

    def sniffing_endpoints(self) -> list[str]:
        """Every --listen, then a listener per --container-ports port."""
        return [*self["listen"], *self.container_endpoints()]


#: libpq's values the gateway can check before connecting (the rest libpq
#: checks at the first connection): what each must be.
_DSN_INTEGERS = {"port": (1, 65535), "connect_timeout": (0, 2**31 - 1), "keepalives_idle": (0, 2**31 - 1)}
_DSN_CHOICES = {"sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")}


def _check_dsn(source: str, dsn: str) -> None:
    """
    Refuse a DSN libpq would only refuse at the first connection, and go on
    retrying: C{source} (C{--database}, C{DATABASE_URL}) and the key at fault
    in the message, never the value of another key (the password).
    """
    from psycopg2.extensions import parse_dsn

    try:
        keys = parse_dsn(dsn)
    except Exception:
        # libpq's reason quotes pieces of the DSN, which may hold a password.
        raise usage.UsageError(f"{source} is not a PostgreSQL DSN (key=value ...) or postgresql:// URL") from None
    for key, (low, high) in _DSN_INTEGERS.items():
        for value in keys.get(key, "").split(",") if key in keys else ():
            if not (value.isdigit() and low <= int(value) <= high):
                raise usage.UsageError(f"{source}: {key} {value!r} is not a number from {low} to {high}")
    for key, choices in _DSN_CHOICES.items():
        if key in keys and keys[key] not in choices:
            raise usage.UsageError(f"{source}: {key} {keys[key]!r} is not one of {', '.join(choices)}")


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
        return LiveState(directory, database, state.set_file_routes, state)
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


def makeService(config: Options, reactor: Any = None) -> GatewayService:
    """The service tree; C{reactor} is the installed (asyncio) one unless a test injects another."""
    if reactor is None:
        # The process's own reactor (twistd), not a test's: tune the
        # collector once everything loaded at start is alive, in the loop's
        # first turn (callWhenRunning alone runs before the loop does, and a
        # signal sent in that gap waits for the next one to be handled).
        reactor = installed_asyncio_reactor()
        reactor.callWhenRunning(reactor.callLater, 0, settle_heap)
    install_start_failure_hook()
    gateway = build_core(config, reactor)
    http, https = build_http(gateway)
    tls = build_tls_side(gateway, https)
    ssh = build_ssh(config, gateway.state, reactor, observer=gateway.observer, admission=gateway.admission)
    gateway.monitoring.ssh_keys()
    build_listeners(gateway, {Verdict.HTTP: http, Verdict.TLS: tls, Verdict.SSH: ssh}, ssh)
    if config["admin"] is not None:
        # A plain child, not a listener: probes and scrapes go on while draining.
        listener_service("--admin", config["admin"], admin_site(gateway.metrics.registry, gateway.readiness),
                         reactor).setServiceParent(gateway.top)
    return gateway.top


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
    return Gateway(config, reactor, top, metrics, readiness, monitoring, settings, live, admission, observer, state,
                   containers)


def build_http(gateway: Gateway) -> tuple[HTTPProxyFactory, HTTPProxyFactory]:
    """The backend pool and the HTTP proxy's two factories: plain (sniffed HTTP) and inside terminated TLS."""
    config, reactor, settings = gateway.config, gateway.reactor, gateway.settings
    pool = UpstreamPool(reactor, reactor, max_idle=settings.pool_max_idle,
                        max_per_backend=settings.pool_max_per_backend, idle_timeout=settings.pool_idle_timeout,
                        max_streams_per_client=settings.body_streams_per_client)
    PoolService(pool).setServiceParent(gateway.top)
    shared = dict(main_site=config["main-site"], containers=gateway.containers, observer=gateway.observer,
                  admission=gateway.admission)
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
                    tickets=tickets, observer=gateway.observer, admission=gateway.admission, alpn=alpn)
    tls.service.setServiceParent(top)
    gateway.monitoring.tls(tls.store, tls.service, tls.factory.stats)
    gateway.monitoring.tickets(tickets.ring, tickets.service)
    return tls.factory


def build_terminated_protocols(gateway: Gateway, https: HTTPProxyFactory) -> tuple[Any, tuple[bytes, ...]]:
    """What speaks inside terminated TLS, and the ALPN names offered for it: HTTP/2 and HTTP/1.1 unless --no-http2."""
    config = gateway.config
    if config["no-http2"]:
        return https, (ALPN_PROTOCOL,)
    settings = H2Settings(max_concurrent_streams=config["h2-max-streams"],
                          guard=GuardLimits(resets=config["h2-max-resets"]))
    chooser = ProtocolChooserFactory(https, lambda: H2ServerProtocol(https, settings), gateway.reactor,
                                     gateway.settings.header_timeout)
    return chooser, ALPN_WITH_H2


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


__all__ = [
    "Gateway", "LiveState", "Options", "build_core", "build_http", "build_listeners", "build_observer", "build_ssh",
    "build_state", "build_tls_side", "install_reactor", "makeService",
]
