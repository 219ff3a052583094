"""
A change feed from PostgreSQL itself: the compute service only writes rows,
so triggers on its tables announce every change with C{pg_notify}, and the
gateway LISTENs.

NOTIFY is delivered at commit, never before, so the re-read a notification
starts always sees the committed row; a rolled-back write announces nothing.
A notification is a hint like a NATS event: it names what to re-read (a
container, or a user whose SSH keys changed), never what the row now says.

 - L{install_statements} / L{remove_statements} (and L{install}, the
   operator's C{python -m edd_gateway install-change-feed DSN}): the trigger
   function and the triggers, idempotent, run once with the compute
   database owner's credentials (C{CREATE TRIGGER} and C{DROP TRIGGER} need
   the tables' owner; the gateway keeps read-only access);
 - L{parse_change}: a notification's payload, pure;
 - L{ChangeFeedListener}: one dedicated txpostgres connection that LISTENs
   while the triggers are present, re-checks them whenever asked (at every
   full resync), and after a lost connection reconnects, LISTENs again and
   reports it, so that its owner resyncs in full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import retrying
from txpostgres.psycopg2_impl import psycopg2

from edd_gateway.state.postgres import _Connection, _Detector

__all__ = [
    "CHANNEL", "Change", "ChangeFeedError", "ChangeFeedListener", "FEED_TABLES", "install", "install_statements",
    "parse_change", "remove_statements",
]

_log = Logger()

#: The channel the triggers notify and the gateway listens on.
CHANNEL = "edd_gateway_changes"
FUNCTION = "edd_gateway_notify_change"
TRIGGER = "edd_gateway_change_feed"
TRUNCATE_TRIGGER = "edd_gateway_change_feed_truncate"

#: Each table of the compute service the feed watches, and the column that
#: names what to re-read: a container id, or the user whose keys changed.
FEED_TABLES: dict[str, str] = {"containers": "id", "ingress_rules": "container_id", "ssh_keys": "user_id"}
_USER_TABLES = frozenset({"ssh_keys"})

# One function for the three tables: the trigger's argument names the key
# column, read through to_jsonb so that the same body compiles for each
# table.  One notification per distinct key (OLD's and NEW's differ only
# when an update moves a row), and PostgreSQL folds identical payloads of
# one transaction into one.  TRUNCATE has no rows: it asks for everything.
_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_key text;
    new_key text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_key := to_jsonb(OLD) ->> TG_ARGV[0];
        PERFORM pg_notify('{CHANNEL}', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'key', old_key)::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_key := to_jsonb(NEW) ->> TG_ARGV[0];
        IF old_key IS DISTINCT FROM new_key THEN
            PERFORM pg_notify('{CHANNEL}',
                              json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'key', new_key)::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""


def install_statements() -> list[str]:
    """The SQL that installs the feed (or reinstalls it unchanged), for one transaction."""
    statements = [_FUNCTION_SQL]
    for table, column in FEED_TABLES.items():
        statements += [
            f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {FUNCTION}('{column}')",
            f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}",
            f"CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()",
        ]
    return statements


def remove_statements() -> list[str]:
    """The SQL that takes the feed away (nothing to do when it is not there)."""
    statements = []
    for table in FEED_TABLES:
        statements += [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
                       f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}"]
    return statements + [f"DROP FUNCTION IF EXISTS {FUNCTION}()"]


#: How many of the row triggers are present and enabled, on the tables the
#: search path finds (the ones the gateway reads).  Catalogs are readable by
#: every role, so the gateway's read-only role can ask.
PRESENT_QUERY = (
    "SELECT count(*) FROM pg_trigger WHERE tgname = %s AND tgenabled <> 'D' AND tgrelid IN ("
    + ", ".join(f"to_regclass('{table}')" for table in FEED_TABLES) + ")"
)


class ChangeFeedError(Exception):
    """The feed cannot be installed or removed; the message is one line for the operator."""


def install(dsn: str, *, remove: bool = False, connect: Callable[[str], Any] | None = None) -> str:
    """
    Install (or with C{remove}, take away) the feed in the compute database
    at C{dsn}, in one transaction; what was done, as one line.

    @raise ChangeFeedError: the database refused (the message names why:
        most often that the role does not own the tables).
    """
    statements = remove_statements() if remove else install_statements()
    try:
        connection = (connect or psycopg2.connect)(dsn)
    except psycopg2.Error as error:
        raise ChangeFeedError(f"cannot connect to the compute database: {_first_line(error)}") from None
    try:
        with connection, connection.cursor() as cursor:
            if not remove:
                cursor.execute("SELECT " + ", ".join(f"to_regclass('{table}')" for table in FEED_TABLES))
                missing = [table for table, oid in zip(FEED_TABLES, cursor.fetchone()) if oid is None]
                if missing:
                    raise ChangeFeedError(f"the compute database has no table {', '.join(missing)}: "
                                          "is this the compute service's database?")
            for statement in statements:
                cursor.execute(statement)
    except psycopg2.Error as error:
        hint = (" (run it as the owner of the compute service's tables)"
                if getattr(error, "pgcode", None) == "42501" else "")
        raise ChangeFeedError(f"{_first_line(error)}{hint}") from None
    finally:
        connection.close()
    tables = ", ".join(FEED_TABLES)
    if remove:
        return f"change feed removed from {tables}"
    return f"change feed installed: triggers on {tables} notify channel {CHANNEL}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True, slots=True)
class Change:
    """
    What one notification asks to re-read.

    @ivar full_resync: nothing names a row (a TRUNCATE, or a payload this
        version cannot read): read everything.
    """

    table: str
    container_ids: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    full_resync: bool = False


def parse_change(payload: str) -> Change:
    """
    The change a notification on L{CHANNEL} announces.  Never raises: a
    payload it cannot read asks for a full resync, since a change was made.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        return Change("?", full_resync=True)
    if not isinstance(body, dict):
        return Change("?", full_resync=True)
    table, key = body.get("table"), body.get("key")
    if table not in FEED_TABLES or not isinstance(key, str) or not key:
        return Change(table if isinstance(table, str) else "?", full_resync=True)
    if table in _USER_TABLES:
        return Change(table, user_ids=(key,))
    return Change(table, container_ids=(key,))


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
                 reconnect_delays: Callable[[], Iterator[float]] | None = None) -> None:
        self.dsn = dsn
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
                      error=_first_line(reason.value))  # type: ignore[arg-type]  # a Failure's value is set
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
            rows = await self._bounded(connection.runQuery(PRESENT_QUERY, (TRIGGER,)))
            present = rows[0][0] == len(FEED_TABLES)
            if present and not self._listening:
                # LISTEN before the owner's full read: a change committed
                # after that read started is then always announced.
                await self._bounded(connection.runOperation(f"LISTEN {CHANNEL}"))
                self._listening, self.state = True, "listening"
                _log.info("change feed: listening on {channel} (triggers on {tables})", channel=CHANNEL,
                          tables=", ".join(FEED_TABLES))
                self._notify(self._on_listening)
            elif not present:
                if rows[0][0]:
                    _log.warn("change feed: only {count} of the {total} triggers are present; not using the feed "
                              "(run install-change-feed again)", count=rows[0][0], total=len(FEED_TABLES))
                if self._listening:
                    await self._bounded(connection.runOperation(f"UNLISTEN {CHANNEL}"))
                    self._listening = False
                    _log.warn("change feed: the triggers were removed; polling instead")
                    self._notify(self._on_stopped, "triggers removed")
                self.state = "not installed"
        except Exception as error:
            if not self._stopped:
                _log.warn("change feed: checking the triggers failed: {error}", error=_first_line(error))
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
        if notify.channel != CHANNEL:
            return
        self.notifications += 1
        self._notify(self._on_change, parse_change(notify.payload))

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
