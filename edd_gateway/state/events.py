"""
What the compute service's events say, as hints (pure): the subjects the
gateway hears, what a message on one of them names (L{parse_event}), and
the body the gateway publishes after a full resync (L{refreshed_message}).
The feed that receives them is L{edd_gateway.state.nats}.

An event is only a hint: its subject names a container (or an SSH key) and
the gateway re-reads that from PostgreSQL, so duplicated, reordered or lost
events cannot leave a wrong route.  That is why parsing trusts the subject
and only adds to it from the body: a body that cannot be decoded (protobuf,
or JSON) is logged once per kind of subject, and what the subject names is
re-read all the same.  Only a subject of another shape is rejected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from twisted.logger import Logger

from edd_gateway.state.events_pb import DecodeError, message_class

__all__ = [
    "CONTAINER_ACTIONS", "ContainerEvent", "EventRejected", "INGRESS_ACTIONS", "REFRESHED_SUBJECT",
    "SSHKEY_ACTIONS", "SUBJECTS", "parse_event", "refreshed_message",
]

SUBJECTS = ("compute.container.*.*", "compute.ingress.*.*", "compute.sshkey.*.*")
REFRESHED_SUBJECT = "gateway.router.refreshed"
CONTAINER_ACTIONS = frozenset({"created", "started", "stopped", "deleted", "ssh_toggled", "https_toggled",
                               "ip_assigned"})
INGRESS_ACTIONS = frozenset({"created", "deleted", "requested", "delete_requested"})
SSHKEY_ACTIONS = frozenset({"created", "deleted"})
_ACTIONS = {"container": CONTAINER_ACTIONS, "ingress": INGRESS_ACTIONS, "sshkey": SSHKEY_ACTIONS}
_MAX_BODY = 64 * 1024
_TOKEN = re.compile(r"[^\s.*>]{1,253}")
_log = Logger()


class EventRejected(ValueError):
    """A subject that is not a compute event subject; the reason is logged."""


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """
    A hint that something the routes depend on changed.

    @ivar kind: C{"container"}, C{"ingress"} or C{"sshkey"}.
    @ivar container_ids: the containers to re-read: the subject's id, and the
        body's C{container_id} too when the two differ (empty for C{sshkey}).
    @ivar user_ids: the users whose SSH keys to re-read (C{sshkey} events:
        the body's user id, as text like the table's C{user_id}).
    @ivar full_resync: nothing says what to re-read (an C{sshkey} event
        whose body names no user): read everything.
    @ivar known_action: whether C{action} is one the compute service is
        known to send (others are re-read all the same).
    """

    subject: str
    kind: str
    action: str
    container_ids: tuple[str, ...]
    user_ids: tuple[str, ...] = ()
    full_resync: bool = False
    known_action: bool = True


class _Undecodable(ValueError):
    """A body that says nothing usable: only the subject counts."""


@dataclass(frozen=True, slots=True)
class _Body:
    container_id: str | None = None
    user_id: str | None = None


# The kinds whose undecodable bodies were logged already: a publisher
# sending a format the gateway cannot read would otherwise log every message.
_undecodable_kinds: set[str] = set()


def parse_event(subject: str, data: bytes) -> ContainerEvent:
    """
    The event a message on C{compute.<kind>.<id>.<action>} carries, C{kind}
    being C{container}, C{ingress} (C{id} a container id) or C{sshkey}
    (C{id} a key id).  The body is protobuf (the compute service's
    messages), or JSON when it starts with C{{} (C{container_id} /
    C{containerId}, C{user_id} / C{userId}, a user id as a number or a
    string).  Whatever the body, the subject's container is re-read; an
    C{sshkey} event re-reads its user's keys, or everything when the body
    names no user.  Never raises for a body.

    @raise EventRejected: for a subject of another shape.
    """
    kind, subject_id, action = _split(subject)
    try:
        body = _read_body(kind, action, data)
    except _Undecodable as problem:
        _log_undecodable(kind, subject, str(problem))
        body = _Body()
    known = action in _ACTIONS[kind]
    if kind == "sshkey":
        if body.user_id is None:
            return ContainerEvent(subject, kind, action, (), full_resync=True, known_action=known)
        return ContainerEvent(subject, kind, action, (), (body.user_id,), known_action=known)
    # Re-reading is harmless, missing a change is not: when the two ids
    # disagree, both containers are re-read.
    body_id = body.container_id
    ids = (subject_id,) if body_id is None or body_id == subject_id else (body_id, subject_id)
    return ContainerEvent(subject, kind, action, ids, known_action=known)


def _split(subject: str) -> tuple[str, str, str]:
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "compute" or parts[1] not in _ACTIONS:
        raise EventRejected(f"not a compute container, ingress or sshkey subject: {subject!r}")
    _, kind, subject_id, action = parts
    if not _TOKEN.fullmatch(subject_id) or not _TOKEN.fullmatch(action):
        raise EventRejected(f"malformed subject {subject!r}")
    return kind, subject_id, action


def _log_undecodable(kind: str, subject: str, problem: str) -> None:
    if kind not in _undecodable_kinds:
        _undecodable_kinds.add(kind)
        _log.warn("nats: cannot decode the body of a message on {subject} ({problem}); re-reading what the subject "
                  "names (further such bodies on compute.{kind}.* are not logged)",
                  subject=subject, problem=problem, kind=kind)


def _read_body(kind: str, action: str, data: bytes) -> _Body:
    if len(data) > _MAX_BODY:
        raise _Undecodable(f"{len(data)} bytes, more than {_MAX_BODY}")
    stripped = data.strip()
    if not stripped:
        return _Body()
    if stripped.startswith(b"{"):
        # No message of the compute service starts with "{" (it would be
        # field 15 opening a group), but a message can start with "\n"
        # (field 1): JSON is tried first only on what looks like JSON, and
        # protobuf still gets its turn.
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            pass
        else:
            return _from_json(kind, document)
    return _from_protobuf(kind, action, data)


def _from_json(kind: str, document: dict[str, Any]) -> _Body:
    if kind == "sshkey":
        return _Body(user_id=_user_id(_either(document, "user_id", "userId")))
    value = _either(document, "container_id", "containerId")
    if value is None:
        return _Body()
    if not isinstance(value, str):
        raise _Undecodable(f"container_id is a {type(value).__name__}, not a string")
    return _Body(container_id=_container_id(value))


def _either(document: dict[str, Any], snake: str, camel: str) -> Any:
    value = document.get(snake)
    return document.get(camel) if value is None else value


def _from_protobuf(kind: str, action: str, data: bytes) -> _Body:
    cls = message_class(kind, action)
    try:
        message = cls.FromString(data)
    except DecodeError as error:
        raise _Undecodable(f"neither JSON nor {cls.DESCRIPTOR.full_name}: {error}") from None
    if kind == "sshkey":
        # proto3 cannot tell an unset int64 from 0, and no user has id 0.
        return _Body(user_id=_user_id(message.user_id or None))
    return _Body(container_id=_container_id(message.container_id) if message.container_id else None)


def _container_id(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise _Undecodable(f"container_id {value[:80]!r} is empty or has spaces or dots")
    return value


def _user_id(value: object) -> str | None:
    """The table's C{user_id} is TEXT: the compute service's int64, as text."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    # Protobuf's JSON mapping writes an int64 as a string.
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return value
    raise _Undecodable(f"user id {str(value)[:80]!r} is not a positive integer or a string without spaces or dots")


def refreshed_message(containers: int, running: int, routes: int, reason: str, now: float) -> bytes:
    """The body of L{REFRESHED_SUBJECT}, published after every full resync."""
    timestamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
    body = {"containers": containers, "running": running, "routes": routes, "reason": reason, "timestamp": timestamp}
    return json.dumps(body, sort_keys=True).encode("utf-8")
