"""
Where the gateway remembers each container's SSH host key (trust on first
use): the L{HostKeyPins} interface the upstream client reads and writes, and
L{MemoryHostKeyPins}, its in-memory implementation for tests and for a
gateway without persistent state.

The persistent stores live with the container sources, which know when a
container is recreated and its pin must go: the local containers source's
JSON state file (L{edd_gateway.state.localfile.LocalPinStore}) and
PostgreSQL.  Every call answers with a Deferred because PostgreSQL's does.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred, succeed

from edd_gateway.state.model import HostKeyPin


@runtime_checkable
class HostKeyPins(Protocol):
    """The pinned host key of each container, by container id."""

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        """The pin of C{container_id}, or None before its first SSH login."""

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        """Pin C{host_key} (OpenSSH text form) for C{container_id}, replacing any pin."""

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        """Forget the pin of C{container_id} (it was recreated); the next login pins again.  Fires
        with whether there was one."""


class MemoryHostKeyPins:
    """L{HostKeyPins} in a dict: lost at exit."""

    def __init__(self) -> None:
        self.pins: dict[str, HostKeyPin] = {}

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        return succeed(self.pins.get(container_id))

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        self.pins[container_id] = HostKeyPin(container_id, host_key, container_created)
        return succeed(None)

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        return succeed(self.pins.pop(container_id, None) is not None)


__all__ = ["HostKeyPins", "MemoryHostKeyPins"]
