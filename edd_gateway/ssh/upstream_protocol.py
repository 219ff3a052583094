"""
The protocol of one connection to a container's sshd, as Conch stacks it:
L{UpstreamTransport} (the client transport, on the gateway's transport
seam), L{UpstreamAuth} (ssh-userauth with the gateway's client key, and
nothing else) and L{UpstreamConnection} (the ssh-connection the user's
channels are relayed over).  Each reports to the connection attempt that
made it (L{edd_gateway.ssh.upstream}), which decides what the user is told.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from twisted.conch.ssh import connection as ssh_connection
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.userauth import SSHUserAuthClient
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from edd_gateway.net.proxyprotocol import header as proxy_header
from edd_gateway.net.transport import set_no_delay
from edd_gateway.ssh._logging import conch_logger
from edd_gateway.ssh.algorithms import VERSION_STRING
from edd_gateway.ssh.client_crypto import ClientTransportCrypto
from edd_gateway.ssh.connection import RelayConnection
from edd_gateway.ssh.keepalive import Keepalive, abandon, probe_connection

if TYPE_CHECKING:
    from edd_gateway.ssh.upstream import _Attempt


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


__all__ = ["UpstreamAuth", "UpstreamConnection", "UpstreamTransport"]
