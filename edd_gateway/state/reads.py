"""
What one read of PostgreSQL does to what the gateway serves: a full read
swaps the container snapshot (L{ContainerReads.full}), a refresh replaces
the containers a hint named (L{ContainerReads.refresh}), and the route list
is the routes file's routes synced into the database, then the database's
other rows (L{RouteList}).  When to read is L{edd_gateway.state.readqueue}'s
to decide.

Every full read is also a check on the feeds: a container that differs
from what the gateway held, and that no event or notification named, is an
I{unannounced} change, counted and logged, so a silent feed shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edd_gateway.routes.model import Route
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot
from edd_gateway.state.pin_drops import PinDrops
from edd_gateway.state.routes_sync import merge_routes
from edd_gateway.state.sources import ChangeFeed, ContainerDatabase

__all__ = ["ContainerReads", "RouteList"]

#: How many ids the log line of unannounced changes names.
_NAMED_IDS = 5

_log = Logger()


class ContainerReads:
    """
    Reads of the containers, applied to C{directory}.

    @param feed_active: whether a feed announces changes now (a full read
        audits what they announced only then).
    @ivar last_full: when the last full read was applied.
    @ivar counts: full reads, refreshes and unannounced changes, for the
        service's status.
    @ivar pins: the deleted containers' pin deletions still running.
    """

    def __init__(self, database: ContainerDatabase, directory: ContainerDirectory, clock: IReactorTime, *,
                 changes: ChangeFeed | None, feed_active: Callable[[], bool]) -> None:
        self.database = database
        self.directory = directory
        self._clock = clock
        self._changes = changes
        self._feed_active = feed_active
        self.last_full: float | None = None
        self.counts = {"full_resyncs": 0, "refreshes": 0, "unannounced_changes": 0}
        self.pins = PinDrops()

    async def full(self, reason: str, announced: set[str], hinted: Callable[[dict[str, Container]], set[str]]) -> None:
        """
        Read every container; C{announced} are those the hints named until
        the read started, C{hinted(containers)} those named while it ran.
        """
        if self._changes is not None:
            # Also LISTENs when the triggers appeared since the last read:
            # before the read, so that no later commit goes unannounced.
            await self._changes.check()
        audited = self._feed_active() and self.directory.current.ready
        containers = await self.database.load_all()
        if audited:
            # Hints that arrived while the read ran may name changes it saw.
            self._count_unannounced(containers, announced | hinted(containers))
        self.directory.swap(ContainerSnapshot(containers, ready=True))
        self.pins.add(self.database.prune_pins(containers.keys()))
        self.last_full = self._clock.seconds()
        self.counts["full_resyncs"] += 1
        running = sum(1 for container in containers.values() if container.running)
        _log.info("state: {count} containers ({running} running) read after {reason}",
                  count=len(containers), running=running, reason=reason)

    def _count_unannounced(self, containers: dict[str, Container], announced: set[str]) -> None:
        held = self.directory.current.containers
        changed = sorted(
            container_id for container_id in held.keys() | containers.keys()
            if container_id not in announced and held.get(container_id) != containers.get(container_id))
        if not changed:
            return
        self.counts["unannounced_changes"] += len(changed)
        named = ", ".join(changed[:_NAMED_IDS]) + (f" and {len(changed) - _NAMED_IDS} more"
                                                   if len(changed) > _NAMED_IDS else "")
        _log.warn("state: the full read found {count} container changes no event or notification announced "
                  "({named}); is a feed silent?", count=len(changed), named=named)

    async def refresh(self, ids: set[str]) -> None:
        """Re-read these containers; those gone are removed, and their pins dropped."""
        found = await self.database.load_containers(ids)
        self.counts["refreshes"] += 1
        for container_id in ids - found.keys():
            self.pins.add(self.database.clear_pin(container_id).addCallback(int))
        if len(ids) == 1:
            (container_id,) = ids
            self.directory.replace(container_id, found.get(container_id))
            return
        # One swap for the whole batch, not one snapshot copy per container.
        current = self.directory.current
        containers = dict(current.containers)
        for container_id in ids:
            if container_id in found:
                containers[container_id] = found[container_id]
            else:
                containers.pop(container_id, None)
        self.directory.swap(ContainerSnapshot(containers, current.ready))


class RouteList:
    """
    The route list the gateway serves: the routes file's routes, then the
    database's other rows, handed whole to C{on_routes} whenever it changes.

    @ivar stale: the database has not seen the routes file's current
        version, or its other rows were not read since connecting.
    """

    def __init__(self, database: ContainerDatabase, on_routes: Callable[[list[Route]], object] | None,
                 file_routes: Sequence[Route] | None) -> None:
        self.database = database
        self._on_routes = on_routes
        self._file_routes = list(file_routes) if file_routes is not None else None
        self._other_routes: list[Route] = []
        self.stale = False

    def routes(self) -> list[Route]:
        """The current route list: the routes file's, then the database's other rows."""
        return merge_routes(self._file_routes or [], self._other_routes)

    def set_file_routes(self, routes: Sequence[Route]) -> None:
        """A new version of the routes file: routed at once; the database is synced by the next L{resync}."""
        self._file_routes = list(routes)
        self.publish()
        self.stale = True

    async def resync(self) -> None:
        """Sync the routes file's routes into the database and read its other rows."""
        if self._file_routes is not None:
            await self.database.sync_file_routes(self._file_routes)
        self._other_routes = await self.database.load_other_routes()
        self.stale = False
        self.publish()

    def publish(self) -> None:
        if self._on_routes is None:
            return
        try:
            self._on_routes(self.routes())
        except Exception:
            _log.failure("state: installing the route list failed")
