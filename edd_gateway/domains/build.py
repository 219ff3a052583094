"""
The custom domains in the service tree: with a database, the domain
directory, its feed (the table read at start, on every change
notification and as a net), the lookup joining it with the containers, and
the HTTP router that serves them (custom domains first, then the container
names).  Issuance (L{edd_gateway.issuance}) plugs its certificate view in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService

from edd_gateway.domains.model import DomainDirectory, DomainLookup
from edd_gateway.domains.router import NO_CERTIFICATES, CertificateView, DomainRouter
from edd_gateway.domains.service import DomainsService
from edd_gateway.domains.source import DOMAINS_FEED, PostgresDomains
from edd_gateway.routes.containers import ContainerAddressing, HostRouter
from edd_gateway.state.changefeed import ChangeFeedListener
from edd_gateway.state.model import ContainerDirectory
from edd_gateway.state.postgres import PostgresDatabase

__all__ = ["CustomDomains", "build_domains"]


@dataclass
class CustomDomains:
    """What the HTTP and TLS sides and issuance share of the custom domains."""

    directory: DomainDirectory
    lookup: DomainLookup
    router: DomainRouter
    service: DomainsService


def build_domains(database: PostgresDatabase, containers: ContainerDirectory, reactor: Any,
                  parent: MultiService, *, addressing: ContainerAddressing, fallback: HostRouter | None,
                  poll_interval: float, resync_interval: float,
                  certificates: CertificateView = NO_CERTIFICATES) -> CustomDomains:
    """The custom domains read from C{database}'s C{custom_domains}, served to running C{containers}."""
    directory = DomainDirectory()
    changes = ChangeFeedListener(database.dsn, reactor, feed=DOMAINS_FEED)
    service = DomainsService(PostgresDomains(database), directory, reactor, changes=changes,
                             poll_interval=poll_interval, resync_interval=resync_interval)
    service.setServiceParent(parent)
    lookup = DomainLookup(directory, containers)
    router = DomainRouter(lookup, addressing, certificates=certificates, fallback=fallback)
    return CustomDomains(directory, lookup, router, service)
