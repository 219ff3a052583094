"""
Conformance suites, as txacme's C{_StoreTestsMixin} is one: the tests of an
interface written once and run against every implementation, so that a fake
the unit tests lean on cannot drift from the real store it stands for.

 - L{HostKeyPinsTestsMixin}: L{edd_gateway.ssh.pins.HostKeyPins}, run over
   L{MemoryHostKeyPins}, L{LocalPinStore} (with its file and in memory), the
   L{LocalContainersSource} that hands its calls to it, L{MemoryDatabase} and
   L{PostgresDatabase}; L{PersistentHostKeyPinsTestsMixin}
   adds, for the file and PostgreSQL, that pins outlive the store object.
 - L{ContainerDatabaseTestsMixin}: L{edd_gateway.state.sources.ContainerDatabase}
   (what the state service needs of PostgreSQL), run over L{MemoryDatabase}
   and L{PostgresDatabase}.  The local containers file is no such database
   (it is read whole into the directory, and keeps pins only): it is in the
   pins suite alone.

A concrete test case mixes one in before C{twisted.trial.unittest.TestCase}
(the tests are C{async def}, so that a store whose answers wait for a server
runs them as they are) and says how to make its store.  The assertions are
those the per-implementation tests make (C{test_state_localfile},
C{test_ssh_pinning}, C{test_state_postgres}, C{test_state_routes_sync}), which
stay where they are.
"""

from __future__ import annotations

from typing import Any

from edd_gateway.routes.loader import load_routes_text
from edd_gateway.ssh.pins import HostKeyPins
from edd_gateway.state.model import Container, HostKeyPin, IngressRule
from edd_gateway.state.sources import ContainerDatabase
from tests._support.routes_sync import FILE

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRWnd03oL7qVUScEq+4xbgWp5e4Apuox818FnnDghrf dev@laptop"
OTHER_KEY = "ssh-ed25519 OTHER"
CREATED = "2026-01-01T00:00:00Z"


class HostKeyPinsTestsMixin:
    """The behaviour every L{HostKeyPins} store shares."""

    async def make_pins(self) -> HostKeyPins:
        """A new, empty store."""
        raise NotImplementedError

    async def test_provides_the_interface(self) -> None:
        self.assertIsInstance(await self.make_pins(), HostKeyPins)  # type: ignore[attr-defined]

    async def test_unpinned_is_none(self) -> None:
        pins = await self.make_pins()
        self.assertIsNone(await pins.get_pin("c1"))  # type: ignore[attr-defined]

    async def test_round_trip(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("c1", KEY, CREATED)
        self.assertEqual(await pins.get_pin("c1"), HostKeyPin("c1", KEY, CREATED))  # type: ignore[attr-defined]

    async def test_created_defaults_to_none(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("a", KEY)
        self.assertEqual(await pins.get_pin("a"), HostKeyPin("a", KEY, None))  # type: ignore[attr-defined]

    async def test_a_new_pin_replaces_the_old(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("c1", KEY, CREATED)
        await pins.set_pin("c1", OTHER_KEY, None)
        self.assertEqual(await pins.get_pin("c1"), HostKeyPin("c1", OTHER_KEY, None))  # type: ignore[attr-defined]

    async def test_clear_says_whether_there_was_a_pin(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("c1", KEY)
        self.assertTrue(await pins.clear_pin("c1"))  # type: ignore[attr-defined]
        self.assertIsNone(await pins.get_pin("c1"))  # type: ignore[attr-defined]
        self.assertFalse(await pins.clear_pin("c1"))  # type: ignore[attr-defined]
        self.assertFalse(await pins.clear_pin("never-pinned"))  # type: ignore[attr-defined]

    async def test_pins_are_per_container(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("a", KEY, None)
        await pins.set_pin("b", OTHER_KEY, "t1")
        await pins.clear_pin("a")
        self.assertIsNone(await pins.get_pin("a"))  # type: ignore[attr-defined]
        self.assertEqual(await pins.get_pin("b"), HostKeyPin("b", OTHER_KEY, "t1"))  # type: ignore[attr-defined]


class PersistentHostKeyPinsTestsMixin(HostKeyPinsTestsMixin):
    """L{HostKeyPinsTestsMixin}, and pins that outlive the store object (a file, a server)."""

    async def reopen(self, pins: HostKeyPins) -> HostKeyPins:
        """Another store over what C{pins} keeps."""
        raise NotImplementedError

    async def test_pins_outlive_the_store(self) -> None:
        pins = await self.make_pins()
        await pins.set_pin("a", KEY, None)
        await pins.set_pin("b", KEY, "t1")
        await pins.clear_pin("a")
        again = await self.reopen(pins)
        self.assertIsNone(await again.get_pin("a"))  # type: ignore[attr-defined]
        self.assertEqual(await again.get_pin("b"), HostKeyPin("b", KEY, "t1"))  # type: ignore[attr-defined]


class ContainerDatabaseTestsMixin:
    """The behaviour the state service relies on in every L{ContainerDatabase}."""

    async def make_database(self) -> ContainerDatabase:
        """A new, connected database with no containers and no C{static_routes} rows."""
        raise NotImplementedError

    async def add_container(self, container_id: str, *, status: str = "running", ip: str | None = "127.0.1.2",
                            ports: dict[int, int] | None = None, user: str = "u1") -> None:
        """A container as the compute service writes it, with its ingress rules (port to target port)."""
        raise NotImplementedError

    async def add_other_route(self, host: str, path_prefix: str, target: str, priority: int = 0) -> None:
        """A C{static_routes} row someone other than the gateway inserted."""
        raise NotImplementedError

    async def set_pin(self, container_id: str, host_key: str) -> None:
        """A pinned host key, as the SSH side writes it."""
        await self.database.set_pin(container_id, host_key)  # type: ignore[attr-defined]

    async def get_pin(self, container_id: str) -> HostKeyPin | None:
        pin: HostKeyPin | None = await self.database.get_pin(container_id)  # type: ignore[attr-defined]
        return pin

    @staticmethod
    def _shape(container: Container) -> tuple[Any, ...]:
        """The fields every database reads the same way (the rest are the compute schema's)."""
        return container.id, container.user_id, container.status, container.external_ip, container.ingress

    async def test_load_all(self) -> None:
        self.database = await self.make_database()
        await self.add_container("web1", ports={80: 8080, 8000: 80})
        await self.add_container("idle", status="stopped", ip=None, user="u2")
        containers = await self.database.load_all()
        self.assertEqual(sorted(containers), ["idle", "web1"])  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            self._shape(containers["web1"]),
            ("web1", "u1", "running", "127.0.1.2", {80: IngressRule(80, 8080), 8000: IngressRule(8000, 80)}))
        self.assertEqual(self._shape(containers["idle"]), ("idle", "u2", "stopped", None, {}))  # type: ignore[attr-defined]

    async def test_empty(self) -> None:
        self.database = await self.make_database()
        self.assertEqual(await self.database.load_all(), {})  # type: ignore[attr-defined]
        self.assertEqual(await self.database.load_other_routes(), [])  # type: ignore[attr-defined]

    async def test_load_some(self) -> None:
        self.database = await self.make_database()
        await self.add_container("a", ports={80: 80})
        await self.add_container("b")
        found = await self.database.load_containers(["a", "gone"])
        self.assertEqual(sorted(found), ["a"])  # type: ignore[attr-defined]
        self.assertEqual(found["a"].ingress, {80: IngressRule(80, 80)})  # type: ignore[attr-defined]
        self.assertEqual(await self.database.load_containers([]), {})  # type: ignore[attr-defined]

    async def test_file_routes_are_not_other_routes(self) -> None:
        self.database = await self.make_database()
        await self.add_other_route("other.example.com", "/", "10.0.0.7:8080")
        await self.database.sync_file_routes(load_routes_text(FILE, "routes.yaml"))
        others = await self.database.load_other_routes()
        self.assertEqual([(r.host, r.path, str(r.target)) for r in others],  # type: ignore[attr-defined]
                         [("other.example.com", "/", "10.0.0.7:8080")])

    async def test_the_file_takes_over_a_row_with_its_key(self) -> None:
        self.database = await self.make_database()
        await self.add_other_route("cloud-api.example.com", "/compute", "stolen:80", priority=5)
        await self.database.sync_file_routes(load_routes_text(FILE, "routes.yaml"))
        self.assertEqual(await self.database.load_other_routes(), [])  # type: ignore[attr-defined]

    async def test_an_empty_file_leaves_the_others_rows(self) -> None:
        self.database = await self.make_database()
        await self.add_other_route("other.example.com", "/", "10.0.0.7:8080")
        await self.database.sync_file_routes(load_routes_text(FILE, "routes.yaml"))
        await self.database.sync_file_routes([])
        others = await self.database.load_other_routes()
        self.assertEqual([r.host for r in others], ["other.example.com"])  # type: ignore[attr-defined]

    async def test_clear_pin(self) -> None:
        self.database = await self.make_database()
        await self.set_pin("c1", KEY)
        self.assertTrue(await self.database.clear_pin("c1"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.get_pin("c1"))  # type: ignore[attr-defined]
        self.assertFalse(await self.database.clear_pin("c1"))  # type: ignore[attr-defined]

    async def test_prune_pins(self) -> None:
        self.database = await self.make_database()
        for name in ("a", "b", "c"):
            await self.set_pin(name, KEY)
        self.assertEqual(await self.database.prune_pins(["b", "not-pinned"]), 2)  # type: ignore[attr-defined]
        self.assertEqual([await self.get_pin(name) for name in ("a", "b", "c")],  # type: ignore[attr-defined]
                         [None, HostKeyPin("b", KEY, None), None])
        self.assertEqual(await self.database.prune_pins([]), 1)  # type: ignore[attr-defined]
