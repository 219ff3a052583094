"""
When the state service reads PostgreSQL: L{ReadQueue}, the one queue every
read goes through, and L{Backoff}, the wait after the database failed
(connecting or reading).

All reads go through one queue, one at a time, so a slow full resync can
never overwrite what a later event refreshed: whatever is read last was read
after every earlier change.  Requests arriving meanwhile are merged (a set
of container ids, a full-resync flag), so a burst of events costs one
batched read.  A failed read keeps the last snapshot and retries with
backoff; nothing here raises into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.state.model import Container, ContainerDirectory
from edd_gateway.state.reads import ContainerReads, RouteList

__all__ = ["Backoff", "ReadQueue"]

_log = Logger()


class Backoff:
    """
    The database's consecutive failures, connecting or reading: the error
    last seen (for /readyz) and the wait before the next try.

    @ivar pending: the retry waiting to run, if any.
    """

    def __init__(self, clock: IReactorTime, policy: Callable[[int], float]) -> None:
        self._clock = clock
        self._policy = policy
        self.failures = 0
        self.last_error: str | None = None
        self.pending: IDelayedCall | None = None

    def failed(self, reason: Failure) -> float:
        """Note one more failure; the seconds to wait before trying again."""
        lines = reason.getErrorMessage().strip().splitlines()
        name = reason.type.__name__  # type: ignore[union-attr]  # a Failure's type is set
        self.last_error = f"{name}: {lines[0] if lines else ''}".rstrip(": ")
        delay = self._policy(self.failures)
        self.failures += 1
        return delay

    def retry_in(self, delay: float, again: Callable[[], object]) -> None:
        def fired() -> None:
            self.pending = None
            again()

        self.pending = self._clock.callLater(delay, fired)

    def cancel(self) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None


class ReadQueue:
    """
    The reads asked for, merged, and read one batch at a time.

    @param running: whether the service is running (reads stop, and
        failures are not retried, once it is not).
    @param connected: whether the database is connected (nothing is read
        before).
    @param on_full_read: called with the reason after each full read (and
        the routes read with it) was applied.
    @param on_propagated: called with the seconds from each event's or
        notification's arrival (L{arrived}) to the end of the read that
        covered it.
    @ivar in_flight: the read running now, if any.
    """

    def __init__(self, reads: ContainerReads, routes: RouteList, directory: ContainerDirectory,
                 clock: IReactorTime, backoff: Backoff, *, running: Callable[[], bool],
                 connected: Callable[[], bool], on_full_read: Callable[[str], object],
                 on_propagated: Callable[[float], object]) -> None:
        self._reads = reads
        self._routes = routes
        self._directory = directory
        self._clock = clock
        self._backoff = backoff
        self._running = running
        self._connected = connected
        self._on_full_read = on_full_read
        self._on_propagated = on_propagated
        self.in_flight: Deferred[Any] | None = None
        self._want_full: str | None = None
        self._pending: set[str] = set()
        # Users whose SSH keys changed: resolved to their containers when
        # the read starts, from the snapshot every earlier read left.
        self._pending_users: set[str] = set()
        # When each event or change notification the next read covers arrived.
        self._events_since: list[float] = []
        # Those waiting for the read that covers their request (JetStream
        # acknowledges an event only once its change is applied).
        self._waiters: list[Deferred[None]] = []
        self._kick_call: IDelayedCall | None = None

    def ask_full(self, reason: str) -> None:
        """Re-read everything at the next read (the first reason asked is the one logged)."""
        self._want_full = self._want_full or reason

    def ask(self, container_ids: Collection[str], user_ids: Collection[str]) -> None:
        self._pending.update(container_ids)
        self._pending_users.update(user_ids)

    def arrived(self) -> None:
        """An event or a change notification arrived: its propagation is measured from now."""
        self._events_since.append(self._clock.seconds())

    def refresh(self, container_ids: Collection[str], user_ids: Collection[str] = ()) -> Deferred[None]:
        """
        Re-read these containers, and every container of these users (their
        SSH keys changed); fires once a read that started after this call
        has been applied (never, if the service stops first).
        """
        if not container_ids and not user_ids:
            return succeed(None)
        return self.wait(lambda: self.ask(container_ids, user_ids))

    def wait(self, request: Callable[[], object]) -> Deferred[None]:
        """Make C{request}, read soon; fires once a read covering it has been applied."""
        # The waiter goes first: with a database that answers at once, the
        # read is over by the time request() returns.
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        request()
        self.kick_soon()
        return waiter

    def stop(self) -> None:
        """No more reads start; those waiting are left unanswered."""
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None

    def drop_waiters(self) -> None:
        self._waiters = []

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
            ids.update(c.id for c in self._directory.current.containers.values() if c.user_id in users)
        return ids

    def _hinted(self, containers: dict[str, Container]) -> set[str]:
        """What hints named while a full read ran: the ids, and the users' containers among those it read."""
        users = self._pending_users
        arrived = {cid for cid, c in containers.items() if c.user_id in users} if users else set()
        return self._pending | arrived

    def _wanted(self) -> bool:
        return bool(self._want_full or self._pending or self._pending_users or self._routes.stale)

    def kick_soon(self) -> None:
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
        self.kick()

    def kick(self) -> None:
        """Start reading now, unless a read is running, a retry is waiting or nothing is wanted."""
        if self._running() and self._connected() and self.in_flight is None and self._backoff.pending is None:
            if self._wanted():
                draining = ensureDeferred(self._drain())
                # With a database that answers synchronously the drain is
                # already over; only a pending one is in flight.
                if not draining.called:
                    self.in_flight = draining

    async def _drain(self) -> None:
        try:
            while self._running() and self._wanted():
                arrived, self._events_since = self._events_since, []
                await self._step()
                now = self._clock.seconds()
                for since in arrived:
                    self._on_propagated(now - since)
            self._backoff.failures = 0
        except Exception:
            self._failed(Failure())
        finally:
            self.in_flight = None

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
                await self._reads.full(reason, announced, self._hinted)
                await self._routes.resync()
            except BaseException:
                self._want_full = self._want_full or reason
                raise
            self._on_full_read(reason)
        elif self._pending or self._pending_users:
            ids = self._take_pending()
            if not ids:
                # Users the gateway holds no container of: nothing to read.
                return
            try:
                await self._reads.refresh(ids)
            except BaseException:
                # Which of them changed is unknown now: read everything.
                self._want_full = self._want_full or "a failed refresh"
                raise
        elif self._routes.stale:
            self._routes.stale = False
            try:
                await self._routes.resync()
            except BaseException:
                self._routes.stale = True
                raise
        self._backoff.last_error = None

    def _failed(self, reason: Failure) -> None:
        if not self._running() or reason.check(CancelledError):
            return
        delay = self._backoff.failed(reason)
        _log.warn("state: reading PostgreSQL failed ({error}); keeping the last snapshot, retrying in {delay:.1f} s",
                  error=self._backoff.last_error, delay=delay)
        self._backoff.retry_in(delay, self.kick)
