"""
Container routing: where a connection for C{<container-id>.<container-domain>}
goes.  The host (an HTTP Host header or a TLS SNI name) names the container;
the external port the connection arrived on (the listener's port, mapped
through C{--port-map} when the gateway sits behind a port translation)
selects the container's ingress rule; the backend is the container's
address (L{ContainerAddressing}: its C{external_ip}, or its Kubernetes
service's DNS name) and the rule's C{target_port}.

L{decide} is the pure decision over one directory snapshot; the parsers of
the command line's C{--port-map} and C{--container-ports} values live here
too.  L{ContainerAddressing} says where a container is dialled, for HTTP,
TLS passthrough, raw TCP and the SSH side alike.  L{ContainerRouter} is what the HTTP and TLS sides hold: it reads the
live directory at each decision and keeps nothing that could outlive a swap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Protocol, Union

from edd_gateway.http.errors import GatewayError
from edd_gateway.routes.model import Route, RouteMatch, Target
from edd_gateway.routes.normalize import normalize_hostname
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot, IngressRule

__all__ = [
    "ADDRESS_MODES", "DEFAULT_SERVICE_DNS", "EXTERNAL_IP", "HTTP_CACHE_SIZE", "NOT_READY", "NO_INGRESS",
    "SERVICE_DNS", "ContainerAddressing", "ContainerBackend", "ContainerDecision", "ContainerRefused",
    "ContainerRouter", "HostRouter", "container_id_for", "decide", "normalize_container_domain", "parse_port_map",
    "parse_port_range",
]

# A DNS label, as in the containers file and the SSH user names.
_CONTAINER_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_STATUS_WORD = re.compile(r"[a-z][a-z -]{0,30}")
NOT_READY = "the gateway is still loading the containers; try again in a moment"
NO_INGRESS = "no ingress rule for this port"
#: Most (container, port) decisions the HTTP side keeps between swaps.
HTTP_CACHE_SIZE = 65536

#: C{--container-address} values: dial the row's C{external_ip}, or the
#: container's service by its cluster DNS name.
EXTERNAL_IP = "external-ip"
SERVICE_DNS = "service-dns"
ADDRESS_MODES = (EXTERNAL_IP, SERVICE_DNS)
#: The compute service puts each container in its own namespace, with a
#: Service named C{lb} in front of its pod.
DEFAULT_SERVICE_DNS = "lb.{namespace}.svc.cluster.local"
_PLACEHOLDERS = ("namespace", "id", "user_id")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class ContainerAddressing:
    """
    Where a container is dialled (C{--container-address}): its
    C{external_ip} (C{external-ip}, the default), or C{template} filled in
    with its C{namespace}, C{id} and C{user_id} (C{service-dns}).  Every
    value a template uses must be a DNS label, else the container has no
    address (yet): a row's text never becomes anything but one label.

    @raise ValueError: from the constructor, naming what is wrong with
        C{mode} or C{template}.
    """

    mode: str = EXTERNAL_IP
    template: str = DEFAULT_SERVICE_DNS
    _fields: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ADDRESS_MODES:
            raise ValueError(f"{self.mode!r} is not one of {', '.join(ADDRESS_MODES)}")
        object.__setattr__(self, "_fields", _template_fields(self.template))

    def host(self, container: Container) -> str | None:
        """The host name or IP address to dial C{container} at, or None when it has none yet."""
        if self.mode == EXTERNAL_IP:
            return container.external_ip or None
        values = {}
        for name in self._fields:
            value = getattr(container, name).lower()
            if _LABEL.fullmatch(value) is None:
                return None
            values[name] = value
        return self.template.format_map(values)


def _template_fields(template: str) -> tuple[str, ...]:
    """The placeholders C{template} uses; ValueError unless it makes a DNS name from at least one."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as problem:
        raise ValueError(f"{template!r}: {problem}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in _PLACEHOLDERS or spec or conversion:
            raise ValueError(f"{template!r}: {{{name}}} is not one of "
                             + ", ".join(f"{{{p}}}" for p in _PLACEHOLDERS))
        fields.append(name)
    if not fields:
        raise ValueError(f"{template!r} names no container: use {{namespace}}, {{id}} or {{user_id}}")
    sample = template.format(namespace="compute-u1-abc123", id="abc123", user_id="u1")
    name = normalize_hostname(sample)
    if name is None or ":" in name or name.rpartition(".")[2].isdigit():
        raise ValueError(f"{template!r} does not make a DNS name (it makes {sample!r})")
    return tuple(dict.fromkeys(fields))


@dataclass(frozen=True, slots=True)
class ContainerBackend:
    """A connection for C{container} on C{external_port} goes to C{target}."""

    container: Container
    rule: IngressRule
    external_port: int
    target: Target

    def route(self, host: str, *, tls_passthrough: bool = False) -> Route:
        """A one-off route for this decision (built per connection or request, never cached)."""
        return Route(host, "/", self.target, tls_passthrough=tls_passthrough,
                     source=f"container {self.container.id} port {self.external_port}")


@dataclass(frozen=True, slots=True)
class ContainerRefused:
    """
    A container host that cannot be served: C{status} is the HTTP answer
    (503 for a container that is stopped, unknown or not loaded yet; 502 for
    a port without an ingress rule), C{reason} the sentence for the page,
    the log line and, on TLS, the log line alone.
    """

    status: int
    reason: str


ContainerDecision = Union[ContainerBackend, ContainerRefused]


def normalize_container_domain(domain: str) -> str:
    """C{--container-domain}, lower-cased without a trailing dot; ValueError when it is no DNS name."""
    name = normalize_hostname(domain.strip())
    if name is None or "." not in name or ":" in name or name.rpartition(".")[2].isdigit():
        raise ValueError(f"{domain!r} is not a DNS name with at least two labels")
    return name


def container_id_for(host: str, domain: str) -> str | None:
    """
    The container C{host} names (C{<id>.<domain>}, one label before the
    domain), or None.  C{host} and C{domain} are already normalised.
    """
    if len(host) <= len(domain) + 1 or not host.endswith(domain) or host[-len(domain) - 1] != ".":
        return None
    label = host[:-len(domain) - 1]
    return label if _CONTAINER_ID.fullmatch(label) else None


def decide(snapshot: ContainerSnapshot, container_id: str, external_port: int | None,
           addressing: ContainerAddressing = ContainerAddressing()) -> ContainerDecision:
    """Where a connection for C{container_id} arriving on C{external_port} goes, or why it cannot."""
    container = snapshot.get(container_id)
    if container is None:
        if not snapshot.ready:
            return ContainerRefused(503, NOT_READY)
        return ContainerRefused(503, f"no container {container_id}")
    if not container.running:
        status = container.status.strip().lower()
        return ContainerRefused(503, f"container {container_id} is "
                                     + (status if _STATUS_WORD.fullmatch(status) else "not running"))
    host = addressing.host(container)
    if host is None:
        return ContainerRefused(503, f"container {container_id} has no address yet")
    rule = container.ingress.get(external_port) if external_port is not None else None
    if rule is None or external_port is None:
        return ContainerRefused(502, NO_INGRESS)
    return ContainerBackend(container, rule, external_port, Target(host, rule.target_port))


def parse_port_map(items: Iterable[str]) -> dict[int, int]:
    """C{["8080=80", "8443=443"]}: listener (bind) port -> the external port clients used."""
    mapping: dict[int, int] = {}
    for item in items:
        bind, equals, external = item.partition("=")
        if not equals:
            raise ValueError(f"{item!r} is not BIND_PORT=EXTERNAL_PORT")
        bind_port, external_port = _port(bind, item), _port(external, item)
        if mapping.get(bind_port, external_port) != external_port:
            raise ValueError(f"port {bind_port} is mapped twice")
        mapping[bind_port] = external_port
    return mapping


def parse_port_range(text: str) -> range:
    """C{8000-8999} (both ends included) or a single port."""
    low, dash, high = text.strip().partition("-")
    first = _port(low, text)
    last = _port(high, text) if dash else first
    if last < first:
        raise ValueError(f"{text!r}: the range ends before it starts")
    return range(first, last + 1)


def _port(text: str, item: str) -> int:
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{item!r}: {text!r} is not a port (1-65535)")
    return int(text)


class HostRouter(Protocol):
    """
    What the HTTP side asks once no static route matched a host: a
    L{ContainerRouter}, or L{edd_gateway.domains.router.DomainRouter} (custom
    domains first, then the containers' names).
    """

    def under_domain(self, host: str) -> bool: ...
    def http_match(self, host: str, path: str, transport: Any) -> RouteMatch | None: ...


class ContainerRouter:
    """
    Container routing for one gateway: the domain, the port map and the
    live directory.  The HTTP and TLS factories hold one; static routes are
    asked first by their callers, so a route file entry keeps priority.
    """

    def __init__(self, directory: ContainerDirectory, domain: str, port_map: Mapping[int, int] | None = None,
                 addressing: ContainerAddressing = ContainerAddressing()) -> None:
        self.directory = directory
        self.domain = normalize_container_domain(domain)
        self.port_map = dict(port_map or {})
        self.addressing = addressing
        self._suffix = "." + self.domain
        # The HTTP side's decisions for known containers, by external port
        # then host (one host per container): building a Route costs more
        # than the rest of the lookup.  Emptied at every directory swap, so
        # nothing outlives the snapshot it was decided from; bounded, as
        # hosts and ports are the client's.
        self._http: dict[int | None, dict[str, Route | ContainerRefused]] = {}
        self._http_size = 0
        self._owners: dict[int, list[Container]] | None = None
        directory.observers.append(self._forget)

    def _forget(self, snapshot: ContainerSnapshot | None = None) -> None:
        self._http = {}
        self._http_size = 0
        self._owners = None

    def port_owner(self, external_port: int | None) -> ContainerDecision:
        """
        For a connection that names no container (raw TCP: neither TLS SNI
        nor an HTTP Host): the one container with an ingress rule for
        C{external_port}, preferring a running one, or why there is none.
        """
        snapshot = self.directory.current
        if not snapshot.ready:
            return ContainerRefused(503, NOT_READY)
        if external_port is None:
            return ContainerRefused(502, NO_INGRESS)
        owners = self._owners
        if owners is None:
            # One pass per snapshot, not per connection.
            owners = self._owners = {}
            for container in snapshot.containers.values():
                for port in container.ingress:
                    owners.setdefault(port, []).append(container)
        found = owners.get(external_port, [])
        running = [container for container in found if container.running]
        if len(running) > 1 or (not running and len(found) > 1):
            return ContainerRefused(502, f"port {external_port} belongs to several containers: "
                                         "raw TCP cannot tell which (TLS with SNI or HTTP can)")
        if not found:
            return ContainerRefused(502, f"no container has an ingress rule for port {external_port}")
        return decide(snapshot, (running or found)[0].id, external_port, self.addressing)

    def under_domain(self, host: str) -> bool:
        """Whether C{host} is below the container domain (a cheap test, for every request)."""
        return host.endswith(self._suffix)

    def container_id(self, host: str) -> str | None:
        return container_id_for(host, self.domain)

    def external_port(self, transport: Any) -> int | None:
        """The port the client connected to: the listener's, mapped."""
        # Asked per decision (a getsockname), not per connection: only
        # container hosts need it.
        port = getattr(transport.getHost(), "port", None)
        if not isinstance(port, int):
            return None
        return self.port_map.get(port, port)

    def route(self, host: str, transport: Any) -> ContainerDecision | None:
        """The decision for C{host} on C{transport}'s connection; None when C{host} names no container."""
        container_id = self.container_id(host)
        if container_id is None:
            return None
        return decide(self.directory.current, container_id, self.external_port(transport), self.addressing)

    def http_match(self, host: str, path: str, transport: Any) -> RouteMatch | None:
        """
        For the HTTP side, once no static route matched: the container's
        route (the path goes upstream unchanged), or None when C{host} names
        no container.

        @raise GatewayError: 503 or 502 with the refusal's reason.
        """
        if not host.endswith(self._suffix):
            return None
        port = self.external_port(transport)
        by_host = self._http.get(port)
        found = by_host.get(host) if by_host is not None else None
        if found is None:
            container_id = self.container_id(host)
            if container_id is None:
                return None
            snapshot = self.directory.current
            decision = decide(snapshot, container_id, port, self.addressing)
            found = decision.route(host) if isinstance(decision, ContainerBackend) else decision
            if container_id in snapshot.containers:
                if self._http_size >= HTTP_CACHE_SIZE:
                    self._forget()
                self._http.setdefault(port, {})[host] = found
                self._http_size += 1
        if isinstance(found, ContainerRefused):
            # The reason as is (lower case): what users and operators grep for.
            raise GatewayError(found.status, found.reason)
        return RouteMatch(found, path)
