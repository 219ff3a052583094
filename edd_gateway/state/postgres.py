"""
PostgreSQL through txpostgres: the compute service's containers (read-only),
the gateway's own tables (C{static_routes} with the routes file's rows, SSH
host-key pins), and pools that survive server restarts.

The stock txpostgres pool never recovers from a connection the server
killed; here every pooled connection carries its own
L{DeadConnectionDetector}, which reconnects it with backoff and then tells
this module's reconnect observers, so the owner (L{StateService}) resyncs in
full after every recovery.  L{PostgresDatabase.connect} opens fresh pools and
creates the gateway's tables; when it fails nothing is left running and the
caller retries it.  Every query has a timeout: a silent server must not hold
the refresh queue forever.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList, FirstError, ensureDeferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from txpostgres.psycopg2_impl import psycopg2

from edd_gateway.routes.model import Route
from edd_gateway.state._queries import BEGIN_SNAPSHOT, all_container_statements, build_containers, build_refreshed
from edd_gateway.state._queries import refresh_statement
from edd_gateway.state.schema import GATEWAY_SCHEMA
from edd_gateway.state.model import Container, HostKeyPin
from edd_gateway.state.routes_sync import (
    SELECT_STATIC_ROUTES,
    file_route_rows,
    routes_from_rows,
    static_route_rows,
    sync_file_routes_interaction,
)

__all__ = ["DatabaseUnavailable", "PostgresDatabase"]

_log = Logger()


class DatabaseUnavailable(Exception):
    """The database is not connected (never was, or was closed)."""


class _Detector(reconnection.DeadConnectionDetector):  # type: ignore[misc]  # txpostgres has no types
    """
    A detector armed only once its pool is up (a failed first connect is
    the caller's to retry, not the detector's) and whose reconnection loop
    stops when its pool closes.
    """

    armed = False
    stopped = False
    _reconnecting: Deferred[Any] | None = None

    def checkForDeadConnection(self, f: Failure) -> Failure:
        if not self.armed or self.stopped:
            return f
        return super().checkForDeadConnection(f)

    def startReconnecting(self, f: Failure) -> None:
        if self.stopped:
            return
        message = f.getErrorMessage().strip().splitlines()
        _log.warn("postgres: connection lost ({error}); reconnecting", error=message[0] if message else f.type)
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        reconnecting = self._reconnecting = call.start(self.reconnectionIterator())
        reconnecting.addCallback(lambda _: self.connectionRecovered())
        reconnecting.addErrback(self._gave_up)

    def _gave_up(self, reason: Failure) -> None:
        if not self.stopped and not reason.check(CancelledError):
            _log.failure("postgres: reconnecting failed", reason)

    def stop(self) -> None:
        self.stopped = True
        if self._reconnecting is not None and not self._reconnecting.called:
            try:
                self._reconnecting.cancel()
            except psycopg2.Error:
                # psycopg2 cannot cancel a connection attempt under way; the
                # attempt's result is dropped since the detector is stopped.
                pass


class _Connection(txpostgres.Connection):  # type: ignore[misc]  # txpostgres has no types
    """A connection that reports a server gone while idle as a lost connection, not a traceback."""

    def doRead(self) -> Exception | None:
        try:
            super().doRead()
        except psycopg2.Error as error:
            # Returned, as transports do, the reason makes the reactor call
            # connectionLost (and so the detector) without logging it as an
            # unhandled error.
            return error
        except ValueError as error:
            # The socket is gone (file descriptor -1) before psycopg2 noticed.
            return psycopg2.OperationalError(f"connection broken: {error}")
        return None

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        txpostgres's transaction (begin, the interaction, commit or
        rollback), but a rollback that fails because the server went away
        mid-transaction is the interaction's own failure, which the caller
        reports in one line: txpostgres would also log it as an unhandled
        traceback (and raise RollbackFailed).  Still run through C{_doit},
        so the dead-connection detector sees it.
        """
        cursor = self.cursor()

        def commit(result: Any) -> Deferred[Any]:
            return cursor.execute("commit").addCallback(lambda _: result)

        def rollback(failure: Failure) -> Deferred[Any]:
            return maybeDeferred(cursor.execute, "rollback").addBoth(lambda _: failure)

        begun = cursor.execute("begin")
        begun.addCallback(interaction, *args, **kwargs)
        begun.addCallback(commit)
        return begun.addErrback(rollback)


class _RecoveringPool(txpostgres.ConnectionPool):  # type: ignore[misc]  # txpostgres has no types
    """A txpostgres pool whose connections each reconnect on their own."""

    def __init__(self, dsn: str, reactor: Any, size: int, make_detector: Callable[[], _Detector]) -> None:
        self.reactor = reactor
        self._make_detector = make_detector
        super().__init__(None, dsn, min=size)
        # self.connections only holds the idle ones.
        self.every_connection = tuple(self.connections)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> txpostgres.Connection:
        return _Connection(reactor, cooperator, detector=self._make_detector())

    @property
    def alive(self) -> bool:
        return not any(connection.detector.connectionIsDead for connection in self.every_connection)

    def arm(self) -> None:
        for connection in self.every_connection:
            connection.detector.armed = True

    # The stock pool takes any idle connection, a dead one (still
    # reconnecting) included, which fails at once with ConnectionDead; these
    # three overrides of its private helpers prefer a live one.
    def _take(self) -> txpostgres.Connection:
        connection = next((c for c in self.connections if not c.detector.connectionIsDead), None)
        if connection is None:
            connection = next(iter(self.connections))
        self.connections.remove(connection)
        return connection

    def _runQuery(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        connection = self._take()
        return connection.runQuery(*args, **kwargs).addBoth(self._putBackAndPassthrough, connection)

    def _runOperation(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        connection = self._take()
        return connection.runOperation(*args, **kwargs).addBoth(self._putBackAndPassthrough, connection)

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        connection = self._take()
        return connection.runInteraction(interaction, *args, **kwargs).addBoth(
            self._putBackAndPassthrough, connection)

    def shut(self) -> None:
        """Stop reconnecting and close every connection, whatever its state."""
        for connection in self.every_connection:
            connection.detector.stop()
            try:
                connection.close()
            except Exception:
                # Never connected (no psycopg2 connection yet) or already gone.
                pass


#: The advisory lock replicas take while creating the gateway's tables (any
#: constant unlikely to collide; "edd-gw" in ASCII).
SCHEMA_LOCK = 0x6564642D6777


def _create_schema(cursor: Any) -> Deferred[None]:
    """
    Create the gateway's tables in one transaction under an advisory lock:
    replicas starting together on an empty database would otherwise race
    in C{CREATE TABLE IF NOT EXISTS}, and PostgreSQL refuses the loser
    (a unique violation on C{pg_type}).
    """

    async def create() -> None:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for statement in GATEWAY_SCHEMA:
            await cursor.execute(statement)

    return ensureDeferred(create())


class PostgresDatabase:
    """
    The gateway's view of PostgreSQL: C{dsn} holds the gateway's own tables,
    C{compute_dsn} (default: the same database) the compute service's.

    @param reconnect_delays: seconds between a lost connection's reconnect
        attempts (default: at once, then doubling up to C{max_reconnect_delay}).
    """

    def __init__(self, dsn: str, reactor: Any, *, compute_dsn: str | None = None, clock: IReactorTime | None = None,
                 pool_size: int = 2, connect_timeout: float = 10.0, query_timeout: float = 10.0,
                 max_reconnect_delay: float = 5.0,
                 reconnect_delays: Callable[[], Iterator[float]] | None = None) -> None:
        self.dsn = dsn
        self.compute_dsn = compute_dsn if compute_dsn is not None else dsn
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._reconnect_delays = reconnect_delays or (lambda: retrying.simpleBackoffIterator(
            initialDelay=0.25, maxDelay=max_reconnect_delay, factor=2.0, maxRetries=0, now=True))
        self._observers: list[Callable[[], object]] = []
        self._gateway: _RecoveringPool | None = None
        self._compute: _RecoveringPool | None = None

    @property
    def connected(self) -> bool:
        """Connected at least once since the last L{close}."""
        return self._gateway is not None

    @property
    def alive(self) -> bool:
        """Connected, and no pooled connection is known to be dead."""
        pools = [self._gateway, self._compute]
        return self.connected and all(pool.alive for pool in pools if pool is not None)

    def add_reconnect_observer(self, observer: Callable[[], object]) -> None:
        """Call C{observer()} whenever a lost connection has been re-established."""
        self._observers.append(observer)

    def connect(self) -> Deferred[None]:
        """Open the pools and create the gateway's tables; fails, leaving nothing open, when it cannot."""
        return ensureDeferred(self._connect())

    async def _connect(self) -> None:
        self.close()
        gateway = self._pool(self.dsn)
        compute = self._pool(self.compute_dsn) if self.compute_dsn != self.dsn else gateway
        pools = [gateway] if compute is gateway else [gateway, compute]
        try:
            started = DeferredList([pool.start() for pool in pools], fireOnOneErrback=True, consumeErrors=True)
            await started.addTimeout(self._connect_timeout, self._clock).addErrback(_first_error)
            await self._timed(gateway.runInteraction(_create_schema))
        except BaseException:
            for pool in pools:
                pool.shut()
            raise
        for pool in pools:
            pool.arm()
        self._gateway, self._compute = gateway, compute

    def close(self) -> None:
        """Close every connection; reconnection stops."""
        for pool in {id(pool): pool for pool in (self._gateway, self._compute) if pool is not None}.values():
            pool.shut()
        self._gateway = self._compute = None

    def load_all(self) -> Deferred[dict[str, Container]]:
        """Every container, with its ingress rules and its owner's SSH keys."""
        return self._read_containers(all_container_statements())

    def load_containers(self, ids: Collection[str]) -> Deferred[dict[str, Container]]:
        """The containers C{ids} that exist (a deleted one is simply absent)."""
        pool = self._compute
        if pool is None:
            return fail(DatabaseUnavailable("not connected"))
        query, params = refresh_statement(sorted(ids))
        return self._timed(pool.runQuery(query, params)).addCallback(build_refreshed)

    def sync_file_routes(self, routes: Sequence[Route]) -> Deferred[None]:
        """Make C{static_routes} hold the routes file's C{routes} (see L{routes_sync})."""
        pool = self._gateway
        if pool is None:
            return fail(DatabaseUnavailable("not connected"))
        return self._timed(pool.runInteraction(sync_file_routes_interaction, file_route_rows(routes)))

    def load_other_routes(self) -> Deferred[list[Route]]:
        """Routes for the C{static_routes} rows the routes file did not put there."""
        pool = self._gateway
        if pool is None:
            return fail(DatabaseUnavailable("not connected"))

        def convert(records: list[Sequence[Any]]) -> list[Route]:
            routes, problems = routes_from_rows(static_route_rows(records))
            for problem in problems:
                _log.warn("postgres: cannot route {problem}; skipped", problem=problem)
            return routes

        return self._timed(pool.runQuery(SELECT_STATIC_ROUTES)).addCallback(convert)

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        """The pinned SSH host key of C{container_id}, if any."""
        def pin(rows: list[Sequence[Any]]) -> HostKeyPin | None:
            return HostKeyPin(container_id, rows[0][0], rows[0][1]) if rows else None

        query = "SELECT host_key, container_created FROM gateway_ssh_host_keys WHERE container_id = %s"
        return self._gateway_query(query, (container_id,)).addCallback(pin)

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        """Pin C{host_key} for C{container_id}, replacing any earlier pin."""
        query = (
            "INSERT INTO gateway_ssh_host_keys (container_id, host_key, container_created) VALUES (%s, %s, %s)"
            " ON CONFLICT (container_id) DO UPDATE SET host_key = EXCLUDED.host_key,"
            " container_created = EXCLUDED.container_created, pinned_at = now()"
        )
        return self._gateway_operation(query, (container_id, host_key, container_created))

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        """Forget the pin of C{container_id} (a recreated container gets a new key); whether there was one."""
        query = "DELETE FROM gateway_ssh_host_keys WHERE container_id = %s RETURNING container_id"
        return self._gateway_query(query, (container_id,)).addCallback(bool)

    def prune_pins(self, keep: Collection[str]) -> Deferred[int]:
        """Forget the pins of every container not in C{keep} (deleted ones); how many went."""
        query = "DELETE FROM gateway_ssh_host_keys WHERE NOT (container_id = ANY(%s)) RETURNING container_id"
        return self._gateway_query(query, (sorted(keep),)).addCallback(len)

    def gateway_query(self, query: str, params: tuple[Any, ...] = ()) -> Deferred[Any]:
        """Rows of a query on the gateway's own tables (custom domains, ACME), bounded by the query timeout."""
        return self._gateway_query(query, params)

    def gateway_operation(self, query: str, params: tuple[Any, ...] = ()) -> Deferred[None]:
        """A statement on the gateway's own tables, bounded by the query timeout."""
        return self._gateway_operation(query, params)

    def _pool(self, dsn: str) -> _RecoveringPool:
        return _RecoveringPool(dsn, self._reactor, self._pool_size, self._detector)

    def _detector(self) -> _Detector:
        detector = _Detector(reconnectionIterator=self._reconnect_delays, reactor=self._clock)
        detector.addRecoveryHandler(self._recovered)
        return detector

    def _recovered(self) -> None:
        _log.info("postgres: connection re-established")
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                _log.failure("postgres: reconnect observer failed")

    def _read_containers(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> Deferred[dict[str, Container]]:
        pool = self._compute
        if pool is None:
            return fail(DatabaseUnavailable("not connected"))
        return self._timed(pool.runInteraction(_read_snapshot, statements))

    def _gateway_query(self, query: str, params: tuple[Any, ...]) -> Deferred[Any]:
        if self._gateway is None:
            return fail(DatabaseUnavailable("not connected"))
        return self._timed(self._gateway.runQuery(query, params))

    def _gateway_operation(self, query: str, params: tuple[Any, ...]) -> Deferred[None]:
        if self._gateway is None:
            return fail(DatabaseUnavailable("not connected"))
        return self._timed(self._gateway.runOperation(query, params))

    def _timed(self, operation: Deferred[Any]) -> Deferred[Any]:
        return operation.addTimeout(self._query_timeout, self._clock)


def _read_snapshot(cursor: Any, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> Deferred[dict[str, Container]]:
    async def read() -> dict[str, Container]:
        await cursor.execute(BEGIN_SNAPSHOT)
        results = []
        for query, params in statements:
            await cursor.execute(query, params or None)
            results.append(cursor.fetchall())
        return build_containers(*results)

    return ensureDeferred(read())


def _first_error(reason: Failure) -> Failure:
    """DeferredLists (ours, and each pool's) wrap the failure that stopped them: raise the real one."""
    while reason.check(FirstError):
        reason = cast(FirstError, reason.value).subFailure
    return reason
