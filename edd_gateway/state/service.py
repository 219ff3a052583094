"""
Keeping the container directory and the route list in step with PostgreSQL:
L{StateService} connects (retrying with backoff while the database is down),
resyncs in full after every (re)connection of PostgreSQL, of NATS or of the
change feed, re-reads single containers (or one user's containers, when
their SSH keys changed) when an event or a change notification names them,
polls when no feed is active, and reports readiness.

The service wires the parts together and hears the feeds: its sources
(L{edd_gateway.state.sources}), the one queue that decides when to read
(L{edd_gateway.state.readqueue}), what each read does
(L{edd_gateway.state.reads}, which also counts the changes a full read
found that no feed announced) and the deleted containers' pins dropped in
the background (L{edd_gateway.state.pin_drops}).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.routes.model import Route
from edd_gateway.state.events import REFRESHED_SUBJECT, ContainerEvent, refreshed_message
from edd_gateway.state.model import ContainerDirectory
from edd_gateway.state.pin_drops import settled
from edd_gateway.state.readqueue import Backoff, ReadQueue
from edd_gateway.state.reads import ContainerReads, RouteList
from edd_gateway.state.sources import ChangeFeed, ContainerDatabase, EventFeed
from edd_gateway.state.triggers import Change

__all__ = ["StateService", "StateStatus"]

#: Default seconds between full reads while a feed is active.  A full read
#: is three SELECTs (tens of milliseconds with 10,000 containers), so one
#: every 30 s costs a sixth of the original gateway's 5 s poll, and a feed
#: that falls silent (triggers dropped by a migration, a publisher that
#: stops) leaves a wrong route or a revoked SSH key for at most 30 s, and
#: shows in edd_gateway_state_unannounced_changes_total.
DEFAULT_RESYNC_INTERVAL = 30.0

_log = Logger()


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
        self._poll_interval = poll_interval
        self._resync_interval = resync_interval
        self._backoff = Backoff(clock, retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0))
        self._connected = False
        self._connecting: Deferred[None] | None = None
        self._routes = RouteList(database, on_routes, file_routes)
        self._reads = ContainerReads(database, directory, clock, changes=changes, feed_active=self._feed_active)
        self._queue = ReadQueue(self._reads, self._routes, directory, clock, self._backoff,
                                running=lambda: bool(self.running), connected=lambda: self._connected,
                                on_full_read=self._full_read, on_propagated=on_propagated or _ignore_propagation)
        self._poller: LoopingCall | None = None
        self._counts = {"events": 0, "notifications": 0}
        self._feeds_reported: list[str] | None = None
        database.add_reconnect_observer(self._database_reconnected)
        if events is not None:
            events.bind(self._event_received, self._events_connected, self._events_disconnected)
        if changes is not None:
            changes.bind(self._change_received, self._changes_listening, self._changes_stopped)

    def status(self) -> StateStatus:
        alive = getattr(self.database, "alive", True)
        last_error = self._backoff.last_error
        return StateStatus(
            database_connected=self._connected and bool(alive) and last_error is None,
            containers_ready=self.directory.current.ready,
            events_connected=None if self.events is None else self.events.connected,
            last_full_resync=self._reads.last_full,
            last_error=last_error,
            change_feed=None if self.changes is None else self.changes.state,
            events_mode=None if self.events is None else self.events.mode,
            **self._counts,
            **self._reads.counts,
        )

    def startService(self) -> None:
        super().startService()
        self._routes.publish()
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
        self._backoff.cancel()
        self._queue.stop()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # A query in flight is waited for (each has a timeout), not cancelled:
        # cancelling a txpostgres query mid-transaction leaves its connection
        # half rolled back.
        for in_flight in (self._connecting, self._queue.in_flight):
            if in_flight is not None:
                await settled(in_flight)
        await self._reads.pins.settled()
        self.database.close()
        self._connected = False
        # Waiters still waiting are left unanswered: their events are not
        # acknowledged, so JetStream delivers them again after the restart.
        self._queue.drop_waiters()
        if self.changes is not None:
            self.changes.stop()
        if self.events is not None:
            try:
                await self.events.stop()
            except Exception:
                _log.failure("nats: closing failed")

    def set_file_routes(self, routes: Sequence[Route]) -> None:
        """A new version of the routes file: routed at once, then synced into the database."""
        self._routes.set_file_routes(routes)
        self._queue.kick()

    def request_full_resync(self, reason: str) -> None:
        """Re-read everything (containers and routes) as soon as the queue allows."""
        self._queue.ask_full(reason)
        self._queue.kick()

    def request_refresh(self, container_ids: Collection[str], user_ids: Collection[str] = ()) -> Deferred[None]:
        """
        Re-read these containers, and every container of these users (their
        SSH keys changed); fires once a read that started after this call
        has been applied (never, if the service stops first).
        """
        return self._queue.refresh(container_ids, user_ids)

    def routes(self) -> list[Route]:
        """The current route list: the routes file's, then the database's other rows."""
        return self._routes.routes()

    def _start_connecting(self) -> None:
        self._connecting = self.database.connect()
        self._connecting.addCallbacks(self._database_connected, self._connect_failed)

    def _database_connected(self, _: object) -> None:
        self._connecting = None
        self._connected = True
        self._backoff.failures = 0
        self._backoff.last_error = None
        _log.info("state: connected to PostgreSQL")
        self._routes.stale = True
        self.request_full_resync("PostgreSQL connected")

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if not self.running or reason.check(CancelledError):
            return
        delay = self._backoff.failed(reason)
        _log.warn("state: cannot connect to PostgreSQL ({error}); serving the routes file, containers not ready; "
                  "retrying in {delay:.1f} s", error=self._backoff.last_error, delay=delay)
        self._backoff.retry_in(delay, self._start_connecting)

    def _database_reconnected(self) -> None:
        if not self._connected or not self.running:
            return
        # The detector knows the database is back: no reason to sit out a backoff.
        self._backoff.cancel()
        self.request_full_resync("PostgreSQL reconnected")

    def _event_received(self, event: ContainerEvent) -> Deferred[None]:
        self._counts["events"] += 1
        if not self._connected:
            # Nothing read yet: the first full read, once connected, covers
            # it (and answers the waiter).
            return self._queue.wait(lambda: None)
        self._queue.arrived()
        if event.full_resync:
            reason = f"an event on {event.subject}"
            return self._queue.wait(lambda: self._queue.ask_full(reason))
        return self._queue.refresh(event.container_ids, event.user_ids)

    def _change_received(self, change: Change) -> None:
        self._counts["notifications"] += 1
        if not self._connected:
            return
        self._queue.arrived()
        if change.full_resync:
            self._queue.ask_full(f"a change to {change.table}")
        else:
            self._queue.ask(change.container_ids, change.user_ids)
        self._queue.kick_soon()

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
        last_full = self._reads.last_full
        if not self._feed_active():
            self.request_full_resync("poll")
        elif self._resync_interval and (last_full is None
                                        or self._clock.seconds() - last_full >= self._resync_interval):
            self.request_full_resync("periodic resync")

    def _full_read(self, reason: str) -> None:
        self._publish_refreshed(reason)
        self._report_feeds()

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

    def _publish_refreshed(self, reason: str) -> None:
        if self.events is None or not self.events.connected:
            return
        containers = self.directory.current.containers
        running = sum(1 for container in containers.values() if container.running)
        body = refreshed_message(len(containers), running, len(self.routes()), reason, self._clock.seconds())
        self.events.publish(REFRESHED_SUBJECT, body).addErrback(
            lambda failure: _log.warn("nats: cannot publish {subject}: {error}", subject=REFRESHED_SUBJECT,
                                      error=failure.getErrorMessage()))


def _ignore_propagation(seconds: float) -> None:
    """No one is measuring how fast changes propagate."""
