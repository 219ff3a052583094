"""The L{DomainSource} conformance suite (L{tests._support.domains}) over L{MemoryDomains}."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from edd_gateway.domains.model import CustomDomain
from edd_gateway.domains.source import DomainSource
from edd_gateway.domains.testing import MemoryDomains
from tests._support.domains import DomainSourceTestsMixin


class MemoryDomainsTests(DomainSourceTestsMixin, TestCase):
    async def make_source(self) -> DomainSource:
        return MemoryDomains()

    async def put(self, source: DomainSource, item: CustomDomain) -> None:
        assert isinstance(source, MemoryDomains)
        source.put(item)

    async def drop(self, source: DomainSource, name: str) -> None:
        assert isinstance(source, MemoryDomains)
        source.remove(name)
