"""
The pool that keeps backend connections alive between requests.

A bounded LIFO stack of idle connections per backend (the most recently
used is the most likely still open), those idle too long closed, and a bound
on how many connections one backend gets; requests over the bound wait for
a free one.  Each idle connection is looked at before reuse (L{still_open}).
"""

from __future__ import annotations

import select
from collections import deque
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Protocol, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from edd_gateway.net.connect import OneProtocolFactory, backend_endpoint
from edd_gateway.http.errors import GatewayError
from edd_gateway.http.headers import RequestInfo
from edd_gateway.http.retry import look_before_reuse
from edd_gateway.http.upstream import BackendKey, UpstreamProtocol, connect_error
from edd_gateway.routes.model import Target

#: Seconds idle after which a pooled connection is looked at before reuse
#: (L{still_open}): far below any backend's keep-alive timeout (Node.js 5 s,
#: nginx 75 s), far above the gap between requests of a busy connection.
RECHECK_AFTER = 0.01


@dataclass
class PooledBackend:
    """The pool's books for one backend: idle connections (LIFO), all of them, and requests waiting for one."""

    idle: list[UpstreamProtocol] = field(default_factory=list)
    count: int = 0
    waiters: deque[defer.Deferred[UpstreamProtocol]] = field(default_factory=deque)


class UpstreamPool:
    """
    Keep-alive connections to backends, bounded per backend.

    @ivar max_idle: idle connections kept per backend.
    @ivar max_per_backend: connections (busy and idle) per backend.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        max_idle: int = 64,
        max_per_backend: int = 512,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_streams_per_client: int = 0,
    ) -> None:
        self.reactor = reactor
        self.max_streams_per_client = max_streams_per_client
        self._streams: dict[tuple[str, str, int], int] = {}
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.max_idle = max_idle
        self.max_per_backend = max_per_backend
        self.idle_timeout = idle_timeout
        self._backends: dict[BackendKey, PooledBackend] = {}
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def start(self) -> None:
        self._sweeper.start(max(self.idle_timeout / 4, 0.5), now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for backend in self._backends.values():
            for connection in list(backend.idle):
                connection.transport.loseConnection()

    def checkout(self, target: Target, request: ReuseLook | None = None) -> UpstreamProtocol | None:
        """
        An idle connection to C{target} that is still open, or L{None}: the
        fast path.  Backends close idle connections when they like (Node.js
        after 5 s, Go's IdleTimeout): each is looked at before it is handed
        out, and one the backend closed or spoke on is dropped, unless
        C{request} says no look is needed: a request it would send again on
        a new connection if this one failed unanswered
        (L{edd_gateway.http.retry.look_before_reuse}), as nginx's
        C{proxy_next_upstream} does.  The look is a system call per request.
        """
        backend = self._backends.get((target.host, target.port))
        if backend is None:
            return None
        idle = backend.idle
        while idle:
            connection = idle.pop()
            # Released this instant (keep-alive under load): no backend's
            # idle timer is that short, and the look costs a system call.
            if (self.clock.seconds() - connection.idle_since < RECHECK_AFTER
                    or request is not None and not look_before_reuse(request.info, request.retried,
                                                                     request.request_done)
                    or still_open(connection)):
                return connection
            connection.listener = None
            if connection.transport is not None:
                connection.transport.abortConnection()
        return None

    # Request bodies that are still arriving (see Exchange._take_connection).

    def take_stream(self, client: str, target: Target) -> bool:
        """
        Whether C{client} may hold one more connection to C{target} while its
        request body arrives (C{max_streams_per_client}); taken if so.
        """
        if not self.max_streams_per_client:
            return True
        key = (client, target.host, target.port)
        held = self._streams.get(key, 0)
        if held >= self.max_streams_per_client:
            return False
        self._streams[key] = held + 1
        return True

    def release_stream(self, client: str, target: Target) -> None:
        if not self.max_streams_per_client:
            return
        key = (client, target.host, target.port)
        held = self._streams.get(key, 0) - 1
        if held > 0:
            self._streams[key] = held
        else:
            self._streams.pop(key, None)

    def streams_held(self, client: str, target: Target) -> int:
        return self._streams.get((client, target.host, target.port), 0)

    def connect(self, target: Target, timeout: float) -> defer.Deferred[UpstreamProtocol]:
        """A new connection to C{target} (or the next free one, when at the bound)."""
        key = (target.host, target.port)
        backend = self._backends.setdefault(key, PooledBackend())
        if backend.count >= self.max_per_backend:
            if backend.idle:
                return defer.succeed(backend.idle.pop())
            waiter: defer.Deferred[UpstreamProtocol] = defer.Deferred()
            backend.waiters.append(waiter)
            waiter.addTimeout(timeout, self.clock)
            return waiter.addErrback(_busy, target)
        backend.count += 1
        attempt = self._open(key, target, timeout)
        return attempt.addErrback(self._connect_failed, key, target, timeout)

    def _open(self, key: BackendKey, target: Target, timeout: float) -> defer.Deferred[UpstreamProtocol]:
        protocol = UpstreamProtocol(self, key)
        if _is_ipv4(target.host):
            # connectTCP directly: an endpoint would wrap every backend
            # connection in one more protocol layer for the whole life of a
            # pooled connection, a call per read on the hot path.
            factory = _Connecting(protocol)
            self.reactor.connectTCP(target.host, target.port, factory, timeout=timeout)
            return factory.deferred
        endpoint = backend_endpoint(self.reactor, target, timeout)
        # The factory hands out C{protocol}, so the connected protocol is an UpstreamProtocol.
        return cast("defer.Deferred[UpstreamProtocol]", endpoint.connect(OneProtocolFactory(protocol)))

    def release(self, connection: UpstreamProtocol) -> None:
        """Give back a connection whose exchange ended cleanly."""
        backend = self._backends.get(connection.key)
        if backend is None or not connection.connected or connection.gone:
            return
        while backend.waiters:
            waiter = backend.waiters.popleft()
            if not waiter.called:
                waiter.callback(connection)
                return
        if len(backend.idle) >= self.max_idle:
            connection.transport.loseConnection()
            return
        connection.idle_since = self.clock.seconds()
        backend.idle.append(connection)

    def discard(self, connection: UpstreamProtocol) -> None:
        """Close a connection that cannot be reused."""
        connection.listener = None
        if connection.transport is not None:
            connection.transport.abortConnection()

    def lost(self, connection: UpstreamProtocol) -> None:
        """A connection closed, or left for the relay: off the books, once."""
        if connection.gone:
            return
        connection.gone = True
        backend = self._backends.get(connection.key)
        if backend is None:
            return
        if connection in backend.idle:
            backend.idle.remove(connection)
        backend.count -= 1
        self._serve_waiter(connection.key, backend)

    def idle_count(self, target: Target) -> int:
        backend = self._backends.get((target.host, target.port))
        return len(backend.idle) if backend else 0

    def _serve_waiter(self, key: BackendKey, backend: PooledBackend) -> None:
        while backend.waiters and backend.count < self.max_per_backend:
            waiter = backend.waiters.popleft()
            if waiter.called:
                continue
            backend.count += 1
            target = Target(key[0], key[1])
            attempt = self._open(key, target, self.connect_timeout)
            attempt.addCallbacks(
                self._deliver, self._connect_failed,
                callbackArgs=(waiter,), errbackArgs=(key, target, self.connect_timeout),
            )
            attempt.addErrback(self._fail_waiter, waiter)

    def _deliver(self, connection: UpstreamProtocol, waiter: defer.Deferred[UpstreamProtocol]) -> None:
        if waiter.called:
            # The waiter gave up while the connection opened: keep it for
            # the next request rather than leak its slot.
            connection.listener = None
            self.release(connection)
        else:
            waiter.callback(connection)

    @staticmethod
    def _fail_waiter(failure: Failure, waiter: defer.Deferred[UpstreamProtocol]) -> None:
        if not waiter.called:
            waiter.errback(failure)

    def _connect_failed(
        self, failure: Failure, key: BackendKey, target: Target, timeout: float
    ) -> Failure:
        backend = self._backends.get(key)
        if backend is not None:
            backend.count -= 1
        return Failure(connect_error(failure, target, timeout))

    def _sweep(self) -> None:
        deadline = self.clock.seconds() - self.idle_timeout
        for backend in self._backends.values():
            stale = [c for c in backend.idle if c.idle_since <= deadline]
            for connection in stale:
                backend.idle.remove(connection)
                connection.transport.loseConnection()


class _Connecting(ClientFactory):
    """Connects one prepared protocol; fires when it is connected or failed."""

    noisy = False

    def __init__(self, protocol: UpstreamProtocol) -> None:
        self.protocol_instance = protocol
        self.deferred: defer.Deferred[UpstreamProtocol] = defer.Deferred()
        protocol.on_connected = self.deferred

    def buildProtocol(self, addr: object) -> UpstreamProtocol:
        return self.protocol_instance

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.protocol_instance.on_connected = None
        self.deferred.errback(reason)


class ReuseLook(Protocol):
    """What the pool reads of the request an idle connection would go to (an exchange), for L{look_before_reuse}."""

    info: RequestInfo
    retried: bool
    request_done: bool


def still_open(connection: UpstreamProtocol) -> bool:
    """
    Whether an idle backend connection can carry a request: connected, and
    nothing to read on its socket.  An idle backend has nothing to say, so a
    readable socket means the close (or bytes no request asked for) is
    already there, unseen by the reactor until its next turn.  One poll(2)
    with no wait per reuse; nginx and HAProxy learn the same from their
    event loop, which Twisted only tells at the next turn.  (A recv with
    MSG_PEEK would do it too, but in Python it raises BlockingIOError in the
    common case: measured, several times the cost of this, per request.)
    """
    transport = connection.transport
    if not connection.connected or connection.gone or transport is None or transport.disconnecting:
        return False
    sock = getattr(transport, "socket", None)
    if sock is None:
        return True  # not a plain TCP transport: nothing to look at
    fd = sock.fileno()
    _POLLER.register(fd, _READABLE)
    try:
        return not _POLLER.poll(0)
    finally:
        _POLLER.unregister(fd)


#: Read events that mean an idle connection is done (POLLRDHUP: Linux's
#: "the peer closed its side", where it exists).
_READABLE = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
_POLLER = select.poll()


def _is_ipv4(host: str) -> bool:
    try:
        return ip_address(host).version == 4
    except ValueError:
        return False


def _busy(failure: Failure, target: Target) -> Failure:
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return Failure(GatewayError(503, f"The backend {target} has no free connection."))
    return failure


class PoolService(Service):
    """Starts the pool's idle-connection reaper with the gateway and closes its connections at the end."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        self.pool.stop()
        return super().stopService()
