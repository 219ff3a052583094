"""
The conformance suite of L{edd_gateway.domains.source.DomainSource}: run over
L{MemoryDomains} (C{tests/unit/test_domains_source.py}) and L{PostgresDomains}
(C{tests/integration/test_domains_postgres.py}), so that the fake the unit
tests use reads rows as the real table does.
"""

from __future__ import annotations

from typing import Any

from edd_gateway.domains.model import CustomDomain
from edd_gateway.domains.source import DomainSource
from edd_gateway.domains.testing import domain


class DomainSourceTestsMixin:
    """Mixed in before a trial TestCase that says how to make a source and put rows in it."""

    async def make_source(self) -> DomainSource:
        raise NotImplementedError

    async def put(self, source: DomainSource, item: CustomDomain) -> None:
        raise NotImplementedError

    async def drop(self, source: DomainSource, name: str) -> None:
        raise NotImplementedError

    async def test_empty(self) -> None:
        source = await self.make_source()
        self.assertEqual(await source.load_domains(), {})  # type: ignore[attr-defined]  # a TestCase's

    async def test_rows_read(self) -> None:
        source = await self.make_source()
        await self.put(source, domain("app.example.test", target_port=8080, row_id="d1"))
        await self.put(source, domain("b.example.test", "web2", status="pending", redirect_https=False,
                                      row_id="d2"))
        found: dict[str, Any] = dict(await source.load_domains())
        self.assertEqual(found, {  # type: ignore[attr-defined]  # a TestCase's
            "app.example.test": domain("app.example.test", target_port=8080, row_id="d1"),
            "b.example.test": domain("b.example.test", "web2", status="pending", redirect_https=False,
                                     row_id="d2"),
        })

    async def test_removed(self) -> None:
        source = await self.make_source()
        await self.put(source, domain("app.example.test"))
        await self.drop(source, "app.example.test")
        self.assertEqual(await source.load_domains(), {})  # type: ignore[attr-defined]  # a TestCase's
