"""
HTTP routing of custom domains (L{DomainRouter}): a request whose Host is a
served custom domain goes to its container's C{target_port} at the
container's address (L{ContainerAddressing}), over plain HTTP and inside
terminated TLS alike; any other host is the container router's (or
nobody's).

On plain HTTP, once the domain has a certificate and its
C{redirect_https} is on (the default), the answer is a redirect to HTTPS,
except under C{/.well-known/acme-challenge/}: an HTTP-01 token the issuer is
waiting on is answered by the gateway itself, and any other path there
still reaches the container (a user may run their own ACME client).
"""

from __future__ import annotations

from typing import Any, Protocol

from edd_gateway.domains.model import DomainLookup, ServedDomain
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.internal import ACME_HTTP01
from edd_gateway.routes.containers import ContainerAddressing, HostRouter
from edd_gateway.routes.model import Route, RouteMatch, Target

__all__ = ["ACME_CHALLENGE_PATH", "NO_CERTIFICATES", "CertificateView", "DomainRouter"]

ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"


class CertificateView(Protocol):
    """What routing asks of issuance (L{edd_gateway.issuance.manager.IssuanceManager})."""

    def has_certificate(self, name: str) -> bool: ...
    def http01_answer(self, name: str, token: str) -> str | None: ...


class _NoCertificates:
    """Issuance off: no certificate, no challenge (custom domains served over plain HTTP only)."""

    def has_certificate(self, name: str) -> bool:
        return False

    def http01_answer(self, name: str, token: str) -> str | None:
        return None


NO_CERTIFICATES: CertificateView = _NoCertificates()


class DomainRouter:
    """
    Custom domains first, then C{fallback} (the container router, if any),
    for the HTTP side (L{HostRouter}).
    """

    def __init__(self, lookup: DomainLookup, addressing: ContainerAddressing, *,
                 certificates: CertificateView = NO_CERTIFICATES, fallback: HostRouter | None = None) -> None:
        self.lookup = lookup
        self.addressing = addressing
        self.certificates = certificates
        self.fallback = fallback
        # Each served host's two routes (proxied, and redirected once it has a
        # certificate): building a Route costs more than the rest of the
        # decision.  Emptied whenever either directory swaps, so nothing
        # outlives the snapshots it was built from; bounded by the table.
        self._routes: dict[str, tuple[Route, Route]] = {}
        lookup.observe(self._routes.clear)

    def under_domain(self, host: str) -> bool:
        # True for every custom domain too: their requests skip the static
        # routes' LRU, which thousands of tenants' hosts would otherwise evict.
        return host in self.lookup.domains.current.domains or (
            self.fallback is not None and self.fallback.under_domain(host))

    def http_match(self, host: str, path: str, transport: Any) -> RouteMatch | None:
        """
        The route of a served custom domain, else the fallback's answer.

        @raise GatewayError: 503 for a served domain whose container has no address yet.
        """
        routes = self._routes.get(host)
        if routes is None:
            served = self.lookup.served(host)
            if served is None:
                return self.fallback.http_match(host, path, transport) if self.fallback is not None else None
            routes = self._build(host, served)
        if path.startswith(ACME_CHALLENGE_PATH):
            answer = self.certificates.http01_answer(host, path[len(ACME_CHALLENGE_PATH):])
            if answer is not None:
                # The key authorization rides in the target's unused host, so
                # that the access log's backend= reads internal:acme-http-01.
                return RouteMatch(Route(host, "/", Target(answer, 0, internal=ACME_HTTP01),
                                        source=routes[0].source), path)
            return RouteMatch(routes[0], path)
        redirect = routes[1].redirect_https and self.certificates.has_certificate(host)
        return RouteMatch(routes[1] if redirect else routes[0], path)

    def _build(self, host: str, served: ServedDomain) -> tuple[Route, Route]:
        domain, container = served.domain, served.container
        address = self.addressing.host(container)
        if address is None:
            raise GatewayError(503, f"container {container.id} has no address yet")
        source = f"custom domain {host} (container {container.id})"
        target = Target(address, domain.target_port)
        routes = (Route(host, "/", target, source=source),
                  Route(host, "/", target, redirect_https=domain.redirect_https, source=source))
        self._routes[host] = routes
        return routes
