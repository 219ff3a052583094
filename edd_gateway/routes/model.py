"""
The route model: what one line of the routes table says.

Everything here is immutable and already normalised (host lower-case without
port or trailing dot, path without dot-segments), so that the table and the
proxy never have to re-check what the loader validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class MatchKind(str, Enum):
    """How a route's path is compared with a request's path."""

    EXACT = "exact"
    PREFIX = "prefix"


@dataclass(frozen=True, slots=True)
class Target:
    """
    Where a route sends its traffic.

    C{host} is a DNS name or an IP address (IPv6 without brackets); when
    C{internal} is set the gateway answers itself (e.g. the welcome page of
    the embedded default) and C{host}/C{port} are unused.
    """

    host: str
    port: int
    internal: str | None = None

    def __str__(self) -> str:
        if self.internal is not None:
            return f"internal:{self.internal}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """
    One route: requests for C{host} whose path matches C{path} go to C{target}.

    @ivar source: where the route was defined, C{"routes.yaml:12"}, for logs
        and C{explain}.
    @ivar connect_timeout: seconds to open a backend connection; L{None} means
        the gateway's default.
    @ivar response_timeout: seconds from the end of the request to the first
        byte of the response head; L{None} means the gateway's default.
    @ivar redirect_https: answer plain-HTTP requests with a 301 to https.
    @ivar tls_passthrough: TLS for this host is relayed undecrypted to the
        target (used once TLS lands).
    @ivar proxy_protocol: C{"v1"} or C{"v2"}: a passthrough connection to the
        target starts with a PROXY protocol header of that version naming
        the client; L{None} (the default) sends none.  Only passthrough
        routes may set it (see docs/proxy-protocol.md).
    """

    host: str
    path: str
    target: Target
    match: MatchKind = MatchKind.PREFIX
    strip_prefix: bool = False
    connect_timeout: float | None = None
    response_timeout: float | None = None
    redirect_https: bool = False
    tls_passthrough: bool = False
    source: str = ""
    proxy_protocol: str | None = None
    #: How metrics and the access log name the route: C{host} + C{path}, or
    #: C{container} for the one-off routes of container decisions (one
    #: series per routes-file entry, not one per container).  Made once
    #: here: it is read on every request.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = "container" if self.source.startswith("container ") else self.host + self.path
        object.__setattr__(self, "label", label)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """
    The answer of a lookup: the route and the path to send upstream
    (C{strip_prefix} already applied; always starts with C{/}).
    """

    route: Route
    upstream_path: str
