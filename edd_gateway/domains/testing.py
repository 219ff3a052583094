"""Fakes for custom domain tests: a memory source with an outage switch, and rows as the table holds them."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from edd_gateway.domains.model import CustomDomain
from edd_gateway.state.postgres import DatabaseUnavailable

__all__ = ["MemoryDomains", "domain"]


def domain(name: str = "app.example.test", container_id: str = "web1", *, status: str = "active",
           target_port: int = 8080, redirect_https: bool = True, row_id: str | None = None) -> CustomDomain:
    """One custom domain, as L{edd_gateway.domains.rows} reads it."""
    return CustomDomain(row_id or f"d-{name}", "u1", container_id, name, target_port, status, redirect_https)


class MemoryDomains:
    """The custom domains in a dictionary; C{down} makes every read fail."""

    def __init__(self, *domains: CustomDomain) -> None:
        self.domains = {d.domain: d for d in domains}
        self.down = False
        self.reads = 0

    def put(self, item: CustomDomain) -> None:
        self.domains[item.domain] = item

    def remove(self, name: str) -> None:
        self.domains.pop(name, None)

    def load_domains(self) -> Deferred[dict[str, CustomDomain]]:
        self.reads += 1
        if self.down:
            return fail(DatabaseUnavailable("down"))
        return succeed(dict(self.domains))
