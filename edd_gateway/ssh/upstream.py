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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from twisted.conch.ssh import connection as ssh_connection
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.userauth import SSHUserAuthClient
from twisted.internet import error as internet_error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.connect import ConnectFailure, ConnectProblem, endpoint_to
from edd_gateway.net.transport import set_no_delay
from edd_gateway.routes.containers import ContainerAddressing
from edd_gateway.net.proxyprotocol import header as proxy_header
from edd_gateway.ssh._logging import conch_logger
from edd_gateway.ssh.algorithms import VERSION_STRING, Algorithms
from edd_gateway.ssh.auth import LoginRefused, fingerprint, key_blob
from edd_gateway.ssh.client_crypto import ClientTransportCrypto
from edd_gateway.ssh.connection import RelayConnection
from edd_gateway.ssh.hostkey import public_text
from edd_gateway.ssh.keepalive import Keepalive, abandon, probe_connection
from edd_gateway.ssh.pinning import FORGET_COMMAND, HostKeyPolicy, RunTicket, RunWatch
from edd_gateway.ssh.pins import HostKeyPins
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


class UpstreamTransport(ClientTransportCrypto, ssh_transport.SSHClientTransport):
    """
    The SSH client transport to one container.  Algorithms, strict kex and
    packet framing: L{ClientTransportCrypto}; host key algorithms:
    L{edd_gateway.ssh.algorithms.CONTAINER_HOST_KEYS} (Ed25519 first, the
    key pinned when a container has one).
    """

    _log = conch_logger()
    #: Containers' logs name the product, not Twisted's release.
    ourVersionString = VERSION_STRING

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.useAlgorithms(attempt.connector.settings.algorithms)
        self.goodbye: str | None = None
        self.keepalive: Keepalive | None = None

    def connectionMade(self) -> None:
        self.attempt.transport = self
        set_no_delay(self.transport)
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(True)
        version = self.attempt.connector.settings.proxy_protocol
        if version is not None:
            # Before our version line: the sshd's front reads it first.
            # Without the user's addresses: UNKNOWN (v1) or LOCAL (v2).
            source, destination = self.attempt.client or (None, None)
            self.transport.write(proxy_header(version, source, destination))
        super().connectionMade()

    #: Bytes that followed the server's NEWKEYS while our keys were not set
    #: up yet (the host-key check still pending), or None when not holding.
    _held: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.keepalive is not None:
            self.keepalive.heard()
        if self._held is not None:
            self._held += data
            return
        super().dataReceived(data)

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        # Conch's client sets its new keys only once verifyHostKey's Deferred
        # fires.  When the check waits (on PostgreSQL, for the pins), the
        # sshd's NEWKEYS may arrive first, followed at once by packets under
        # the new keys (OpenSSH's EXT_INFO): Conch would parse those with the
        # old ones and fail ("bad packet length").  Hold them until the keys
        # are in place.
        super().ssh_NEWKEYS(packet)
        if self._gotNewKeys and not self.nextEncryptions.encBlockSize:
            self._held = self._takeUnread()

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        super()._keySetup(sharedSecret, exchangeHash)
        held = self._held
        if held is not None and self.nextEncryptions.encBlockSize:
            self._held = None
            if held:
                self.dataReceived(held)

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[None]:
        return self.attempt.check_host_key(hostKey)

    def connectionSecure(self) -> None:
        attempt = self.attempt
        self.requestService(UpstreamAuth(attempt, UpstreamConnection(attempt)))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.goodbye = description.decode("utf-8", "replace")[:200]

    def algorithmsRefused(self, description: str) -> None:
        super().algorithmsRefused(description)
        self.attempt.refuse(f"container {self.attempt.container.id}'s sshd offers no SSH algorithms the gateway "
                            f"accepts ({description})")

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        super().connectionLost(reason)
        self.attempt.lost(reason or Failure(internet_error.ConnectionDone()))


class UpstreamAuth(SSHUserAuthClient):
    """Public key authentication with the gateway's client key, and nothing else."""

    _log = conch_logger()
    preferredOrder = [b"publickey"]

    def __init__(self, attempt: _Attempt, instance: UpstreamConnection) -> None:
        super().__init__(attempt.user.encode("ascii"), instance)
        self.attempt = attempt
        self._offered = False

    def getPublicKey(self) -> Key | None:
        if self._offered:
            self.attempt.refuse(f"container {self.attempt.container.id} did not accept the gateway's key "
                                f"for user {self.attempt.user}")
            return None
        self._offered = True
        return self.attempt.connector.client_key.public()

    def getPrivateKey(self) -> Deferred[Key]:
        return succeed(self.attempt.connector.client_key)

    # Without these, Conch's client would ask for a password it cannot get,
    # fall back to "none" and ask again, forever.
    def auth_password(self) -> bool:
        return False

    def auth_keyboard_interactive(self) -> bool:
        return False

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        pass  # the container's pre-login banner is not the user's business here


class UpstreamConnection(RelayConnection):
    """
    The gateway's ssh-connection to a container; it opens no channel of its
    own and accepts none from the container.  C{on_lost} is called when the
    connection ends after login.
    """

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__()
        self.attempt = attempt
        self.container = attempt.container
        self.on_lost: Callable[[], None] | None = None

    def serviceStarted(self) -> None:
        super().serviceStarted()
        transport: UpstreamTransport = self.transport  # type: ignore[assignment]  # the one that starts it
        settings, reactor = self.attempt.connector.settings, self.attempt.connector.reactor
        transport.keepalive = Keepalive(
            reactor, settings.keepalive_interval, settings.keepalive_max_missed,
            probe=lambda: probe_connection(self), dead=lambda: abandon(transport, b"keepalive timeout"),
        )
        transport.keepalive.start()
        self.attempt.connected(self)

    def serviceStopped(self) -> None:
        super().serviceStopped()
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        sender = struct.unpack(">L", getNS(packet)[1][:4])[0]
        self.refuse_open(sender, ssh_connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
                         b"the gateway accepts no channels from containers")

    def close(self) -> None:
        """End the connection (the user logged out)."""
        transport = self.transport
        if transport is not None and transport.transport is not None:
            transport.loseConnection()


__all__ = ["ClientAddresses", "UpstreamConnection", "UpstreamConnector", "UpstreamSettings", "UpstreamTransport"]
