"""
How far the gateway trusts a container's SSH host key
(C{--ssh-host-key-policy}), and the piece that makes a pin last one run of
the container.

L{HostKeyPolicy}: C{pin-per-run} (the default) pins the first key a
container presents and holds it while the container runs; when the gateway
sees the container leave C{running} (stopped, failed, gone from the
directory) the pin is dropped, so a container that comes back with a new
key (a rebuilt image, keys made at start) is pinned afresh instead of being
locked out.  C{pin} keeps the first key for good.  C{ignore} checks nothing.

L{RunWatch} is a L{ContainerDirectory} observer for C{pin-per-run}: it
compares each snapshot with the one before, by identity first (a single
event swaps in a snapshot where every other container is the same object),
and drops the pin of a container whose run ended (when it leaves
C{running}) and again when a new run starts (covering a pin written after
the first drop, and a gateway that was not running when the container
stopped).  A login holds a L{RunTicket} from the moment the container was
found running until its host key check is over; a run that ends meanwhile
voids the ticket, and the login then neither pins nor is let in, so a key
seen in an old run can never be pinned for the next.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from itertools import compress
from operator import is_not
from typing import Any

from twisted.logger import Logger

from edd_gateway.ssh.pins import HostKeyPins
from edd_gateway.state.model import RUNNING, Container, ContainerDirectory, ContainerSnapshot

__all__ = ["FORGET_COMMAND", "HostKeyPolicy", "RunTicket", "RunWatch", "parse_host_key_policy"]

_log = Logger()

#: The operator command that clears a pin; C{{container}} is filled in.
FORGET_COMMAND = "python -m edd_gateway forget-host-key {container}"
_STATUS_WORD = re.compile(r"[a-z][a-z_ -]{0,30}")


class HostKeyPolicy(Enum):
    """C{--ssh-host-key-policy}."""

    PIN_PER_RUN = "pin-per-run"
    PIN = "pin"
    IGNORE = "ignore"


def parse_host_key_policy(text: str) -> HostKeyPolicy:
    """A C{--ssh-host-key-policy} value; ValueError naming the choices."""
    try:
        return HostKeyPolicy(text.strip().lower())
    except ValueError:
        choices = ", ".join(policy.value for policy in HostKeyPolicy)
        raise ValueError(f"{text!r} is not one of {choices}") from None


class RunTicket:
    """
    A login's claim that C{container_id} is in the run it was found running
    in; C{current} turns false when the gateway sees that run end.
    """

    __slots__ = ("container_id", "current")

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.current = True


class RunWatch:
    """
    Drops a container's host-key pin when its run ends and when a new one
    starts, as seen in the directory's snapshots; hands logins their
    L{RunTicket}s.

    The first ready snapshot is the baseline: what runs then keeps its pin
    (a gateway restart is no container restart).  Snapshots that are not
    ready are skipped, so a source that has not loaded yet never reads as
    every container gone.
    """

    def __init__(self, directory: ContainerDirectory, pins: HostKeyPins) -> None:
        self.pins = pins
        self._containers: Mapping[str, Container] | None = None
        self._running: set[str] = set()
        self._tickets: dict[str, list[RunTicket]] = {}
        directory.observers.append(self.observe)
        self.observe(directory.current)

    def ticket(self, container_id: str) -> RunTicket:
        """A ticket for the run C{container_id} is in now; L{release} it once the host key is checked."""
        ticket = RunTicket(container_id)
        self._tickets.setdefault(container_id, []).append(ticket)
        return ticket

    def release(self, ticket: RunTicket) -> None:
        held = self._tickets.get(ticket.container_id)
        if held is not None and ticket in held:
            held.remove(ticket)
            if not held:
                del self._tickets[ticket.container_id]

    def observe(self, snapshot: ContainerSnapshot) -> None:
        containers = snapshot.containers
        previous = self._containers
        if containers is previous or not snapshot.ready:
            return
        self._containers = containers
        if previous is None:
            self._running = {cid for cid, container in containers.items() if container.status == RUNNING}
            return
        # The ids whose container is not the same object as before (new ones
        # included), in C: a single event changes one in 10,000.
        changed = list(compress(containers, map(is_not, containers.values(), map(previous.get, containers))))
        appeared = sum(1 for cid in changed if cid not in previous)
        running = self._running
        if len(containers) - appeared != len(previous):
            for cid in running.difference(containers):
                running.discard(cid)
                self._ended(cid, "left the container list")
        for cid in changed:
            container = containers[cid]
            now = container.status == RUNNING
            if now == (cid in running):
                continue
            if now:
                running.add(cid)
                self._started(cid)
            else:
                running.discard(cid)
                self._ended(cid, f"is {_shown_status(container.status)}")

    def _ended(self, cid: str, how: str) -> None:
        for ticket in self._tickets.pop(cid, ()):
            ticket.current = False
        self._clear(cid, "ssh: container {container} {how}: its pinned SSH host key is dropped; its next run is "
                         "pinned afresh", how=how)

    def _started(self, cid: str) -> None:
        # A pin here was written after the run ended (a login in flight then).
        self._clear(cid, "ssh: container {container} runs again: its SSH host key pinned in its last run is "
                         "dropped; it is pinned afresh at its next login")

    def _clear(self, cid: str, said: str, **fields: str) -> None:
        """Drop the pin, saying C{said} when there was one (most containers never had an SSH login)."""
        def cleared(there_was_one: object) -> None:
            if there_was_one:
                _log.info(said, container=cid, **fields)

        def failed(failure: Any) -> None:
            _log.warn("ssh: cannot drop the pinned SSH host key of container {container} ({error}); if its "
                      "key changed, logins are refused until `{command}`", container=cid,
                      error=failure.getErrorMessage(), command=FORGET_COMMAND.format(container=cid))

        self.pins.clear_pin(cid).addCallbacks(cleared, failed)


def _shown_status(status: str) -> str:
    word = status.strip().lower()
    return word if _STATUS_WORD.fullmatch(word) else "not running"
