"""
The pool of h2c (HTTP/2 cleartext) connections to backends, for routes of
C{protocol: grpc} and C{protocol: h2c}: L{H2BackendPool.open_stream} puts a
proxied request on a stream of a connection with room for it, opens another
connection when none has, up to a bound per backend, and otherwise waits.

Apart from L{edd_gateway.http.pool} because the pooling is of another
kind: an HTTP/1.1 connection carries one exchange at a time and is checked
out and given back whole, while an h2c connection carries as many streams at
once as the backend's C{SETTINGS_MAX_CONCURRENT_STREAMS} allows, so this pool
counts stream slots, not idle connections.  Connects, their timeouts and the
wording of a failed connect are shared with it (L{connect_error}).  The
connections and streams themselves are L{edd_gateway.h2.backend_connection}'s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from h2.exceptions import ProtocolError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from edd_gateway.h2.backend_connection import (
    STREAM_WINDOW, BackendStream, BackendStreamListener, H2BackendProtocol, Headers, checked)
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.upstream import connect_error
from edd_gateway.net.connect import OneProtocolFactory, backend_endpoint
from edd_gateway.routes.model import Target

__all__ = ["BackendStream", "BackendStreamListener", "H2BackendPool", "H2BackendProtocol", "H2PoolService", "Headers"]

BackendKey = tuple[str, int]


@dataclass
class _Backend:
    #: Connected, taking new streams (a connection the backend sent GOAWAY on has left).
    connections: list[H2BackendProtocol] = field(default_factory=list)
    opening: int = 0
    waiters: deque[defer.Deferred[H2BackendProtocol]] = field(default_factory=deque)

    def with_room(self) -> H2BackendProtocol | None:
        # The oldest first: streams gather on few connections and the others can idle out.
        return next((connection for connection in self.connections if connection.has_room()), None)


class H2BackendPool:
    """
    h2c connections to backends, shared by the streams of every client.

    @ivar max_connections_per_backend: connections (opening or open) per backend.
    @ivar idle_timeout: seconds a connection without streams is kept.
    @ivar connect_timeout: for connections opened for a request that waited.
    @ivar stream_window: the receive window of each response stream (L{STREAM_WINDOW}).
    """

    def __init__(self, reactor: Any, clock: IReactorTime, *, max_connections_per_backend: int = 4,
                 idle_timeout: float = 60.0, connect_timeout: float = 5.0, stream_window: int = STREAM_WINDOW,
                 ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.max_connections_per_backend = max_connections_per_backend
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.stream_window = stream_window
        self._backends: dict[BackendKey, _Backend] = {}
        self._stopping = False
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def start(self) -> None:
        self._stopping = False
        self._sweeper.start(max(self.idle_timeout / 4, 0.5), now=False)

    def stop(self) -> None:
        """Close every connection (GOAWAY first); requests still waiting for a slot get their 503."""
        self._stopping = True
        if self._sweeper.running:
            self._sweeper.stop()
        for backend in self._backends.values():
            while backend.waiters:
                backend.waiters.popleft().cancel()
            for connection in list(backend.connections):
                connection.close()

    def open_stream(self, target: Target, headers: Headers, listener: BackendStreamListener, timeout: float,
                    end_stream: bool = False) -> defer.Deferred[BackendStream]:
        """
        A stream to C{target} carrying C{headers} (the request's whole HTTP/2 header list, pseudo-headers
        included), reporting to C{listener}.  Fails with a L{GatewayError}: 400 for headers HTTP/2 cannot
        carry, 502 or 504 when the backend cannot be connected to, 503 when no slot came free within C{timeout}.
        """
        try:
            headers = checked(headers)
        except ProtocolError as problem:
            return defer.fail(GatewayError(400, f"The request's headers cannot be sent over HTTP/2 ({problem})."))

        def start(connection: H2BackendProtocol) -> BackendStream:
            return connection.open(headers, listener, end_stream)

        backend = self._backends.setdefault((target.host, target.port), _Backend())
        connection = backend.with_room()
        if connection is not None:
            return defer.succeed(start(connection))
        if len(backend.connections) + backend.opening < self.max_connections_per_backend:
            return self._connect(backend, target, timeout).addCallback(start)
        waiter: defer.Deferred[H2BackendProtocol] = defer.Deferred()
        backend.waiters.append(waiter)
        waiter.addTimeout(timeout, self.clock)
        return waiter.addCallbacks(start, _busy, errbackArgs=(target,))

    def connection_count(self, target: Target) -> int:
        """Connections to C{target} taking new streams (tests and metrics)."""
        backend = self._backends.get((target.host, target.port))
        return len(backend.connections) if backend else 0

    # What connections tell (backend_connection.ConnectionOwner)

    def serve(self, target: Target) -> None:
        """A slot may have come free on a connection to C{target}: the requests waiting get it, in order."""
        backend = self._backends.get((target.host, target.port))
        while backend is not None and backend.waiters and not self._stopping:
            if backend.waiters[0].called:
                backend.waiters.popleft()  # timed out
                continue
            connection = backend.with_room()
            if connection is not None:
                backend.waiters.popleft().callback(connection)
            elif len(backend.connections) + backend.opening < self.max_connections_per_backend:
                waiter = backend.waiters.popleft()
                self._connect(backend, target, self.connect_timeout).addCallbacks(
                    _deliver, _fail, callbackArgs=(waiter,), errbackArgs=(waiter,))
            else:
                return

    def retire(self, connection: H2BackendProtocol) -> None:
        """C{connection} takes no new stream (GOAWAY): it no longer counts against the bound."""
        backend = self._backends.get((connection.target.host, connection.target.port))
        if backend is not None and connection in backend.connections:
            backend.connections.remove(connection)
            self.serve(connection.target)

    def lost(self, connection: H2BackendProtocol) -> None:
        self.retire(connection)

    # Inside

    def _connect(self, backend: _Backend, target: Target, timeout: float) -> defer.Deferred[H2BackendProtocol]:
        backend.opening += 1
        protocol = H2BackendProtocol(self, target)

        def connected(_: object) -> H2BackendProtocol:
            backend.opening -= 1
            if protocol.h2 is not None:  # not closed by the backend in the same turn
                backend.connections.append(protocol)
            return protocol

        def failed(failure: Failure) -> Failure:
            backend.opening -= 1
            return Failure(connect_error(failure, target, timeout))

        attempt = backend_endpoint(self.reactor, target, timeout).connect(OneProtocolFactory(protocol))
        return cast("defer.Deferred[H2BackendProtocol]", attempt.addCallbacks(connected, failed))

    def _sweep(self) -> None:
        deadline = self.clock.seconds() - self.idle_timeout
        for backend in self._backends.values():
            for connection in [c for c in backend.connections if not c.streams and c.idle_since <= deadline]:
                connection.close()


def _deliver(connection: H2BackendProtocol, waiter: defer.Deferred[H2BackendProtocol]) -> None:
    # A waiter that gave up meanwhile leaves the new connection to the pool.
    if not waiter.called:
        waiter.callback(connection)


def _fail(failure: Failure, waiter: defer.Deferred[H2BackendProtocol]) -> None:
    if not waiter.called:
        waiter.errback(failure)


def _busy(failure: Failure, target: Target) -> Failure:
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return Failure(GatewayError(503, f"The backend {target} has no free HTTP/2 stream."))
    return failure


class H2PoolService(Service):
    """Starts the pool's idle-connection sweep with the gateway; GOAWAY and close to every backend at the end."""

    def __init__(self, pool: H2BackendPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        self.pool.stop()
        return super().stopService()
