"""
The compute service's events over NATS: which subjects the gateway hears,
what a message must look like (L{parse_event}, pure), and the nats-py client
living inside Twisted's asyncio reactor (L{NatsEventFeed}).

An event is only a hint naming a container: the gateway re-reads that
container from PostgreSQL, so duplicated, reordered or lost events cannot
leave a wrong route.  That is also why parsing is lenient about what it
cannot misread (an unknown action still names a container worth re-reading)
and strict about what it could (a body that is not JSON is ignored, with a
log line).  nats-py reconnects by itself and re-subscribes; the feed reports
every (re)connection so its owner resyncs in full.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "CONTAINER_ACTIONS", "ContainerEvent", "EventRejected", "INGRESS_ACTIONS", "NatsEventFeed", "REFRESHED_SUBJECT",
    "SUBJECTS", "parse_event", "refreshed_message",
]

SUBJECTS = ("compute.container.*.*", "compute.ingress.*.*")
REFRESHED_SUBJECT = "gateway.router.refreshed"
CONTAINER_ACTIONS = frozenset({"created", "started", "stopped", "deleted", "ssh_toggled", "https_toggled",
                               "ip_assigned"})
INGRESS_ACTIONS = frozenset({"created", "deleted", "requested"})
_MAX_BODY = 64 * 1024
_TOKEN = re.compile(r"[^\s.*>]{1,253}")
_log = Logger()


class EventRejected(ValueError):
    """A message that names no container; the reason is logged."""


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """
    A hint that containers changed.

    @ivar kind: C{"container"} or C{"ingress"}.
    @ivar container_ids: the containers to re-read: the body's
        C{container_id}, and the subject's id too when the two differ.
    @ivar known_action: whether C{action} is one the compute service is
        known to send (others are re-read all the same).
    """

    subject: str
    kind: str
    action: str
    container_ids: tuple[str, ...]
    known_action: bool = True


def parse_event(subject: str, data: bytes) -> ContainerEvent:
    """
    The event a message on C{compute.container.<id>.<action>} or
    C{compute.ingress.<id>.<action>} carries.  The body is a JSON object with
    a C{container_id} string; an empty body, or one without C{container_id},
    takes the id from the subject.

    @raise EventRejected: for any other subject or body.
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "compute" or parts[1] not in ("container", "ingress"):
        raise EventRejected(f"not a compute container or ingress subject: {subject!r}")
    _, kind, subject_id, action = parts
    if not _TOKEN.fullmatch(subject_id) or not _TOKEN.fullmatch(action):
        raise EventRejected(f"malformed subject {subject!r}")
    body_id = _body_container_id(data)
    # Re-reading is harmless, missing a change is not: when the two ids
    # disagree, both containers are re-read.
    ids = (subject_id,) if body_id is None or body_id == subject_id else (body_id, subject_id)
    known = CONTAINER_ACTIONS if kind == "container" else INGRESS_ACTIONS
    return ContainerEvent(subject, kind, action, ids, action in known)


def _body_container_id(data: bytes) -> str | None:
    if len(data) > _MAX_BODY:
        raise EventRejected(f"body of {len(data)} bytes is larger than {_MAX_BODY}")
    if not data.strip():
        return None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise EventRejected(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise EventRejected(f"body must be a JSON object, got {type(body).__name__}")
    value = body.get("container_id")
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise EventRejected(f"container_id must be a non-empty string without spaces or dots, got {value!r}")
    return value


def refreshed_message(containers: int, running: int, routes: int, reason: str, now: float) -> bytes:
    """The body of L{REFRESHED_SUBJECT}, published after every full resync."""
    timestamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
    body = {"containers": containers, "running": running, "routes": routes, "reason": reason, "timestamp": timestamp}
    return json.dumps(body, sort_keys=True).encode("utf-8")


def _deferred(coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (nats-py) on the reactor's loop, as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


class NatsEventFeed:
    """
    A nats-py connection subscribed to L{SUBJECTS}.

    The handlers given to L{bind}: C{on_event(event)} gets each valid event;
    C{on_connected()} runs after the first connection and after every
    reconnection (subscriptions are already restored by then);
    C{on_disconnected()} when the connection drops.  The
    first connection is retried for ever, every C{reconnect_wait} seconds;
    L{start} fires once it is up.  Needs Twisted's asyncio reactor.
    """

    def __init__(self, servers: str | list[str], *, name: str = "edd-gateway", reconnect_wait: float = 2.0,
                 connect_timeout: float = 2.0, client_factory: Callable[[], Any] | None = None) -> None:
        self.servers = servers
        self._on_event: Callable[[ContainerEvent], object] = _ignore
        self._on_connected: Callable[[], object] = _ignore
        self._on_disconnected: Callable[[], object] = _ignore
        self._name = name
        self._reconnect_wait = reconnect_wait
        self._connect_timeout = connect_timeout
        self._client_factory = client_factory
        self._client: Any = None
        self._starting: asyncio.Future[Any] | None = None
        self._last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.is_connected)

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
        for subject in SUBJECTS:
            await client.subscribe(subject, cb=self._message)
        # The subscriptions are registered before anyone reads the database,
        # so no change made after the resync below can go unheard.
        await client.flush()
        _log.info("nats: connected to {url}, listening on {subjects}",
                  url=_url(client), subjects=", ".join(SUBJECTS))
        self._last_error = None
        self._notify(self._on_connected)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            await client.close()

    def _new_client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        from nats.aio.client import Client

        return Client()

    # nats-py requires these callbacks to be coroutine functions.
    async def _message(self, msg: Any) -> None:
        try:
            event = parse_event(msg.subject, msg.data)
        except EventRejected as reason:
            _log.warn("nats: ignored a message on {subject}: {reason}", subject=msg.subject, reason=reason)
            return
        if not event.known_action:
            _log.info("nats: unknown action {action!r} on {subject}; re-reading the container anyway",
                      action=event.action, subject=event.subject)
        self._notify(self._on_event, event)

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
        self._last_error = None
        _log.info("nats: reconnected to {url}", url=_url(self._client))
        self._notify(self._on_connected)

    def _notify(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            _log.failure("nats: handler failed")


def _as_twisted_cancellation(reason: Failure) -> None:
    """L{stop} cancelled the connecting: say so the way Twisted code checks for."""
    reason.trap(asyncio.CancelledError)
    raise CancelledError()


def _ignore(*args: object) -> None:
    pass


def _url(client: Any) -> str:
    url = getattr(client, "connected_url", None)
    return getattr(url, "netloc", None) or "?"
