"""
Keeping the domain directory in step with the database: L{DomainsService}
reads the whole table at start, whenever the change feed announces a change
or starts listening (after each reconnection too), and as a net every
C{resync_interval} seconds (every C{poll_interval} while no feed listens,
asking the feed each time whether its triggers are there now: they come
with the tables, at the first connect of any replica).
A failed read keeps the last snapshot and is retried at the next tick; one
read at a time, and a hint arriving during a read asks for one more.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.domains.model import DomainDirectory, DomainSnapshot
from edd_gateway.domains.source import CHALLENGES_TABLE, DomainSource
from edd_gateway.state.postgres import DatabaseUnavailable
from edd_gateway.state.sources import ChangeFeed
from edd_gateway.state.triggers import Change, first_line

__all__ = ["DomainsService"]

_log = Logger()


class DomainsService(Service):
    """
    @param changes: the domains' change feed (a L{ChangeFeedListener} on
        L{edd_gateway.domains.source.DOMAINS_FEED}), if any.
    @param on_challenges: called when the same feed says the pending ACME
        challenges changed, and when it starts listening (issuance's
        L{edd_gateway.issuance.challenge_sync.ChallengeSync}).
    @ivar reads: how many reads were applied (for tests and /metrics).
    """

    def __init__(self, source: DomainSource, directory: DomainDirectory, clock: IReactorTime, *,
                 changes: ChangeFeed | None = None, poll_interval: float = 5.0,
                 resync_interval: float = 30.0, on_challenges: Callable[[], object] | None = None) -> None:
        self.source = source
        self.directory = directory
        self.changes = changes
        self._clock = clock
        self._poll_interval = poll_interval
        self._resync_interval = resync_interval
        self._reading: Deferred[None] | None = None
        self._again = False
        self._last_read: float | None = None
        self._poller: LoopingCall | None = None
        self.reads = 0
        self.last_error: str | None = None
        self._on_challenges = on_challenges or (lambda: None)
        if changes is not None:
            changes.bind(self._changed, self._listening, self._feed_stopped)

    def startService(self) -> None:
        super().startService()
        if self.changes is not None:
            self.changes.start().addErrback(self._feed_failed)
        poller = self._poller = LoopingCall(self._tick)
        poller.clock = self._clock
        poller.start(self._poll_interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self.changes is not None:
            self.changes.stop()
        reading = self._reading
        if reading is None:
            return None
        done: Deferred[None] = Deferred()
        reading.addBoth(lambda _: done.callback(None))
        return done

    def read(self, reason: str) -> None:
        """Read the whole table now (or once more after the read under way)."""
        if not self.running:
            return
        if self._reading is not None:
            self._again = True
            return
        self._reading = ensureDeferred(self._read(reason))
        self._reading.addErrback(self._read_failed)
        self._reading.addBoth(self._read_done)

    async def _read(self, reason: str) -> None:
        domains = await self.source.load_domains()
        self._last_read = self._clock.seconds()
        self.reads += 1
        self.last_error = None
        before = self.directory.current
        if not before.ready or before.domains != domains:
            # Only a change is swapped in: observers (the router's cache of
            # built routes) keep what they have across an unchanged poll.
            self.directory.swap(DomainSnapshot(domains, ready=True))
            listed = sum(1 for domain in domains.values() if domain.listed)
            _log.info("domains: {count} custom domains ({listed} verified or active) read after {reason}",
                      count=len(domains), listed=listed, reason=reason)

    def _read_failed(self, reason: Failure) -> None:
        error = first_line(reason.value) if reason.value is not None else "?"
        if self._last_read is None and reason.check(DatabaseUnavailable):
            # Before the state service's first connect: nothing to say yet.
            self.last_error = error
            return
        if error != self.last_error:
            _log.warn("domains: cannot read custom_domains ({error}); keeping what was read before", error=error)
        self.last_error = error

    def _read_done(self, _: object) -> None:
        self._reading = None
        if self._again:
            self._again = False
            self.read("a change during the last read")

    def _tick(self) -> None:
        changes = self.changes
        listening = changes is not None and changes.listening
        if changes is not None and not listening:
            # The triggers appear with the tables, at the first connect of
            # any replica: look again (it LISTENs, and tells us, once they are).
            changes.check()
        if not listening:
            self._on_challenges()
        last = self._last_read
        if last is None or self.last_error is not None:
            self.read("start" if last is None else "a failed read")
        elif not listening:
            self.read("poll")
        elif self._resync_interval and self._clock.seconds() - last >= self._resync_interval:
            self.read("periodic resync")

    def _changed(self, change: Change) -> None:
        if change.table == CHALLENGES_TABLE:
            self._on_challenges()
        else:
            self.read(f"a change to {change.table}")

    def _listening(self) -> None:
        self.read("the domains feed listening")
        self._on_challenges()

    def _feed_stopped(self, reason: str) -> None:
        _log.warn("domains: the feed stopped ({reason}); polling every {interval:g} s", reason=reason,
                  interval=self._poll_interval)

    def _feed_failed(self, reason: Failure) -> None:
        _log.failure("domains: the feed stopped", reason)
