"""
What the gateway knows of the custom domains: one L{CustomDomain} per row
of C{custom_domains}, an immutable L{DomainSnapshot} swapped whole into the
L{DomainDirectory} (as the containers' directory is), and L{DomainLookup},
which decides whether a name is I{served}.

A domain is served when its row is C{verified} or C{active} I{and} its
container is running, read from both directories at each decision: a
container that stops takes its domains off the routing and off the
issuance allow-list at the next container swap, with no read of the
domains table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edd_gateway.state.model import Container, ContainerDirectory

__all__ = ["SERVED_STATUSES", "CustomDomain", "DomainDirectory", "DomainLookup", "DomainSnapshot", "ServedDomain"]

#: The statuses whose domains the gateway serves (the control plane's words).
SERVED_STATUSES = frozenset({"verified", "active"})


@dataclass(frozen=True, slots=True)
class CustomDomain:
    """
    One row of C{custom_domains} (with the gateway's own setting).

    @ivar domain: the host name, normalised (lower case, no trailing dot).
    @ivar redirect_https: plain HTTP answered with a redirect to HTTPS once
        the domain has a certificate (the ACME HTTP-01 path excepted).
    """

    id: str
    user_id: str
    container_id: str
    domain: str
    target_port: int
    status: str
    redirect_https: bool = True

    @property
    def listed(self) -> bool:
        """Whether its status says the control plane proved it (the container aside)."""
        return self.status in SERVED_STATUSES


@dataclass(frozen=True, slots=True)
class DomainSnapshot:
    """Every custom domain by name, at one moment; C{ready} once read at least once."""

    domains: Mapping[str, CustomDomain] = field(default_factory=dict)
    ready: bool = False


class DomainDirectory:
    """The current snapshot, swapped whole by the feed; observers run after each swap."""

    def __init__(self, snapshot: DomainSnapshot | None = None) -> None:
        self._snapshot = snapshot or DomainSnapshot()
        self.observers: list[Callable[[DomainSnapshot], object]] = []

    @property
    def current(self) -> DomainSnapshot:
        return self._snapshot

    def swap(self, snapshot: DomainSnapshot) -> None:
        self._snapshot = snapshot
        for observer in list(self.observers):
            observer(snapshot)


@dataclass(frozen=True, slots=True)
class ServedDomain:
    """A served domain and the running container it goes to."""

    domain: CustomDomain
    container: Container


class DomainLookup:
    """Whether a name is a served custom domain, from the live domains and containers."""

    def __init__(self, domains: DomainDirectory, containers: ContainerDirectory) -> None:
        self.domains = domains
        self.containers = containers

    def served(self, name: str) -> ServedDomain | None:
        """The served domain C{name} (normalised), or None: unknown, not proven, or its container not running."""
        domain = self.domains.current.domains.get(name)
        if domain is None or not domain.listed:
            return None
        container = self.containers.get(domain.container_id)
        if container is None or not container.running:
            return None
        return ServedDomain(domain, container)

    def served_names(self) -> list[str]:
        """Every served domain's name: the issuance allow-list, and what renewal looks at."""
        return sorted(name for name in self.domains.current.domains if self.served(name) is not None)

    def observe(self, observer: Callable[[], object]) -> None:
        """Call C{observer()} after any swap of either directory (what is served may have changed)."""
        self.domains.observers.append(lambda _: observer())
        self.containers.observers.append(lambda _: observer())
