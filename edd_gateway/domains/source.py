"""
Where the custom domains are read from: L{DomainSource} (what the feed
needs), L{PostgresDomains} over the gateway's database, and L{SqlRunner},
the two calls of L{edd_gateway.state.postgres.PostgresDatabase} it and the
issuance store use (bounded queries on the gateway's own tables), and the
change feed's description for the domains' channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from edd_gateway.domains.model import CustomDomain
from edd_gateway.domains.rows import SELECT_DOMAINS, domains_from_rows
from edd_gateway.domains.schema import DOMAIN_TRIGGER, DOMAINS_CHANNEL
from edd_gateway.state.changefeed import FeedSpec
from edd_gateway.state.triggers import Change, present_query

__all__ = ["CHALLENGES_TABLE", "DOMAINS_FEED", "DomainSource", "PostgresDomains", "SqlRunner"]

_log = Logger()


class SqlRunner(Protocol):
    """Bounded statements on the gateway's own tables (L{PostgresDatabase} has both)."""

    def gateway_query(self, query: str, params: tuple[Any, ...] = ()) -> Deferred[Any]: ...
    def gateway_operation(self, query: str, params: tuple[Any, ...] = ()) -> Deferred[None]: ...


class DomainSource(Protocol):
    """What the domains feed reads (L{PostgresDomains}, or L{edd_gateway.domains.testing.MemoryDomains})."""

    def load_domains(self) -> Deferred[dict[str, CustomDomain]]: ...


class PostgresDomains:
    """The custom domains in the gateway's database."""

    def __init__(self, sql: SqlRunner) -> None:
        self._sql = sql

    def load_domains(self) -> Deferred[dict[str, CustomDomain]]:
        def convert(rows: Sequence[Sequence[Any]]) -> dict[str, CustomDomain]:
            domains, problems = domains_from_rows(rows)
            for problem in problems:
                _log.warn("domains: {problem}; skipped", problem=problem)
            return domains

        return self._sql.gateway_query(SELECT_DOMAINS).addCallback(convert)


#: The table whose notifications say the pending ACME challenges changed (not the domains).
CHALLENGES_TABLE = "gateway_acme_challenges"


def _any_change(payload: str) -> Change:
    # The payload is the table's name.  The domains table is small and a
    # change rare: any notification of it re-reads it whole.
    table = CHALLENGES_TABLE if payload == CHALLENGES_TABLE else "custom_domains"
    return Change(table, full_resync=True)


#: The change feed of C{custom_domains} (and the gateway's settings beside it).
_FEED_TABLES = ("custom_domains", "gateway_domain_settings", CHALLENGES_TABLE)
DOMAINS_FEED = FeedSpec(DOMAINS_CHANNEL, present_query(_FEED_TABLES), (DOMAIN_TRIGGER,), len(_FEED_TABLES),
                        ", ".join(_FEED_TABLES), _any_change)
