"""
The gateway's side of the connection to a container's sshd: connect to the
container's address (L{ContainerAddressing}) on the sshd port, check the
container's host key as C{--ssh-host-key-policy} says (trust on first use:
the first key seen is pinned through L{HostKeyPins}, a different one later
is refused; with C{pin-per-run} the pin lasts one run of the container, see
L{edd_gateway.ssh.pinning}), authenticate as the requested user with the
gateway's client key, and hand back the ready L{UpstreamConnection}.

Every way this can fail ends in a L{LoginRefused} whose message the user is
shown: the container refuses connections or does not answer in time, its
host key changed (the message names the operator command that clears the
pin), it restarted during the login, it does not accept the gateway's key.

This module decides (the settings, the connector, each attempt's deadline,
host key check and outcome); the protocol objects an attempt drives, from
the transport to ssh-connection, are L{edd_gateway.ssh.upstream_protocol}'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.connect import ConnectFailure, ConnectProblem, endpoint_to
from edd_gateway.routes.containers import ContainerAddressing
from edd_gateway.ssh.algorithms import Algorithms
from edd_gateway.ssh.auth import LoginRefused, fingerprint, key_blob
from edd_gateway.ssh.hostkey import public_text
from edd_gateway.ssh.pinning import FORGET_COMMAND, HostKeyPolicy, RunTicket, RunWatch
from edd_gateway.ssh.pins import HostKeyPins
from edd_gateway.ssh.upstream_protocol import UpstreamConnection, UpstreamTransport
from edd_gateway.state.model import Container, HostKeyPin

_log = Logger()


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """
    How the gateway reaches containers' sshd.  C{proxy_protocol} (C{"v1"}
    or C{"v2"}) starts each connection with a PROXY protocol header naming
    the user's client, for an sshd behind something that reads it.
    C{forget_command} is the operator command a refusal for a changed host
    key names, C{{container}} standing for the container id.
    """

    port: int = 22
    timeout: float = 10.0
    keepalive_interval: float = 30.0
    keepalive_max_missed: int = 3
    proxy_protocol: str | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.PIN_PER_RUN
    forget_command: str = FORGET_COMMAND
    #: Key exchanges, ciphers and MACs offered to containers.
    algorithms: Algorithms = Algorithms()

#: The user's connection to the gateway, as (client address, address the
#: client connected to): what a PROXY protocol header says.
ClientAddresses = tuple[IAddress, IAddress]


class UpstreamConnector:
    """
    Opens authenticated SSH connections to containers.  C{runs} (for
    C{pin-per-run}) voids the logins of a container whose run ends while
    they check its host key; without it a pin lasts as long as the store
    keeps it.
    """

    def __init__(self, reactor: Any, client_key: Key, pins: HostKeyPins,
                 settings: UpstreamSettings = UpstreamSettings(), *,
                 addressing: ContainerAddressing = ContainerAddressing(), runs: RunWatch | None = None) -> None:
        self.reactor = reactor
        self.client_key = client_key
        self.pins = pins
        self.settings = settings
        self.addressing = addressing
        self.runs = runs

    def connect(self, container: Container, user: str,
                client: ClientAddresses | None = None) -> Deferred[UpstreamConnection]:
        """
        A ready connection to C{container}'s sshd as C{user}; fails with
        L{LoginRefused}.  Cancelling it abandons the attempt.  C{client} is
        what the PROXY protocol header names, when one is sent.
        """
        return _Attempt(self, container, user, client).start()

    def endpoint(self, host: str) -> IStreamClientEndpoint:
        return endpoint_to(self.reactor, host, self.settings.port, self.settings.timeout)


class _Attempt:
    """One connection attempt: its deadline, its outcome, and the user-facing reason it failed."""

    def __init__(self, connector: UpstreamConnector, container: Container, user: str,
                 client: ClientAddresses | None = None) -> None:
        self.connector = connector
        self.container = container
        self.user = user
        self.client = client
        self.result: Deferred[UpstreamConnection] = Deferred(self._cancel)
        self.transport: UpstreamTransport | None = None
        self.refusal: LoginRefused | None = None
        self._connecting: Deferred[Any] | None = None
        self._deadline: IDelayedCall | None = None
        self._ticket: RunTicket | None = None
        self._checking = False

    def start(self) -> Deferred[UpstreamConnection]:
        connector, container = self.connector, self.container
        host = connector.addressing.host(container)
        if host is None:
            self.refuse(f"container {container.id} has no address yet; try again in a moment")
            self.result.errback(self.refusal)
            return self.result
        if connector.runs is not None:
            # Taken in the turn the login found the container running.
            self._ticket = connector.runs.ticket(container.id)
            self.result.addBoth(self._released)
        factory = Factory.forProtocol(lambda: UpstreamTransport(self))
        factory.noisy = False
        self._deadline = connector.reactor.callLater(connector.settings.timeout, self._timedOut)
        self._connecting = connector.endpoint(host).connect(factory)
        self._connecting.addErrback(self._connectFailed)
        return self.result

    def refuse(self, message: str) -> None:
        """Remember why the attempt fails, for when the connection closes."""
        if self.refusal is None:
            self.refusal = LoginRefused(message)

    # Host key: trust on first use.

    def check_host_key(self, blob: bytes) -> Deferred[None]:
        if self.connector.settings.host_key_policy is HostKeyPolicy.IGNORE:
            return succeed(None)
        self._checking = True
        pins = self.connector.pins
        checked = pins.get_pin(self.container.id).addCallback(self._compare, blob)
        return checked.addErrback(self._pinStoreFailed).addBoth(self._checked)

    def _compare(self, pin: HostKeyPin | None, blob: bytes) -> Deferred[None] | None:
        cid = self.container.id
        self._checkRun()
        if pin is None:
            _log.info("ssh: pinned host key {fingerprint} for container {container}",
                      fingerprint=fingerprint(blob), container=cid)
            return self.connector.pins.set_pin(cid, public_text(Key.fromString(blob))).addCallback(self._pinned)
        if key_blob(pin.host_key) == blob:
            return None
        pinned = key_blob(pin.host_key)
        when = ("at its first login" if self.connector.settings.host_key_policy is HostKeyPolicy.PIN
                else "in its current run")
        command = self.connector.settings.forget_command.replace("{container}", cid)
        self.refuse(f"container {cid} presented a different SSH host key ({fingerprint(blob)}) than the one "
                    f"pinned {when} ({fingerprint(pinned) if pinned else 'unreadable'}); refusing. If its key "
                    f"was changed on purpose, an operator clears the pin with: {command}")
        _log.warn("ssh: {refusal}", refusal=self.refusal)
        raise self.refusal  # type: ignore[misc]  # set just above

    def _pinned(self, _: None) -> None:
        if self._ticket is not None and not self._ticket.current:
            # The run ended while the pin was being written: it may have
            # landed after the drop, so drop it again.
            self.connector.pins.clear_pin(self.container.id).addErrback(
                lambda failure: _log.warn("ssh: cannot drop the pin of {container}: {error}",
                                          container=self.container.id, error=failure.getErrorMessage()))
            self._checkRun()

    def _checkRun(self) -> None:
        if self._ticket is not None and not self._ticket.current:
            self.refuse(f"container {self.container.id} stopped or restarted during the login; try again")
            raise self.refusal  # type: ignore[misc]  # set just above

    def _checked(self, result: Any) -> Any:
        self._checking = False
        self._release()
        return result

    def _released(self, result: Any) -> Any:
        self._release()
        return result

    def _release(self) -> None:
        # Held until the host key check is over, even when the login ended
        # first: a pin write still in flight must be voided by a run's end.
        ticket = self._ticket
        if ticket is not None and not self._checking and self.connector.runs is not None:
            self._ticket = None
            self.connector.runs.release(ticket)

    def _pinStoreFailed(self, reason: Failure) -> Failure:
        if not reason.check(LoginRefused):
            _log.failure("ssh: cannot read or write the host key pin of {container}", reason,
                         container=self.container.id)
            self.refuse(f"cannot check the host key of container {self.container.id} right now; try again")
        return reason

    # Outcomes.

    def connected(self, connection: UpstreamConnection) -> None:
        self._stopDeadline()
        if not self.result.called:
            self.result.callback(connection)
        else:
            connection.close()

    def lost(self, reason: Failure) -> None:
        if self.result.called:
            return
        self._stopDeadline()
        if self.refusal is None:
            said = self.transport.goodbye if self.transport is not None else None
            self.refuse(f"container {self.container.id} closed the SSH connection during login"
                        + (f" ({said})" if said else ""))
        self.result.errback(self.refusal)

    def _connectFailed(self, reason: Failure) -> None:
        if self.result.called or reason.check(CancelledError):
            return
        self._stopDeadline()
        cid = self.container.id
        if ConnectFailure.of(reason).problem is ConnectProblem.REFUSED:
            self.refuse(f"container {cid} is not accepting SSH connections (connection refused)")
        else:
            self.refuse(f"cannot reach container {cid}: {reason.getErrorMessage()}")
        self.result.errback(self.refusal)

    def _timedOut(self) -> None:
        self._deadline = None
        self.refuse(f"container {self.container.id} did not answer SSH within "
                    f"{self.connector.settings.timeout:g} s")
        self._abort()
        if not self.result.called:
            self.result.errback(self.refusal)

    def _cancel(self, _: Deferred[Any]) -> None:
        self._stopDeadline()
        self._abort()

    def _abort(self) -> None:
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        if self.transport is not None and self.transport.transport is not None:
            self.transport.transport.abortConnection()

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


__all__ = ["ClientAddresses", "UpstreamConnector", "UpstreamSettings"]
