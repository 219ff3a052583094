"""
Dead-peer detection for an SSH connection, in the manner of OpenSSH's
ClientAliveInterval / ServerAliveInterval: after C{interval} seconds in
which nothing arrived from the peer, send it a probe (a
C{keepalive@openssh.com} global request wanting a reply, which every
implementation answers, if only with a failure); after C{max_missed} silent
intervals in a row, give the peer up.  Any bytes received count as a sign of
life, so a busy connection is never probed.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import NS
from twisted.internet.interfaces import IDelayedCall, IReactorTime

PROBE_REQUEST = b"keepalive@openssh.com"


class Keepalive:
    """
    Probes a silent peer every C{interval} seconds and calls C{dead} once
    C{max_missed} probes in a row went unanswered.
    """

    def __init__(self, clock: IReactorTime, interval: float, max_missed: int,
                 probe: Callable[[], None], dead: Callable[[], None]) -> None:
        self.clock = clock
        self.interval = interval
        self.max_missed = max_missed
        self._probe = probe
        self._dead = dead
        self._heard = False
        self.missed = 0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        if self.interval > 0 and self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def heard(self) -> None:
        """The peer sent something: it is alive."""
        self._heard = True

    def _tick(self) -> None:
        self._timer = None
        if self._heard:
            self._heard = False
            self.missed = 0
        elif self.missed >= self.max_missed:
            self._dead()
            return
        else:
            self.missed += 1
        if self.missed:
            self._probe()
        self._timer = self.clock.callLater(self.interval, self._tick)


def probe_connection(connection: Any) -> None:
    """Send the probe on an SSHConnection; its reply, success or failure, is all we need."""
    answer = connection.sendGlobalRequest(PROBE_REQUEST, b"", wantReply=1)
    if answer is not None:
        answer.addErrback(lambda _: None)


def abandon(ssh: Any, why: bytes) -> None:
    """
    Say goodbye to a peer presumed dead and close at once: a plain close
    would wait for the unsent bytes to drain, which a dead peer never lets.
    """
    code = struct.pack(">L", ssh_transport.DISCONNECT_CONNECTION_LOST)
    ssh.sendPacket(ssh_transport.MSG_DISCONNECT, code + NS(why) + NS(b""))
    ssh.transport.abortConnection()


__all__ = ["Keepalive", "PROBE_REQUEST", "abandon", "probe_connection"]
