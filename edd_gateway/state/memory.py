"""
Memory stand-ins for the state sources, for unit tests here and in other
modules: L{MemoryDatabase} (what L{StateService} needs of PostgreSQL, with
switches for an outage, a reconnect and slow answers) and L{MemoryEventFeed}
(what it needs of NATS, delivering messages through the real parser) and
L{MemoryChangeFeed} (the database's change feed, delivering notification
payloads through the real parser).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from edd_gateway.routes.model import Route
from edd_gateway.state.events import ContainerEvent, EventRejected, parse_event
from edd_gateway.state.model import Container, HostKeyPin
from edd_gateway.state.postgres import DatabaseUnavailable
from edd_gateway.state.routes_sync import StaticRouteRow, file_route_rows, routes_from_rows
from edd_gateway.state.triggers import Change, parse_change

__all__ = ["MemoryChangeFeed", "MemoryDatabase", "MemoryEventFeed"]


class MemoryDatabase:
    """
    Containers and C{static_routes} rows in dictionaries.

    @ivar down: every call fails with L{DatabaseUnavailable} while set.
    @ivar paused: while set, each read takes its answer at once (the moment
        a real database would read) but delivers it only at L{release}.
    @ivar calls: the name of every call made, in order.
    """

    def __init__(self, containers: Collection[Container] = ()) -> None:
        self.containers: dict[str, Container] = {container.id: container for container in containers}
        self.rows: dict[tuple[str, str], StaticRouteRow] = {}
        self.pins: dict[str, HostKeyPin] = {}
        self.down = False
        self.paused = False
        self.calls: list[str] = []
        self.closed = 0
        self._held: list[tuple[Deferred[Any], Callable[[], Any]]] = []
        self._observers: list[Callable[[], object]] = []

    def put(self, container: Container) -> None:
        self.containers[container.id] = container

    def remove(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    def add_row(self, row: StaticRouteRow) -> None:
        """A row someone else inserted."""
        self.rows[(row.host, row.path_prefix)] = row

    def reconnect(self) -> None:
        """What the real pool's detectors report after a lost connection came back."""
        for observer in list(self._observers):
            observer()

    def release(self) -> None:
        """Deliver every held answer, oldest first."""
        held, self._held = self._held, []
        for deferred, answer in held:
            deferred.callback(answer)

    @property
    def held(self) -> int:
        return len(self._held)

    def add_reconnect_observer(self, observer: Callable[[], object]) -> None:
        self._observers.append(observer)

    def connect(self) -> Deferred[None]:
        return self._answer("connect", lambda: None)

    def close(self) -> None:
        self.closed += 1

    def load_all(self) -> Deferred[dict[str, Container]]:
        return self._answer("load_all", lambda: dict(self.containers))

    def load_containers(self, ids: Collection[str]) -> Deferred[dict[str, Container]]:
        return self._answer(f"load_containers {','.join(sorted(ids))}",
                            lambda: {i: self.containers[i] for i in ids if i in self.containers})

    def sync_file_routes(self, routes: Sequence[Route]) -> Deferred[None]:
        def sync() -> None:
            wanted = {(row.host, row.path_prefix): row for row in file_route_rows(routes)}
            for key, row in list(self.rows.items()):
                if row.from_file and key not in wanted:
                    del self.rows[key]
            self.rows.update(wanted)

        return self._answer("sync_file_routes", sync)

    def load_other_routes(self) -> Deferred[list[Route]]:
        return self._answer("load_other_routes", lambda: routes_from_rows(list(self.rows.values()))[0])

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        return self._answer("get_pin", lambda: self.pins.get(container_id))

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        def pin() -> None:
            self.pins[container_id] = HostKeyPin(container_id, host_key, container_created)

        return self._answer("set_pin", pin)

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        return self._answer("clear_pin", lambda: self.pins.pop(container_id, None) is not None)

    def prune_pins(self, keep: Collection[str]) -> Deferred[int]:
        def prune() -> int:
            gone = [container_id for container_id in self.pins if container_id not in keep]
            for container_id in gone:
                del self.pins[container_id]
            return len(gone)

        return self._answer("prune_pins", prune)

    def _answer(self, call: str, compute: Callable[[], Any]) -> Deferred[Any]:
        self.calls.append(call)
        if self.down:
            return fail(DatabaseUnavailable("the memory database is down"))
        answer = compute()
        if not self.paused:
            return succeed(answer)
        deferred: Deferred[Any] = Deferred()
        self._held.append((deferred, answer))
        return deferred


class MemoryEventFeed:
    """An event feed whose connection and messages the test drives."""

    def __init__(self, connect_on_start: bool = True, mode: str = "core") -> None:
        self.connected = False
        self._mode = mode
        self.connect_on_start = connect_on_start
        self.published: list[tuple[str, bytes]] = []
        self.rejected: list[str] = []
        #: The fake clock of the service, advanced by 0 after each delivery (the reactor turn ends).
        self.clock: Any = None
        #: What the handler answered for each delivered event (JetStream acks once it fires).
        self.applied: list[object] = []
        self.started = False
        self.stopped = False
        self._on_event: Callable[[ContainerEvent], object] = lambda event: None
        self._on_connected: Callable[[], object] = lambda: None
        self._on_disconnected: Callable[[], object] = lambda: None

    @property
    def mode(self) -> str | None:
        """As the NATS feed's: how it consumes ("jetstream" or "core"), None while disconnected."""
        return self._mode if self.connected else None

    def bind(self, on_event: Callable[[ContainerEvent], object], on_connected: Callable[[], object],
             on_disconnected: Callable[[], object]) -> None:
        self._on_event, self._on_connected, self._on_disconnected = on_event, on_connected, on_disconnected

    def start(self) -> Deferred[None]:
        self.started = True
        if self.connect_on_start:
            self.connect()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        self.connected = False
        return succeed(None)

    def connect(self) -> None:
        """The connection came up (first time or again)."""
        self.connected = True
        self._on_connected()

    def disconnect(self) -> None:
        self.connected = False
        self._on_disconnected()

    def deliver(self, subject: str, data: bytes = b"") -> None:
        """A message arrives: parsed as the NATS feed parses it."""
        try:
            event = parse_event(subject, data)
        except EventRejected as reason:
            self.rejected.append(str(reason))
            return
        self.applied.append(self._on_event(event))
        self._turn_ends()

    def _turn_ends(self) -> None:
        # The reactor turn that delivered the message ends: what the service
        # scheduled for the end of the turn runs.
        if self.clock is not None:
            self.clock.advance(0)

    def publish(self, subject: str, payload: bytes) -> Deferred[None]:
        if not self.connected:
            return fail(ConnectionError("not connected"))
        self.published.append((subject, payload))
        return succeed(None)


class MemoryChangeFeed:
    """A change feed whose triggers, connection and notifications the test drives."""

    def __init__(self, installed: bool = True) -> None:
        self.installed = installed
        self.connection_up = True
        self.listening = False
        self.state = "not connected"
        self.checks = 0
        self.stopped = False
        #: The fake clock of the service, advanced by 0 after each delivery (the reactor turn ends).
        self.clock: Any = None
        self._on_change: Callable[[Change], object] = lambda change: None
        self._on_listening: Callable[[], object] = lambda: None
        self._on_stopped: Callable[[str], object] = lambda reason: None

    def bind(self, on_change: Callable[[Change], object], on_listening: Callable[[], object],
             on_stopped: Callable[[str], object]) -> None:
        self._on_change, self._on_listening, self._on_stopped = on_change, on_listening, on_stopped

    def start(self) -> Deferred[None]:
        return self.check().addCallback(lambda _: None)

    def check(self) -> Deferred[bool]:
        """What the real listener does at start and at each full read: LISTEN while the triggers are there."""
        self.checks += 1
        if not self.connection_up:
            return succeed(False)
        if self.installed and not self.listening:
            self.listening, self.state = True, "listening"
            self._on_listening()
        elif not self.installed:
            self.state = "not installed"
            if self.listening:
                self.listening = False
                self._on_stopped("triggers removed")
        return succeed(self.listening)

    def lose_connection(self) -> None:
        self.connection_up = False
        self.listening, self.state = False, "down"
        self._on_stopped("connection lost")

    def reconnect(self) -> None:
        """The listener's connection is back: it checks, and LISTENs again."""
        self.connection_up = True
        self.check()

    def notify(self, *payloads: str) -> None:
        """Notifications arrive, in one reactor turn: parsed as the listener parses them."""
        for payload in payloads:
            self._on_change(parse_change(payload))
        if self.clock is not None:
            self.clock.advance(0)

    def deliver(self, change: Change) -> None:
        """A change parsed already (by another feed's parser, e.g. the custom domains')."""
        self._on_change(change)

    def stop(self) -> None:
        self.stopped = True
        self.listening = False
