"""
The L{HostKeyPins} conformance suite (L{tests._support.conformance}) over the
stores that need no server: the memory pins, the local state file's store
(with its file, and in memory), the local containers source that hands its
calls to that store, and the memory database the state service's
tests use.  PostgreSQL's run is in C{tests/integration/test_state_postgres.py}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from edd_gateway.ssh.pins import HostKeyPins, MemoryHostKeyPins
from edd_gateway.state.localfile import LocalContainersSource, LocalPinStore
from edd_gateway.state.memory import MemoryDatabase
from edd_gateway.state.model import ContainerDirectory
from tests._support.conformance import HostKeyPinsTestsMixin, PersistentHostKeyPinsTestsMixin


class MemoryHostKeyPinsTests(HostKeyPinsTestsMixin, TestCase):
    async def make_pins(self) -> HostKeyPins:
        return MemoryHostKeyPins()


class LocalPinStoreTests(PersistentHostKeyPinsTestsMixin, TestCase):
    async def make_pins(self) -> HostKeyPins:
        return LocalPinStore(self.mktemp())

    async def reopen(self, pins: HostKeyPins) -> HostKeyPins:
        assert isinstance(pins, LocalPinStore)
        return LocalPinStore(pins.path)


class LocalPinStoreInMemoryTests(HostKeyPinsTestsMixin, TestCase):
    async def make_pins(self) -> HostKeyPins:
        return LocalPinStore()


class MemoryDatabasePinsTests(HostKeyPinsTestsMixin, TestCase):
    async def make_pins(self) -> HostKeyPins:
        return MemoryDatabase()


class LocalContainersSourcePinsTests(HostKeyPinsTestsMixin, TestCase):
    """
    The local containers source, started on an empty containers file, with
    its pins in a state file.  (A source started again drops the pins of
    containers its file does not list, so persistence is the store's suite.)
    """

    def source(self, pins_path: str) -> LocalContainersSource:
        containers = self.mktemp()
        with open(containers, "w") as file:
            file.write("containers: []\n")
        source = LocalContainersSource(containers, ContainerDirectory(), Clock(), pins=LocalPinStore(pins_path))
        source.startService()
        self.addCleanup(source.stopService)
        return source

    async def make_pins(self) -> HostKeyPins:
        return self.source(self.mktemp())
