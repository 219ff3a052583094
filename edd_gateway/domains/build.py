"""
The custom domains in the service tree: with a database, the domain
directory, its feed (the table read at start, on every change
notification and as a net), the lookup joining it with the containers, and
the HTTP router that serves them (custom domains first, then the container
names); with C{--acme-directory} too, issuance (L{edd_gateway.issuance}):
the certificates shared through the database, the TLS listener's hook that
obtains them on the first connection, and renewal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService

from edd_gateway.domains.model import DomainDirectory, DomainLookup
from edd_gateway.domains.router import DomainRouter
from edd_gateway.domains.service import DomainsService
from edd_gateway.domains.source import DOMAINS_FEED, PostgresDomains
from edd_gateway.issuance.challenge_sync import ChallengeSync
from edd_gateway.issuance.challenges import ChallengeBoard
from edd_gateway.issuance.issuer import Issuer
from edd_gateway.issuance.manager import IssuanceManager, replica_name
from edd_gateway.issuance.options import issuance_settings
from edd_gateway.issuance.sealing import load_storage_key
from edd_gateway.issuance.sni import OnDemandSNI
from edd_gateway.issuance.storage import PostgresCertificateStorage
from edd_gateway.routes.containers import HostRouter
from edd_gateway.state.changefeed import ChangeFeedListener
from edd_gateway.state.model import ContainerDirectory
from edd_gateway.state.postgres import PostgresDatabase

__all__ = ["CustomDomains", "build_domains"]


@dataclass
class CustomDomains:
    """What the HTTP and TLS sides, and /metrics, share of the custom domains."""

    directory: DomainDirectory
    lookup: DomainLookup
    router: DomainRouter
    service: DomainsService
    issuance: IssuanceManager | None = None
    sni: OnDemandSNI | None = None


def build_domains(config: Any, database: PostgresDatabase, containers: ContainerDirectory, reactor: Any,
                  parent: MultiService, fallback: HostRouter | None) -> CustomDomains:
    """The custom domains read from C{database}'s C{custom_domains}, served to running C{containers}."""
    directory = DomainDirectory()
    lookup = DomainLookup(directory, containers)
    issuing = config["acme-directory"] is not None
    storage = PostgresCertificateStorage(database, load_storage_key(config["acme-storage-key"])) if issuing else None
    board, holder = ChallengeBoard(), replica_name()
    sync = ChallengeSync(storage, board, holder) if storage is not None else None
    changes = ChangeFeedListener(database.dsn, reactor, feed=DOMAINS_FEED)
    service = DomainsService(PostgresDomains(database), directory, reactor, changes=changes,
                             poll_interval=config["poll-interval"], resync_interval=config["resync-interval"],
                             on_challenges=sync.read if sync is not None else None)
    service.setServiceParent(parent)
    if storage is None:
        return CustomDomains(directory, lookup, DomainRouter(lookup, config.addressing(), fallback=fallback),
                             service)
    settings, policy = issuance_settings(config)
    issuer = Issuer(settings, storage, board, reactor, holder=holder)
    manager = IssuanceManager(lookup, storage, issuer, board, reactor, policy=policy, holder=holder)
    manager.setServiceParent(parent)
    router = DomainRouter(lookup, config.addressing(), certificates=manager, fallback=fallback)
    return CustomDomains(directory, lookup, router, service, manager,
                         OnDemandSNI(manager, lookup, board, reactor, policy.first_wait))
