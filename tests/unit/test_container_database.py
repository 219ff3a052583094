"""
The L{ContainerDatabase} conformance suite (L{tests._support.conformance})
over L{MemoryDatabase}, the fake the state service's unit tests run on, so
that it answers as PostgreSQL does (whose run is in
C{tests/integration/test_state_postgres.py}).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from edd_gateway.state.memory import MemoryDatabase
from edd_gateway.state.model import Container, IngressRule
from edd_gateway.state.routes_sync import StaticRouteRow
from tests._support.conformance import ContainerDatabaseTestsMixin


class MemoryDatabaseTests(ContainerDatabaseTestsMixin, TestCase):
    async def make_database(self) -> MemoryDatabase:
        database = MemoryDatabase()
        await database.connect()
        return database

    async def add_container(self, container_id: str, *, status: str = "running", ip: str | None = "127.0.1.2",
                            ports: dict[int, int] | None = None, user: str = "u1") -> None:
        ingress = {port: IngressRule(port, target) for port, target in (ports or {}).items()}
        self.database.put(Container(container_id, user, status, ip, ingress=ingress))

    async def add_other_route(self, host: str, path_prefix: str, target: str, priority: int = 0) -> None:
        self.database.add_row(StaticRouteRow(host, path_prefix, target, priority=priority,
                                             id=len(self.database.rows) + 1))
