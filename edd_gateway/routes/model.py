"""
The route model: what one line of the routes table says.

Everything here is immutable and already normalised (host lower-case without
port or trailing dot, path without dot-segments), so that the table and the
proxy never have to re-check what the loader validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


#: A route's C{protocol}: how the gateway speaks to its backend.  C{grpc} and
#: C{h2c} are HTTP/2 cleartext (C{grpc} also words the gateway's own errors as
#: gRPC statuses); C{http} is HTTP/1.1.
PROTOCOLS = ("http", "grpc", "h2c")


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
class ResponseHeaders:
    """
    A route's C{response_headers}: fields set on (replacing the backend's
    of the same name) and removed from the backend's answers.

    @ivar set: C{(name, value)} pairs as written in the routes file.
    @ivar remove: names as written.
    """

    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hsts:
    """A route's C{hsts}: the Strict-Transport-Security policy (RFC 6797)."""

    max_age: int
    include_subdomains: bool = False

    def value(self) -> str:
        return f"max-age={self.max_age}" + ("; includeSubDomains" if self.include_subdomains else "")


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """
    What the edge changes in a backend's response head, in the proxy's own
    terms: lower-case names whose fields are dropped, and whole header lines
    added (C{Name: value}).
    """

    drop: frozenset[bytes]
    add: tuple[bytes, ...]


def _edits(headers: ResponseHeaders | None, hsts: Hsts | None) -> HeaderEdits | None:
    if headers is None and hsts is None:
        return None
    added = list(headers.set) if headers is not None else []
    if hsts is not None:
        # The edge's policy replaces whatever the backend says: one policy
        # per host, set where TLS ends.
        added.append(("Strict-Transport-Security", hsts.value()))
    removed = list(headers.remove) if headers is not None else []
    drop = frozenset(name.lower().encode("ascii") for name in [*removed, *(name for name, _ in added)])
    add = tuple(f"{name}: {value}".encode("latin-1") for name, value in added)
    return HeaderEdits(drop=drop, add=add)


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
    @ivar response_headers: fields set on and removed from the backend's
        answers; L{None} changes nothing.
    @ivar hsts: the Strict-Transport-Security policy sent with every answer
        on this route over terminated TLS (never over plain HTTP); L{None}
        sends none.
    @ivar protocol: one of L{PROTOCOLS}: C{http} (the default) sends the
        route's requests to its backend as HTTP/1.1; C{grpc} and C{h2c} as
        HTTP/2 cleartext streams, for HTTP/2 clients only (see docs/http2.md).
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
    response_headers: ResponseHeaders | None = None
    hsts: Hsts | None = None
    #: The edits of the backend's answers over plain HTTP and over terminated
    #: TLS (L{None}: none), and the fields the gateway's own answers on this
    #: route get over TLS: made once here, read on every response.
    edits_plain: HeaderEdits | None = field(init=False, repr=False, compare=False)
    edits_tls: HeaderEdits | None = field(init=False, repr=False, compare=False)
    own_answer_tls: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    protocol: str = "http"
    #: The backend speaks HTTP/2 cleartext (C{protocol} grpc or h2c): made once, read on every request.
    http2_backend: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "http2_backend", self.protocol != "http")
        label = "container" if self.source.startswith("container ") else self.host + self.path
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "edits_plain", _edits(self.response_headers, None))
        object.__setattr__(self, "edits_tls", _edits(self.response_headers, self.hsts))
        own = (("Strict-Transport-Security", self.hsts.value()),) if self.hsts is not None else ()
        object.__setattr__(self, "own_answer_tls", own)

    def edits_for(self, scheme: str) -> HeaderEdits | None:
        """What the edge changes in the backend's answers on a C{scheme} connection."""
        return self.edits_tls if scheme == "https" else self.edits_plain

    def own_answer_headers(self, scheme: str) -> tuple[tuple[str, str], ...]:
        """
        The fields the gateway's own answers on this route get (its error
        pages, internal pages): HSTS over terminated TLS, nothing else —
        C{response_headers} are the site's, and must not make a 502 page
        cacheable, say.
        """
        return self.own_answer_tls if scheme == "https" else ()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """
    The answer of a lookup: the route and the path to send upstream
    (C{strip_prefix} already applied; always starts with C{/}).
    """

    route: Route
    upstream_path: str
