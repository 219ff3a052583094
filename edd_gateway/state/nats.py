"""
The nats-py client that hears the compute service's events
(L{NatsEventFeed}), living inside Twisted's asyncio reactor: it consumes
the C{COMPUTE} JetStream stream through a durable consumer when there is
one (L{edd_gateway.state.jetstream}), plain core subscriptions otherwise,
and hands each message, parsed (L{edd_gateway.state.events}), to its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.state.events import SUBJECTS, ContainerEvent, EventRejected, parse_event
from edd_gateway.state.jetstream import DURABLE, STREAM, durable_consumer, settle

__all__ = ["NatsEventFeed", "registered"]

_log = Logger()


def _deferred(coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (nats-py) on the reactor's loop, as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


class NatsEventFeed:
    """
    A nats-py connection hearing the compute service's events: through the
    durable JetStream consumer C{durable} on the stream L{STREAM} when the
    server has that stream, through core subscriptions to L{SUBJECTS}
    otherwise (never both: each event would come twice).  The choice is made
    again at every (re)connection; L{mode} tells which is in use.

    The handlers given to L{bind}: C{on_event(event)} gets each event and
    returns a L{Deferred} that fires once a read covering the event has been
    applied, or fails if it could not be (or returns C{None}: nothing to wait
    for).  The Deferred is the feed's own (it consumes its result): give each
    call its own.  Through JetStream, a message is acked only when that
    Deferred fires; one whose Deferred fails, or has not fired after
    C{ack_wait} seconds, is redelivered, at most C{max_deliver} times in all
    (after that the full resyncs are the net).  Messages on subjects
    L{parse_event} rejects are terminated, so they are not redelivered.
    C{on_connected()} runs after the first connection and after every
    reconnection, once the subscriptions are in place; C{on_disconnected()}
    when the connection drops.  The first connection is retried for ever,
    every C{reconnect_wait} seconds; L{start} fires once it is up.  Needs
    Twisted's asyncio reactor.

    Why the consumer is a push one, and why each replica needs its own
    C{durable} name: L{edd_gateway.state.jetstream}.  C{ack_wait} and
    C{max_deliver} apply when the feed creates the consumer; an existing
    one keeps its configuration.
    """

    _request_timeout = 5.0
    _max_ack_pending = 1000

    def __init__(self, servers: str | list[str], *, name: str = "edd-gateway", durable: str = DURABLE,
                 reconnect_wait: float = 2.0, connect_timeout: float = 2.0, ack_wait: float = 30.0,
                 max_deliver: int = 5, client_factory: Callable[[], Any] | None = None) -> None:
        self.servers = servers
        self.durable = durable
        self._on_event: Callable[[ContainerEvent], object] = _ignore
        self._on_connected: Callable[[], object] = _ignore
        self._on_disconnected: Callable[[], object] = _ignore
        self._name = name
        self._reconnect_wait = reconnect_wait
        self._connect_timeout = connect_timeout
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._client_factory = client_factory
        self._client: Any = None
        self._starting: asyncio.Future[Any] | None = None
        self._last_error: str | None = None
        self._mode: str | None = None
        self._core: list[Any] = []
        self._push: Any = None
        self._choosing: asyncio.Lock | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._said: set[object] = set()
        self._failing: str | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.is_connected)

    @property
    def mode(self) -> str | None:
        """C{"jetstream"}, C{"core"}, or C{None} while not connected (for /readyz)."""
        return self._mode if self.connected else None

    def bind(self, on_event: Callable[[ContainerEvent], object], on_connected: Callable[[], object],
             on_disconnected: Callable[[], object]) -> None:
        """Name the handlers (before L{start})."""
        self._on_event, self._on_connected, self._on_disconnected = on_event, on_connected, on_disconnected

    def start(self) -> Deferred[None]:
        """Connect (retrying until it works) and subscribe."""
        self._starting = asyncio.ensure_future(self._start())
        return Deferred.fromFuture(self._starting).addErrback(_as_twisted_cancellation)

    def stop(self) -> Deferred[None]:
        """Stop connecting, or close the connection."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        return _deferred(self._close())

    def publish(self, subject: str, payload: bytes) -> Deferred[None]:
        if not self.connected:
            return fail(ConnectionError("not connected to NATS"))
        return _deferred(self._client.publish(subject, payload))

    async def _start(self) -> None:
        client = self._client = self._new_client()
        await client.connect(
            self.servers, name=self._name, allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait, connect_timeout=self._connect_timeout,
            error_cb=self._error, disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
        )
        await self._choose_mode()
        _log.info("nats: connected to {url}, events through {how}", url=_url(client), how=self._how())
        self._last_error = None
        self._notify(self._on_connected)

    async def _close(self) -> None:
        client, self._client = self._client, None
        self._mode, self._core, self._push = None, [], None
        tasks, self._background = self._background, set()
        for task in tasks:
            task.cancel()
        if client is not None and not client.is_closed:
            await client.close()

    def _new_client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        from nats.aio.client import Client

        return Client()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run C{coroutine} beside; held here (asyncio keeps only weak references) and cancelled by L{stop}."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _how(self) -> str:
        if self._mode == "jetstream":
            return f"JetStream (stream {STREAM}, durable consumer {self.durable})"
        return ", ".join(SUBJECTS)

    # Choosing between JetStream and core subscriptions.

    async def _choose_mode(self) -> None:
        """Subscribe the way the server allows now, after undoing the other way (one at a time)."""
        self._choosing = self._choosing or asyncio.Lock()
        async with self._choosing:
            client = self._client
            if client is None:
                raise ConnectionError("the feed is stopped")
            js = client.jetstream(timeout=self._request_timeout)
            config = await durable_consumer(client, js, self.durable, subscribed=self._push, ack_wait=self._ack_wait,
                                            max_deliver=self._max_deliver, max_ack_pending=self._max_ack_pending)
            if config is not None:
                await self._drop_core()
                if self._push is not None and self._push.subject != config.deliver_subject:
                    await self._drop_push()  # the consumer was made again, elsewhere
                if self._push is None:
                    self._push = await js.subscribe_bind(STREAM, config, self.durable, cb=self._jetstream_message,
                                                         manual_ack=True)
            else:
                await self._drop_push()
                if not self._core:
                    self._core = [await client.subscribe(subject, cb=self._message) for subject in SUBJECTS]
            # The subscriptions are registered before anyone reads the
            # database, so no change made after the resync that follows can
            # go unheard.
            await registered(client)
            previous, self._mode = self._mode, "core" if config is None else "jetstream"
            if previous is not None and previous != self._mode:
                _log.info("nats: now hearing events through {how}", how=self._how())

    async def _drop_core(self) -> None:
        subscriptions, self._core = self._core, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    async def _drop_push(self) -> None:
        push, self._push = self._push, None
        if push is not None:
            await push.unsubscribe()

    # Messages.  nats-py requires these callbacks to be coroutine functions;
    # it runs one at a time per subscription, so events keep their order.

    async def _message(self, msg: Any) -> None:
        """A core subscription's message: nothing to ack, nothing to wait for."""
        event = self._parse(msg)
        if event is not None:
            applied = self._deliver(event)
            if applied is not None:
                # The service logs what it could not read; core NATS has
                # nothing to redeliver.
                applied.addErrback(lambda reason: None)

    async def _jetstream_message(self, msg: Any) -> None:
        """A message of the durable consumer: acked once applied, terminated if rejected."""
        if getattr(msg, "headers", None) and "Status" in msg.headers:
            # Heartbeat or flow control, on a consumer someone else made with
            # them: not an event.  Flow control wants an empty reply.
            if msg.reply and self._client is not None:
                await settle(self._client.publish(msg.reply, b""))
            return
        event = self._parse(msg)
        if event is None:
            await settle(msg.term())
            return
        applied = self._deliver(event)
        if applied is not None:
            applied.addCallbacks(lambda _: self._applied(msg), lambda reason: self._not_applied(event, reason))

    def _applied(self, msg: Any) -> None:
        self._failing = None
        self._spawn(settle(msg.ack()))

    def _not_applied(self, event: ContainerEvent, reason: Failure) -> None:
        # One line per run of the same error (PostgreSQL down fails them all).
        error = reason.getErrorMessage()
        if error != self._failing:
            self._failing = error
            _log.warn("nats: {subject} not applied ({error}); JetStream redelivers it in {wait} s",
                      subject=event.subject, error=error, wait=self._ack_wait)

    def _parse(self, msg: Any) -> ContainerEvent | None:
        try:
            event = parse_event(msg.subject, msg.data)
        except EventRejected as reason:
            _log.warn("nats: ignored a message on {subject}: {reason}", subject=msg.subject, reason=reason)
            return None
        # Once each: a publisher repeating itself would fill the log.
        if not event.known_action and self._first((event.kind, event.action)):
            _log.info("nats: unknown action {action!r} on {subject}; re-reading what it names anyway "
                      "(not logged again for this action)", action=event.action, subject=event.subject)
        if event.full_resync and self._first("full resync"):
            _log.info("nats: {subject} names no user; reading everything (not logged again)",
                      subject=event.subject)
        return event

    def _first(self, key: object) -> bool:
        new = key not in self._said
        self._said.add(key)
        return new

    def _deliver(self, event: ContainerEvent) -> Deferred[object] | None:
        """The handler's Deferred (a fired one for C{None}), or C{None} when it raised (logged)."""
        try:
            applied = self._on_event(event)
        except Exception:
            _log.failure("nats: handler failed")
            return None
        return applied if isinstance(applied, Deferred) else succeed(None)

    async def _error(self, error: Exception) -> None:
        # While the server is away nats-py reports the same error at every
        # attempt; one line per distinct error is enough.
        text = f"{type(error).__name__}: {error}"
        if text != self._last_error:
            self._last_error = text
            _log.warn("nats: {error}", error=text)

    async def _disconnected(self) -> None:
        if self._client is None:
            return
        _log.warn("nats: disconnected; reconnecting")
        self._notify(self._on_disconnected)

    async def _reconnected(self) -> None:
        # nats-py awaits this inside its reconnection, which has restored the
        # subscriptions already; choosing again (requests to the server)
        # runs beside it.
        self._last_error = None
        _log.info("nats: reconnected to {url}", url=_url(self._client))
        self._spawn(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            await self._choose_mode()
        except Exception as error:
            # The connection dropped again: the next reconnection chooses.
            await self._error(error)
            return
        self._notify(self._on_connected)

    def _notify(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            _log.failure("nats: handler failed")


async def registered(client: Any) -> None:
    """
    Return once the server has every command C{client} was asked to send.

    One C{flush()} does not prove it: nats-py (2.16) writes the flush's PING
    straight to the socket, ahead of the SUBs still waiting for its flusher
    task, so the PONG can come back before the server has seen them and a
    message published meanwhile is lost (seen: about one start in five on a
    loaded machine).  The first flush wakes the flusher, which writes what
    was pending before the PONG can arrive; the second PING goes out after
    it, so its PONG means the server has read the lot.
    """
    await client.flush()
    await client.flush()


def _as_twisted_cancellation(reason: Failure) -> None:
    """L{stop} cancelled the connecting: say so the way Twisted code checks for."""
    reason.trap(asyncio.CancelledError)
    raise CancelledError()


def _ignore(*args: object) -> None:
    pass


def _url(client: Any) -> str:
    url = getattr(client, "connected_url", None)
    return getattr(url, "netloc", None) or "?"
