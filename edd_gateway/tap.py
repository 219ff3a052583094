"""
``twistd edd-gateway``: the command line (L{Options}) and the service tree
(L{makeService}).

Importing this module installs Twisted's asyncio reactor (on uvloop when it
is installed) unless a reactor is already installed: nats-py needs asyncio,
and twistd imports a plugin's tap module before it installs its default
reactor, so this is the one place the choice can be made for the user.
"""

from __future__ import annotations

import signal
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage


def install_reactor() -> None:
    """Install the gateway's asyncio reactor (uvloop when available), if none is."""
    from edd_gateway._reactor import install

    install()


install_reactor()

from edd_gateway.http.server import HTTPProxyFactory  # noqa: E402
from edd_gateway.http.settings import ProxySettings, parse_networks  # noqa: E402
from edd_gateway.http.upstream import UpstreamPool  # noqa: E402
from edd_gateway.routes.loader import RoutesFileError, load_routes_file  # noqa: E402
from edd_gateway.routes.table import LiveRouteTable, RouteTable  # noqa: E402
from edd_gateway.sniff import SniffingFactory, Verdict  # noqa: E402
from edd_gateway.tls.authority import misdirected_check  # noqa: E402
from edd_gateway.tls.service import DEFAULT_CHECK_INTERVAL, DEFAULT_DEV_CERT_DIR, build_tls  # noqa: E402
from edd_gateway.watch import FileWatcher  # noqa: E402

log = Logger()

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


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
        ["tunnel-idle-timeout", None, 3600.0, "Seconds a WebSocket/upgrade tunnel may stay silent.", float],
        ["max-request-line", None, 8192, "Longest request target accepted, in bytes (414 beyond).", int],
        ["max-header-size", None, 32768, "Largest request head accepted, in bytes (431 beyond).", int],
        ["max-headers", None, 100, "Most request header fields accepted (431 beyond).", int],
        ["max-body-size", None, 0, "Largest request body accepted, in bytes; 0 is unlimited (413 beyond).", int],
        ["pool-max-idle", None, 64, "Idle keep-alive connections kept per backend.", int],
        ["pool-max-per-backend", None, 512, "Connections (busy and idle) per backend.", int],
        ["pool-idle-timeout", None, 60.0, "Seconds an idle backend connection is kept.", float],
        ["default-cert", None, None, "The name whose certificate TLS clients without SNI or with an unknown one get."],
        ["dev-cert-dir", None, DEFAULT_DEV_CERT_DIR,
         "Without --tls-dir: where the self-signed development certificate is kept (made on first start)."],
        ["cert-check-interval", None, DEFAULT_CHECK_INTERVAL,
         "Seconds between checks of the --tls-dir directories for renewed certificates.", float],
        ["tls-hello-timeout", None, 10.0, "Seconds for a TLS client to send its whole ClientHello.", float],
        ["main-site", None, None, "A URL where requests whose Host is an IP address no route names are redirected."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []
        self["tls-dir"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A server endpoint string to listen on, e.g. tcp:80 (repeatable; every listener sniffs)."""
        self["listen"].append(endpoint)

    def opt_trusted_proxy(self, network: str) -> None:
        """An address or CIDR whose X-Forwarded-* headers are kept (repeatable)."""
        self["trusted-proxy"].append(network)

    def opt_tls_dir(self, directory: str) -> None:
        """A TLS secret directory (tls.crt, tls.key) or a parent of several (repeatable)."""
        self["tls-dir"].append(directory)

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
            tunnel_idle_timeout=self["tunnel-idle-timeout"],
            pool_max_idle=self["pool-max-idle"],
            pool_max_per_backend=self["pool-max-per-backend"],
            pool_idle_timeout=self["pool-idle-timeout"],
            trusted_proxies=self["trusted-proxy"],
        )


class RoutesService(service.Service):
    """
    Keeps the live route table in step with the routes file: re-read when
    it changes (a ConfigMap update included) and on SIGHUP; a bad version
    keeps the last good table.
    """

    def __init__(self, path: str, live: LiveRouteTable, clock: Any, interval: float) -> None:
        self.path = path
        self.live = live
        self.watcher = FileWatcher(path, self.reload, clock, interval)
        self._reactor = clock

    def reload(self) -> bool:
        try:
            table = RouteTable(load_routes_file(self.path))
        except RoutesFileError as problem:
            for line in str(problem).splitlines():
                log.error("routes: {problem}; keeping the last good table", problem=line)
            return False
        except OSError as problem:
            log.error("routes: cannot read {path}: {problem}; keeping the last good table",
                      path=self.path, problem=problem)
            return False
        self.live.swap(table)
        log.info("routes: loaded {count} routes from {path}", count=len(table), path=self.path)
        return True

    def startService(self) -> None:
        super().startService()
        self.watcher.startService()
        loop = getattr(self._reactor, "_asyncioEventloop", None)
        if loop is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def stopService(self) -> None:
        loop = getattr(self._reactor, "_asyncioEventloop", None)
        if loop is not None and hasattr(signal, "SIGHUP"):
            loop.remove_signal_handler(signal.SIGHUP)
        self.watcher.stopService()
        return super().stopService()

    def _sighup(self) -> None:
        log.info("routes: SIGHUP, re-reading {path}", path=self.path)
        self.watcher.check_now()


class PoolService(service.Service):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        self.pool.stop()
        return super().stopService()


def load_initial_routes(path: str) -> RouteTable:
    """The first table: an invalid file stops the start with file:line: reason."""
    try:
        return RouteTable(load_routes_file(path))
    except RoutesFileError as problem:
        raise SystemExit(f"edd-gateway: invalid routes file\n{problem}") from None
    except OSError as problem:
        raise SystemExit(f"edd-gateway: cannot read the routes file {path}: {problem}") from None


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise SystemExit(
            "edd-gateway: needs the asyncio reactor (nats-py runs on asyncio); "
            "run it without --reactor, or with --reactor=asyncio"
        )
    settings = config.settings()
    live = LiveRouteTable(load_initial_routes(config["routes"]))
    log.info("routes: loaded {count} routes from {path}", count=len(live.current), path=config["routes"])
    top = service.MultiService()
    pool = UpstreamPool(
        reactor, reactor,
        max_idle=settings.pool_max_idle,
        max_per_backend=settings.pool_max_per_backend,
        idle_timeout=settings.pool_idle_timeout,
    )
    PoolService(pool).setServiceParent(top)
    RoutesService(config["routes"], live, reactor, config["reload-interval"]).setServiceParent(top)
    http = HTTPProxyFactory(live, pool, settings, reactor, scheme="http", main_site=config["main-site"])
    http.doStart()
    https = HTTPProxyFactory(live, pool, settings, reactor, scheme="https", main_site=config["main-site"],
                             misdirected=misdirected_check(live))
    tls = build_tls(
        live, https, reactor,
        tls_dirs=config["tls-dir"], default_cert=config["default-cert"], dev_cert_dir=config["dev-cert-dir"],
        check_interval=config["cert-check-interval"], hello_timeout=config["tls-hello-timeout"],
        connect_timeout=settings.connect_timeout, idle_timeout=settings.tunnel_idle_timeout,
    )
    tls.service.setServiceParent(top)
    default = None if config["sniff-default"] == "close" else Verdict(config["sniff-default"].upper())
    for endpoint in config["listen"]:
        factory = SniffingFactory(
            handlers={Verdict.HTTP: http, Verdict.TLS: tls.factory},
            default=default,
            timeout=config["sniff-timeout"],
            clock=reactor,
            listener_name=endpoint,
        )
        strports.service(endpoint, factory, reactor=reactor).setServiceParent(top)
    return top


__all__ = ["Options", "makeService", "install_reactor"]
