"""
Keeping the container directory and the route list in step with PostgreSQL:
L{StateService} connects (retrying with backoff while the database is down),
resyncs in full after every (re)connection of PostgreSQL, of NATS or of the
change feed, re-reads single containers (or one user's containers, when
their SSH keys changed) when an event or a change notification names them,
polls when no feed is active, and reports readiness.

Every full resync is also a check on the feeds: a container that differs
from what the gateway held, and that no event or notification named, is an
I{unannounced} change, counted and logged, so a silent feed shows.

All reads go through one queue, one at a time, so a slow full resync can
never overwrite what a later event refreshed: whatever is read last was read
after every earlier change.  Requests arriving meanwhile are merged (a set
of container ids, a full-resync flag), so a burst of events costs one
batched read.  A failed read keeps the last snapshot and retries with
backoff; nothing here raises into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.routes.model import Route
from edd_gateway.state.events import REFRESHED_SUBJECT, ContainerEvent, refreshed_message
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot
from edd_gateway.state.routes_sync import merge_routes
from edd_gateway.state.triggers import Change

__all__ = ["ChangeFeed", "ContainerDatabase", "EventFeed", "StateService", "StateStatus"]

#: Default seconds between full reads while a feed is active.  A full read
#: is three SELECTs (tens of milliseconds with 10,000 containers), so one
#: every 30 s costs a sixth of the original gateway's 5 s poll, and a feed
#: that falls silent (triggers dropped by a migration, a publisher that
#: stops) leaves a wrong route or a revoked SSH key for at most 30 s, and
#: shows in edd_gateway_state_unannounced_changes_total.
DEFAULT_RESYNC_INTERVAL = 30.0
#: How many ids the log line of unannounced changes names.
_NAMED_IDS = 5

_log = Logger()


class ContainerDatabase(Protocol):
    """What the service needs of a database (L{PostgresDatabase}, or a memory fake)."""

    def connect(self) -> Deferred[None]: ...
    def close(self) -> None: ...
    def add_reconnect_observer(self, observer: Callable[[], object]) -> None: ...
    def load_all(self) -> Deferred[dict[str, Container]]: ...
    def load_containers(self, ids: Collection[str]) -> Deferred[dict[str, Container]]: ...
    def sync_file_routes(self, routes: Sequence[Route]) -> Deferred[None]: ...
    def load_other_routes(self) -> Deferred[list[Route]]: ...
    def clear_pin(self, container_id: str) -> Deferred[bool]: ...
    def prune_pins(self, keep: Collection[str]) -> Deferred[int]: ...


class EventFeed(Protocol):
    """What the service needs of an event feed (L{NatsEventFeed}, or a memory fake)."""

    @property
    def connected(self) -> bool: ...
    @property
    def mode(self) -> str | None: ...
    def bind(self, on_event: Callable[[ContainerEvent], object], on_connected: Callable[[], object],
             on_disconnected: Callable[[], object]) -> None: ...
    def start(self) -> Deferred[None]: ...
    def stop(self) -> Deferred[None]: ...
    def publish(self, subject: str, payload: bytes) -> Deferred[None]: ...


class ChangeFeed(Protocol):
    """What the service needs of the database's change feed (L{ChangeFeedListener}, or a memory fake)."""

    state: str

    @property
    def listening(self) -> bool: ...
    def bind(self, on_change: Callable[[Change], object], on_listening: Callable[[], object],
             on_stopped: Callable[[str], object]) -> None: ...
    def start(self) -> Deferred[None]: ...
    def check(self) -> Deferred[bool]: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StateStatus:
    """
    What /readyz and /metrics report.  C{containers_ready} is false until the
    first full read succeeded (PostgreSQL down at start); after that the last
    snapshot is served whatever happens, and C{database_connected} tells
    whether it is current.
    """

    database_connected: bool
    containers_ready: bool
    events_connected: bool | None
    last_full_resync: float | None
    last_error: str | None
    full_resyncs: int
    refreshes: int
    events: int
    notifications: int = 0
    unannounced_changes: int = 0
    change_feed: str | None = None
    events_mode: str | None = None

    @property
    def feeds(self) -> list[str]:
        """The active feeds, for the start-up log and /readyz (empty: polling)."""
        active = []
        if self.change_feed == "listening":
            active.append("PostgreSQL change feed")
        if self.events_connected:
            active.append(f"NATS events ({self.events_mode})" if self.events_mode else "NATS events")
        return active


class StateService(Service):
    """
    @param on_routes: called with the whole route list (the routes file's,
        then the database's other rows) whenever it changes; the owner builds
        the L{RouteTable} from it.
    @param file_routes: the routes file's routes, if known at start; later
        versions come through L{set_file_routes}.
    @param events: the NATS event feed, if any.
    @param changes: the database's change feed (LISTEN), if any.
    @param poll_interval: seconds between full reads while no feed is
        active.
    @param resync_interval: seconds between full reads while a feed is
        active, as a net for lost events and for rows others inserted into
        C{static_routes} (0 turns it off).
    @param retry_policy: seconds to wait after the Nth consecutive failure
        (N from 0); jittered exponential backoff by default.
    @param on_propagated: called with the seconds from an event's or a
        change notification's arrival to its change being served, once per
        event or notification (the owner keeps the histogram: the state
        knows nothing of metrics).
    """

    def __init__(self, database: ContainerDatabase, directory: ContainerDirectory, clock: IReactorTime, *,
                 events: EventFeed | None = None, changes: ChangeFeed | None = None,
                 on_routes: Callable[[list[Route]], object] | None = None,
                 file_routes: Sequence[Route] | None = None, poll_interval: float = 5.0,
                 resync_interval: float = DEFAULT_RESYNC_INTERVAL,
                 retry_policy: Callable[[int], float] | None = None,
                 on_propagated: Callable[[float], object] | None = None) -> None:
        self.database = database
        self.directory = directory
        self.events = events
        self.changes = changes
        self._clock = clock
        self._on_routes = on_routes
        self._file_routes = list(file_routes) if file_routes is not None else None
        self._other_routes: list[Route] = []
        self._poll_interval = poll_interval
        self._resync_interval = resync_interval
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0)
        self._connected = False
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        # Pin deletions, which routing does not wait for; stopping does.
        self._forgetting: set[Deferred[Any]] = set()
        self._want_full: str | None = None
        self._want_routes = False
        self._pending: set[str] = set()
        # Users whose SSH keys changed: resolved to their containers when
        # the read starts, from the snapshot every earlier read left.
        self._pending_users: set[str] = set()
        self._poller: LoopingCall | None = None
        self._last_full: float | None = None
        self._last_error: str | None = None
        self._counts = {"full_resyncs": 0, "refreshes": 0, "events": 0, "notifications": 0,
                        "unannounced_changes": 0}
        # Seconds from an event's or a change notification's arrival to its change being served.
        self._on_propagated = on_propagated or _ignore_propagation
        self._events_since: list[float] = []
        # Those waiting for the read that covers their request (JetStream
        # acknowledges an event only once its change is applied).
        self._waiters: list[Deferred[None]] = []
        self._kick_call: IDelayedCall | None = None
        self._feeds_reported: list[str] | None = None
        database.add_reconnect_observer(self._database_reconnected)
        if events is not None:
            events.bind(self._event_received, self._events_connected, self._events_disconnected)
        if changes is not None:
            changes.bind(self._change_received, self._changes_listening, self._changes_stopped)

    def status(self) -> StateStatus:
        alive = getattr(self.database, "alive", True)
        return StateStatus(
            database_connected=self._connected and bool(alive) and self._last_error is None,
            containers_ready=self.directory.current.ready,
            events_connected=None if self.events is None else self.events.connected,
            last_full_resync=self._last_full,
            last_error=self._last_error,
            change_feed=None if self.changes is None else self.changes.state,
            events_mode=None if self.events is None else self.events.mode,
            **self._counts,
        )

    def startService(self) -> None:
        super().startService()
        self._publish_routes()
        self._start_connecting()
        poller = self._poller = LoopingCall(self._poll)
        poller.clock = self._clock
        poller.start(self._poll_interval, now=False)
        if self.events is not None:
            self.events.start().addErrback(self._events_failed)
        if self.changes is not None:
            self.changes.start().addErrback(self._changes_failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._cancel_retry()
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # A query in flight is waited for (each has a timeout), not cancelled:
        # cancelling a txpostgres query mid-transaction leaves its connection
        # half rolled back.
        if self._in_flight is not None:
            await _settled(self._in_flight)
        for forgetting in list(self._forgetting):
            await _settled(forgetting)
        self.database.close()
        self._connected = False
        # Waiters still waiting are left unanswered: their events are not
        # acknowledged, so JetStream delivers them again after the restart.
        self._waiters = []
        if self.changes is not None:
            self.changes.stop()
        if self.events is not None:
            try:
                await self.events.stop()
            except Exception:
                _log.failure("nats: closing failed")

    def set_file_routes(self, routes: Sequence[Route]) -> None:
        """A new version of the routes file: routed at once, then synced into the database."""
        self._file_routes = list(routes)
        self._publish_routes()
        self._want_routes = True
        self._kick()

    def request_full_resync(self, reason: str) -> None:
        """Re-read everything (containers and routes) as soon as the queue allows."""
        self._want_full = self._want_full or reason
        self._kick()

    def _request_full_resync_soon(self, reason: str) -> None:
        self._want_full = self._want_full or reason
        self._kick_soon()

    def request_refresh(self, container_ids: Collection[str], user_ids: Collection[str] = ()) -> Deferred[None]:
        """
        Re-read these containers, and every container of these users (their
        SSH keys changed); fires once a read that started after this call
        has been applied (never, if the service stops first).
        """
        if not container_ids and not user_ids:
            return succeed(None)
        return self._wait(lambda: self._asked(container_ids, user_ids))

    def _asked(self, container_ids: Collection[str], user_ids: Collection[str]) -> None:
        self._pending.update(container_ids)
        self._pending_users.update(user_ids)

    def _take_pending(self) -> set[str]:
        """
        The containers asked for, those of the users asked for included.
        Keys are read per container (its owner's), so a user's keys are
        re-read through the containers the gateway holds for them, looked
        up only now: a read still running when the hint came (the first
        full read, say) may bring the user's containers, and its snapshot
        may predate the key's change.
        """
        ids, self._pending = self._pending, set()
        users, self._pending_users = self._pending_users, set()
        if users:
            ids.update(c.id for c in self.directory.current.containers.values() if c.user_id in users)
        return ids

    def _wanted(self) -> bool:
        return bool(self._want_full or self._pending or self._pending_users or self._want_routes)

    def _wait(self, request: Callable[[], object]) -> Deferred[None]:
        # The waiter goes first: with a database that answers at once, the
        # read is over by the time request() returns.
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        request()
        self._kick_soon()
        return waiter

    def _kick_soon(self) -> None:
        """
        Read at the end of this reactor turn.  Hints come in bursts delivered
        in one turn (one transaction's notifications: a deleted container's
        row and its cascaded rules, a 443 rule and C{https_enabled}), all
        committed before the turn began: one read then covers them all,
        where reading at the first would read the same container again
        for the rest.
        """
        if self._kick_call is None:
            self._kick_call = self._clock.callLater(0, self._kick_now)

    def _kick_now(self) -> None:
        self._kick_call = None
        self._kick()

    def _start_connecting(self) -> None:
        self._retry = None
        self._in_flight = self.database.connect()
        self._in_flight.addCallbacks(self._database_connected, self._connect_failed)

    def _database_connected(self, _: object) -> None:
        self._in_flight = None
        self._connected = True
        self._failures = 0
        self._last_error = None
        _log.info("state: connected to PostgreSQL")
        self._want_routes = True
        self.request_full_resync("PostgreSQL connected")

    def _connect_failed(self, reason: Failure) -> None:
        self._in_flight = None
        if not self.running or reason.check(CancelledError):
            return
        delay = self._backoff(reason)
        _log.warn("state: cannot connect to PostgreSQL ({error}); serving the routes file, containers not ready; "
                  "retrying in {delay:.1f} s", error=self._last_error, delay=delay)
        self._retry = self._clock.callLater(delay, self._start_connecting)

    def _database_reconnected(self) -> None:
        if not self._connected or not self.running:
            return
        # The detector knows the database is back: no reason to sit out a backoff.
        self._cancel_retry()
        self.request_full_resync("PostgreSQL reconnected")

    def _event_received(self, event: ContainerEvent) -> Deferred[None]:
        self._counts["events"] += 1
        if not self._connected:
            # Nothing read yet: the first full read, once connected, covers
            # it (and answers the waiter).
            return self._wait(lambda: None)
        self._events_since.append(self._clock.seconds())
        if event.full_resync:
            reason = f"an event on {event.subject}"
            return self._wait(lambda: setattr(self, "_want_full", self._want_full or reason))
        return self.request_refresh(event.container_ids, event.user_ids)

    def _change_received(self, change: Change) -> None:
        self._counts["notifications"] += 1
        if not self._connected:
            return
        self._events_since.append(self._clock.seconds())
        if change.full_resync:
            self._request_full_resync_soon(f"a change to {change.table}")
        else:
            self._asked(change.container_ids, change.user_ids)
            self._kick_soon()

    def _changes_listening(self) -> None:
        if self._connected:
            self.request_full_resync("change feed listening")

    def _changes_stopped(self, reason: str) -> None:
        _log.warn("state: the change feed stopped ({reason}); polling PostgreSQL every {interval} s until it is back",
                  reason=reason, interval=self._poll_interval)

    def _changes_failed(self, reason: Failure) -> None:
        if not reason.check(CancelledError):
            _log.failure("change feed: stopped", reason)

    def _events_connected(self) -> None:
        if self._connected:
            self.request_full_resync("NATS connected")

    def _events_disconnected(self) -> None:
        _log.warn("state: NATS is down; polling PostgreSQL every {interval} s until it is back",
                  interval=self._poll_interval)

    def _events_failed(self, reason: Failure) -> None:
        if not reason.check(CancelledError):
            _log.failure("nats: the event feed stopped", reason)

    def _feed_active(self) -> bool:
        return bool((self.events is not None and self.events.connected)
                    or (self.changes is not None and self.changes.listening))

    def _poll(self) -> None:
        if not self._connected:
            return
        if not self._feed_active():
            self.request_full_resync("poll")
        elif self._resync_interval and (self._last_full is None
                                        or self._clock.seconds() - self._last_full >= self._resync_interval):
            self.request_full_resync("periodic resync")

    def _kick(self) -> None:
        if self.running and self._connected and self._in_flight is None and self._retry is None:
            if self._wanted():
                draining = ensureDeferred(self._drain())
                # With a database that answers synchronously the drain is
                # already over; only a pending one is in flight.
                if not draining.called:
                    self._in_flight = draining

    async def _drain(self) -> None:
        try:
            while self.running and self._wanted():
                arrived, self._events_since = self._events_since, []
                await self._step()
                now = self._clock.seconds()
                for since in arrived:
                    self._on_propagated(now - since)
            self._failures = 0
        except Exception:
            self._failed(Failure())
        finally:
            self._in_flight = None

    async def _step(self) -> None:
        # Every request made until now is covered by this step (a full read,
        # or the pending ids), so its waiters are answered once it is applied.
        waiters, self._waiters = self._waiters, []
        try:
            await self._read_step()
        except BaseException:
            # Not applied: a later read (a full one, see below) answers them.
            self._waiters[:0] = waiters
            raise
        for waiter in waiters:
            waiter.callback(None)

    async def _read_step(self) -> None:
        if self._want_full:
            reason, self._want_full = self._want_full, None
            # A full read started now covers every id asked for until now.
            announced = self._take_pending()
            try:
                await self._resync_containers(reason, announced)
                await self._resync_routes()
            except BaseException:
                self._want_full = self._want_full or reason
                raise
            self._publish_refreshed(reason)
            self._report_feeds()
        elif self._pending or self._pending_users:
            ids = self._take_pending()
            if not ids:
                # Users the gateway holds no container of: nothing to read.
                return
            try:
                await self._refresh(ids)
            except BaseException:
                # Which of them changed is unknown now: read everything.
                self._want_full = self._want_full or "a failed refresh"
                raise
        elif self._want_routes:
            self._want_routes = False
            try:
                await self._resync_routes()
            except BaseException:
                self._want_routes = True
                raise
        self._last_error = None

    async def _resync_containers(self, reason: str, announced: set[str]) -> None:
        if self.changes is not None:
            # Also LISTENs when the triggers appeared since the last read:
            # before the read, so that no later commit goes unannounced.
            await self.changes.check()
        audited = self._feed_active() and self.directory.current.ready
        containers = await self.database.load_all()
        if audited:
            # Hints that arrived while the read ran may name changes it saw.
            users = self._pending_users
            arrived = {cid for cid, c in containers.items() if c.user_id in users} if users else set()
            self._count_unannounced(containers, announced | self._pending | arrived)
        self.directory.swap(ContainerSnapshot(containers, ready=True))
        self._forget_pins(self.database.prune_pins(containers.keys()))
        self._last_full = self._clock.seconds()
        self._counts["full_resyncs"] += 1
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
        self._counts["unannounced_changes"] += len(changed)
        named = ", ".join(changed[:_NAMED_IDS]) + (f" and {len(changed) - _NAMED_IDS} more"
                                                   if len(changed) > _NAMED_IDS else "")
        _log.warn("state: the full read found {count} container changes no event or notification announced "
                  "({named}); is a feed silent?", count=len(changed), named=named)

    def _report_feeds(self) -> None:
        feeds = self.status().feeds
        if feeds == self._feeds_reported:
            return
        self._feeds_reported = feeds
        if feeds:
            net = (f"a full read every {self._resync_interval:g} s as a net" if self._resync_interval
                   else "no periodic full read (--resync-interval 0)")
            _log.info("state: following {feeds}; {net}", feeds=" and ".join(feeds), net=net)
        else:
            detail = ""
            if self.changes is not None and self.changes.state == "not installed":
                detail = " (the change feed is not installed: python -m edd_gateway install-change-feed DSN)"
            _log.info("state: no feed active{detail}; polling PostgreSQL every {interval:g} s",
                      detail=detail, interval=self._poll_interval)

    async def _refresh(self, ids: set[str]) -> None:
        found = await self.database.load_containers(ids)
        self._counts["refreshes"] += 1
        for container_id in ids - found.keys():
            self._forget_pins(self.database.clear_pin(container_id).addCallback(int))
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

    async def _resync_routes(self) -> None:
        if self._file_routes is not None:
            await self.database.sync_file_routes(self._file_routes)
        self._other_routes = await self.database.load_other_routes()
        self._want_routes = False
        self._publish_routes()

    def _forget_pins(self, forgetting: Deferred[Any]) -> None:
        # A deleted container's SSH host-key pin goes with it, so a container
        # later created under the same id is pinned afresh instead of refused.
        # Not awaited: routing must not wait for this bookkeeping.
        def forgotten(count: object) -> None:
            if isinstance(count, int) and count:
                _log.info("state: dropped the SSH host-key pins of {count} deleted containers", count=count)

        self._forgetting.add(forgetting)
        forgetting.addCallbacks(forgotten, lambda failure: _log.warn(
            "state: cannot drop SSH pins of deleted containers: {error}", error=failure.getErrorMessage()))
        forgetting.addBoth(lambda _: self._forgetting.discard(forgetting))

    def _publish_routes(self) -> None:
        if self._on_routes is None:
            return
        try:
            self._on_routes(self.routes())
        except Exception:
            _log.failure("state: installing the route list failed")

    def routes(self) -> list[Route]:
        """The current route list: the routes file's, then the database's other rows."""
        return merge_routes(self._file_routes or [], self._other_routes)

    def _publish_refreshed(self, reason: str) -> None:
        if self.events is None or not self.events.connected:
            return
        containers = self.directory.current.containers
        running = sum(1 for container in containers.values() if container.running)
        body = refreshed_message(len(containers), running, len(self.routes()), reason, self._clock.seconds())
        self.events.publish(REFRESHED_SUBJECT, body).addErrback(
            lambda failure: _log.warn("nats: cannot publish {subject}: {error}", subject=REFRESHED_SUBJECT,
                                      error=failure.getErrorMessage()))

    def _failed(self, reason: Failure) -> None:
        if not self.running or reason.check(CancelledError):
            return
        delay = self._backoff(reason)
        _log.warn("state: reading PostgreSQL failed ({error}); keeping the last snapshot, retrying in {delay:.1f} s",
                  error=self._last_error, delay=delay)
        self._retry = self._clock.callLater(delay, self._retry_fired)

    def _retry_fired(self) -> None:
        self._retry = None
        self._kick()

    def _backoff(self, reason: Failure) -> float:
        lines = reason.getErrorMessage().strip().splitlines()
        name = reason.type.__name__  # type: ignore[union-attr]  # a Failure's type is set
        self._last_error = f"{name}: {lines[0] if lines else ''}".rstrip(": ")
        delay = self._retry_policy(self._failures)
        self._failures += 1
        return delay

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None


def _settled(deferred: Deferred[Any]) -> Deferred[None]:
    """Fires once C{deferred} has, leaving its result to its own callbacks."""
    waiter: Deferred[None] = Deferred()

    def passthrough(result: object) -> object:
        waiter.callback(None)
        return result

    deferred.addBoth(passthrough)
    return waiter


def _ignore_propagation(seconds: float) -> None:
    """No one is measuring how fast changes propagate."""
