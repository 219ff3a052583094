"""
The PostgreSQL change feed's listening end (L{ChangeFeedListener}): the
triggers L{edd_gateway.state.triggers} installs announce every change to
the compute service's tables, and this LISTENs for them.

NOTIFY is delivered at commit, never before, so the re-read a notification
starts always sees the committed row; a rolled-back write announces nothing.
The listener uses one dedicated txpostgres connection that LISTENs while the
triggers are present, re-checks them whenever asked (at every full resync),
and after a lost connection reconnects, LISTENs again and reports it, so
that its owner resyncs in full.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import retrying

from edd_gateway.state.postgres import _Connection, _Detector
from edd_gateway.state.triggers import CHANNEL, FEED_TABLES, PRESENT_QUERY, TRIGGER, Change, first_line, parse_change

__all__ = ["COMPUTE_FEED", "ChangeFeedListener", "FeedSpec"]

_log = Logger()


@dataclass(frozen=True)
class FeedSpec:
    """
    Which feed a listener follows: its channel, the query counting its
    triggers (present when the count is C{triggers}), the tables it names in
    log lines, and the parser of its payloads.
    """

    channel: str
    presence_query: str
    presence_params: tuple[Any, ...]
    triggers: int
    tables: str
    parse: Callable[[str], Change]


#: The compute service's tables' feed (L{edd_gateway.state.triggers}).
COMPUTE_FEED = FeedSpec(CHANNEL, PRESENT_QUERY, (TRIGGER,), len(FEED_TABLES), ", ".join(FEED_TABLES), parse_change)


class ChangeFeedListener:
    """
    LISTEN on L{CHANNEL} over a dedicated connection to the compute database,
    while the triggers are there.

    The handlers given to L{bind}: C{on_change(change)} for each
    notification; C{on_listening()} each time listening starts (first
    connection, after a reconnection, after the triggers appear) — from
    then on no committed change goes unannounced, so the owner reads
    everything once; C{on_stopped(reason)} when it stops (triggers removed,
    connection lost).  The connection is retried for ever with
    C{reconnect_delays}.
    """

    def __init__(self, dsn: str, reactor: Any, *, clock: IReactorTime | None = None,
                 connection_factory: Callable[[], Any] | None = None, query_timeout: float = 10.0,
                 reconnect_delays: Callable[[], Iterator[float]] | None = None,
                 feed: FeedSpec = COMPUTE_FEED) -> None:
        self.dsn = dsn
        self.feed = feed
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._connection_factory = connection_factory
        self._query_timeout = query_timeout
        self._reconnect_delays = reconnect_delays or (lambda: retrying.simpleBackoffIterator(
            initialDelay=0.25, maxDelay=5.0, factor=2.0, maxRetries=0, now=True))
        self._on_change: Callable[[Change], object] = _ignore
        self._on_listening: Callable[[], object] = _ignore
        self._on_stopped: Callable[[str], object] = _ignore
        self._connection: Any = None
        # Whether the connection is up: a query on one still connecting
        # would wait for ever (and txpostgres cannot cancel it).
        self._connected = False
        self._listening = False
        #: "not connected", "listening", "not installed" or "down": for /readyz and the start-up log.
        self.state = "not connected"
        self._stopped = False
        self._checking: Deferred[bool] | None = None
        self._connecting: Deferred[Any] | None = None
        self.notifications = 0

    @property
    def listening(self) -> bool:
        return self._listening

    def bind(self, on_change: Callable[[Change], object], on_listening: Callable[[], object],
             on_stopped: Callable[[str], object]) -> None:
        """Name the handlers (before L{start})."""
        self._on_change, self._on_listening, self._on_stopped = on_change, on_listening, on_stopped

    def start(self) -> Deferred[None]:
        """Connect (retrying until it works), then LISTEN if the triggers are present."""
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        connection = self._connection = self._new_connection()
        call = retrying.RetryingCall(self._connect_once, connection)
        call.reactor = self._clock
        self._connecting = call.start(self._reconnect_delays())
        try:
            await self._connecting
        finally:
            self._connecting = None
        if self._stopped:
            return
        self._connected = True
        connection.detector.armed = True
        connection.addNotifyObserver(self._notified)
        await self.check()

    def _connect_once(self, connection: Any) -> Deferred[Any]:
        if self._stopped:
            raise CancelledError()
        return connection.connect(self.dsn).addErrback(self._connect_failed)

    def _connect_failed(self, reason: Failure) -> Failure:
        if self.state != "down":
            _log.warn("change feed: cannot connect to the compute database ({error}); retrying",
                      error=first_line(reason.value))  # type: ignore[arg-type]  # a Failure's value is set
        self.state = "down"
        return reason

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stopped = True
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self._connection = self._connection, None
        self._listening = False
        if connection is not None:
            connection.detector.stop()
            try:
                connection.close()
            except Exception:
                pass

    def check(self) -> Deferred[bool]:
        """
        Are the triggers there?  Start (or stop) listening accordingly; fires
        with whether the feed is listening.  Never fails: a failed check
        leaves the state as it was, and the lost connection is the
        detector's to repair.
        """
        if self._checking is not None:
            return _chained(self._checking)
        checking = self._checking = ensureDeferred(self._check())
        checking.addBoth(self._checked)
        return _chained(checking)

    def _checked(self, result: object) -> object:
        self._checking = None
        return result

    async def _check(self) -> bool:
        connection = self._connection
        if connection is None or self._stopped or not self._connected or connection.detector.connectionIsDead:
            return False
        try:
            feed = self.feed
            rows = await self._bounded(connection.runQuery(feed.presence_query, feed.presence_params))
            present = rows[0][0] == feed.triggers
            if present and not self._listening:
                # LISTEN before the owner's full read: a change committed
                # after that read started is then always announced.
                await self._bounded(connection.runOperation(f"LISTEN {feed.channel}"))
                self._listening, self.state = True, "listening"
                _log.info("change feed: listening on {channel} (triggers on {tables})", channel=feed.channel,
                          tables=feed.tables)
                self._notify(self._on_listening)
            elif not present:
                if rows[0][0]:
                    _log.warn("change feed: only {count} of the {total} triggers are present; not using the feed "
                              "(run install-change-feed again)", count=rows[0][0], total=feed.triggers)
                if self._listening:
                    await self._bounded(connection.runOperation(f"UNLISTEN {feed.channel}"))
                    self._listening = False
                    _log.warn("change feed: the triggers were removed; polling instead")
                    self._notify(self._on_stopped, "triggers removed")
                self.state = "not installed"
        except Exception as error:
            if not self._stopped:
                _log.warn("change feed: checking the triggers failed: {error}", error=first_line(error))
        return self._listening

    def _bounded(self, operation: Deferred[Any]) -> Deferred[Any]:
        """
        C{operation}'s result, or a TimeoutError after the query timeout.
        Not Deferred.addTimeout: cancelling a txpostgres query raises in
        the reactor and leaves the Deferred unfired until the server
        answers; the query is left to finish (or to fail, with the
        connection) on its own.
        """
        bounded: Deferred[Any] = Deferred()
        timer = self._clock.callLater(
            self._query_timeout, lambda: bounded.called or bounded.errback(  # type: ignore[func-returns-value]
                TimeoutError(f"no answer within {self._query_timeout} s")))

        def settled(result: object) -> None:
            if timer.active():
                timer.cancel()
            if not bounded.called:
                bounded.callback(result)  # a Failure errbacks

        operation.addBoth(settled)
        return bounded

    def _new_connection(self) -> Any:
        if self._connection_factory is not None:
            return self._connection_factory()
        detector = _ListenerDetector(reconnectionIterator=self._reconnect_delays, reactor=self._clock)
        detector.on_lost = self._lost
        detector.addRecoveryHandler(self._recovered)
        return _Connection(self._reactor, detector=detector)

    def _lost(self) -> None:
        if self._stopped:
            return
        self._connected = False
        was = self._listening
        self._listening, self.state = False, "down"
        if was:
            self._notify(self._on_stopped, "connection lost")

    def _recovered(self) -> Deferred[bool]:
        # A new server connection has no LISTEN: check (and LISTEN) again,
        # which tells the owner to read everything.
        _log.info("change feed: connection re-established")
        self._connected = True
        return self.check()

    def _notified(self, notify: Any) -> None:
        if notify.channel != self.feed.channel:
            return
        self.notifications += 1
        self._notify(self._on_change, self.feed.parse(notify.payload))

    def _notify(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            _log.failure("change feed: handler failed")


class _ListenerDetector(_Detector):
    """The pool's detector, which also tells the listener the moment its connection is found dead."""

    on_lost: Callable[[], object] = staticmethod(lambda: None)

    def startReconnecting(self, f: Failure) -> None:
        self.on_lost()
        super().startReconnecting(f)


def _chained(deferred: Deferred[bool]) -> Deferred[bool]:
    """A new Deferred with C{deferred}'s result, leaving C{deferred}'s own chain alone."""
    result: Deferred[bool] = Deferred()

    def forward(value: object) -> object:
        if isinstance(value, Failure):
            result.callback(False)
        else:
            result.callback(bool(value))
        return value

    deferred.addBoth(forward)
    return result


def _ignore(*args: object) -> None:
    pass
