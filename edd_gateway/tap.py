"""
``twistd edd-gateway``: the command line (L{Options}) and the service tree
(L{makeService}).

The options are grouped by concern in L{edd_gateway.options}; the service
tree is put together from the builders of L{edd_gateway.assembly}.

Importing this module installs Twisted's asyncio reactor (on uvloop when it
is installed) unless a reactor is already installed: nats-py needs asyncio,
and twistd imports a plugin's tap module before it installs its default
reactor, so this is the one place the choice can be made for the user.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from twisted.python import usage


def install_reactor() -> None:
    """Install the gateway's asyncio reactor (uvloop when available), if none is."""
    from edd_gateway.runtime.reactor import install

    install()


install_reactor()

from edd_gateway.assembly import (  # noqa: E402
    build_core, build_http, build_listeners, build_plain_http, build_ssh, build_tls_side)
from edd_gateway.assembly import installed_asyncio_reactor  # noqa: E402
from edd_gateway.front import admission as _admission  # noqa: E402
from edd_gateway.front.drain import GatewayService  # noqa: E402
from edd_gateway.front.listeners import check_endpoint, install_start_failure_hook, listener_service  # noqa: E402
from edd_gateway.front.classify import Verdict  # noqa: E402
from edd_gateway.http.settings import ProxySettings  # noqa: E402
from edd_gateway.ops.admin import admin_site  # noqa: E402
from edd_gateway.options import DEFAULT_LISTEN, GROUPS  # noqa: E402
from edd_gateway.routes.containers import ContainerAddressing  # noqa: E402
from edd_gateway.runtime.gc import settle_heap  # noqa: E402
from edd_gateway.ssh import SSHSettings  # noqa: E402
from edd_gateway.ssh import algorithms as ssh_algorithms  # noqa: E402
from edd_gateway.ssh.pinning import FORGET_COMMAND  # noqa: E402


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
        *(parameter for group in GROUPS for parameter in group.parameters),
        *_admission.OPTIONS,
    ]
    optFlags: list[list[Any]] = [flag for group in GROUPS for flag in group.flags]

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
        for group in GROUPS:
            group.check(self)
        _admission.check_options(self)

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
    build_listeners(gateway, {Verdict.HTTP: build_plain_http(gateway, http), Verdict.TLS: tls, Verdict.SSH: ssh},
                    ssh)
    if config["admin"] is not None:
        # A plain child, not a listener: probes and scrapes go on while draining.
        listener_service("--admin", config["admin"], admin_site(gateway.metrics.registry, gateway.readiness),
                         reactor).setServiceParent(gateway.top)
    return gateway.top


__all__ = ["Options", "default_routes_path", "install_reactor", "makeService"]
