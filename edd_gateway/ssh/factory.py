"""
The SSH side of the gateway, wired: L{GatewaySSHFactory} is the protocol
factory a listener (or the sniffer, for connections that start with
C{SSH-}) hands connections to.  It builds a L{GatewayServerTransport} per
connection (persistent host keys, a login grace time that covers the key
exchange too, keepalives once logged in) whose ssh-userauth service checks
keys against the container directory (L{ContainerKeyChecker}) and whose
realm (L{UpstreamRealm}) logs in to the container before the user's login
succeeds, so every failure reaches the user as a message.

L{build_ssh_factory} is the one call the service tree makes: it loads (or
creates) the key files and returns the factory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.keys import Key
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.net.transport import set_no_delay
from edd_gateway.routes.containers import ContainerAddressing
from edd_gateway.front.admission import NO_ADMISSION
from edd_gateway.front.drain import IAdmittedOnFirstBytes
from edd_gateway.ops.observe import GatewayObserver, SSHSessionRecord
from edd_gateway.net.addresses import describe_peer
from edd_gateway.ssh._logging import conch_logger
from edd_gateway.ssh.packet import Buffer
from edd_gateway.ssh.transport_crypto import ServerTransportCrypto
from edd_gateway.ssh.algorithms import VERSION_STRING, Algorithms
from edd_gateway.ssh.auth import ContainerKeyChecker, GatewayLogin, GatewayUserAuthServer
from edd_gateway.ssh.connection import DownstreamConnection
from edd_gateway.ssh.hostkey import load_host_keys, load_or_create_key
from edd_gateway.ssh.keepalive import Keepalive, abandon, probe_connection
from edd_gateway.ssh.pinning import FORGET_COMMAND, HostKeyPolicy, RunWatch
from edd_gateway.ssh.pins import HostKeyPins
from edd_gateway.ssh.signatures import SignaturePolicy, server_sig_algs
from edd_gateway.ssh.upstream import ClientAddresses, UpstreamConnector, UpstreamSettings
from edd_gateway.ssh.upstream_protocol import UpstreamConnection
from edd_gateway.state.model import ContainerDirectory

_log = Logger()

#: Where the embedded default keeps its keys (relative to the working
#: directory, beside the development TLS certificate).
DEFAULT_HOST_KEY = os.path.join("edd-gateway-state", "ssh", "host_ed25519_key")
DEFAULT_CLIENT_KEY = os.path.join("edd-gateway-state", "ssh", "client_ed25519_key")


@dataclass(frozen=True, slots=True)
class SSHSettings:
    """
    @ivar ssh_port: the containers' sshd port (22; tests use another).
    @ivar login_grace_time: seconds from connect to login, key exchange included.
    @ivar connect_timeout: seconds to connect to, and log in to, a container.
    @ivar keepalive_interval: seconds of silence before a peer is probed (0: never).
    @ivar keepalive_max_missed: unanswered probes in a row before a peer is given up.
    @ivar window_size: bytes each relayed channel half accepts ahead (per direction).
    @ivar max_packet: the largest data packet accepted.
    @ivar max_channels: channels open at once on one user connection.
    @ivar proxy_protocol: C{"v1"} or C{"v2"}: connections to containers'
        sshd start with a PROXY protocol header naming the user's client
        (stock OpenSSH reads none: for an sshd behind something that does).
    @ivar host_key_policy: how far containers' host keys are trusted
        (L{edd_gateway.ssh.pinning}).
    @ivar forget_command: the operator command that clears a pin, named
        when a changed host key is refused (C{{container}}: the id).
    @ivar allow_sha1_rsa: accept SHA-1 C{ssh-rsa} signatures from users'
        RSA keys and offer C{ssh-rsa} for an RSA host key (C{--ssh-allow-sha1-rsa}).
    """

    ssh_port: int = 22
    login_grace_time: float = 30.0
    connect_timeout: float = 10.0
    keepalive_interval: float = 30.0
    keepalive_max_missed: int = 3
    window_size: int = 2 * 1024 * 1024
    max_packet: int = 32768
    max_channels: int = 64
    proxy_protocol: str | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.PIN_PER_RUN
    forget_command: str = FORGET_COMMAND
    allow_sha1_rsa: bool = False
    #: Key exchanges, ciphers and MACs offered on both sides (C{--ssh-kex},
    #: C{--ssh-ciphers}, C{--ssh-macs}; L{edd_gateway.ssh.algorithms}).
    algorithms: Algorithms = Algorithms()

    def upstream(self) -> UpstreamSettings:
        return UpstreamSettings(port=self.ssh_port, timeout=self.connect_timeout,
                                keepalive_interval=self.keepalive_interval,
                                keepalive_max_missed=self.keepalive_max_missed,
                                proxy_protocol=self.proxy_protocol, host_key_policy=self.host_key_policy,
                                forget_command=self.forget_command, algorithms=self.algorithms)


class GatewayAvatar(ConchUser):
    """A logged-in user: the login and the connection to the container."""

    def __init__(self, login: GatewayLogin, upstream: UpstreamConnection) -> None:
        super().__init__()
        self.login = login
        self.upstream = upstream
        self.conn: DownstreamConnection | None = None  # set by the connection service
        upstream.on_lost = self._upstreamLost

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        # tcpip-forward (ssh -R) among others: the gateway forwards nothing back.
        return 0

    def logout(self) -> None:
        self.upstream.on_lost = None
        self.upstream.close()

    def _upstreamLost(self) -> None:
        ssh = self.conn.transport if self.conn is not None else None
        if ssh is not None and ssh.transport.connected:  # type: ignore[union-attr]  # set by makeConnection
            ssh.sendDisconnect(ssh_transport.DISCONNECT_CONNECTION_LOST,
                               f"the connection to container {self.login.container.id} closed".encode())


@implementer(IRealm)
class UpstreamRealm:
    """
    Turns an accepted key into an avatar connected to its container;
    C{client} is the user's connection, for the PROXY protocol header.
    """

    def __init__(self, connector: UpstreamConnector, client: ClientAddresses | None = None) -> None:
        self.connector = connector
        self.client = client

    def requestAvatar(self, avatarId: GatewayLogin, mind: object,  # type: ignore[override]  # the checker's id
                      *interfaces: Any) -> Deferred[Any]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH logins are served")
        if self.client is None:
            connecting = self.connector.connect(avatarId.container, avatarId.target.user)
        else:
            connecting = self.connector.connect(avatarId.container, avatarId.target.user, self.client)

        def ready(upstream: UpstreamConnection) -> tuple[Any, GatewayAvatar, Any]:
            avatar = GatewayAvatar(avatarId, upstream)
            return IConchUser, avatar, avatar.logout

        return connecting.addCallback(ready)


@implementer(IAdmittedOnFirstBytes)
class GatewayServerTransport(ServerTransportCrypto, ssh_transport.SSHServerTransport):
    """
    The user's SSH transport: login grace time from the first byte, dead-peer
    keepalives after login.  It copes with being handed a connection by the
    sniffer (C{makeConnection}, then the bytes already read): it speaks first
    in C{connectionMade} and parses the client's version line whenever it comes.
    """

    _log = conch_logger()
    factory: GatewaySSHFactory
    ourVersionString = VERSION_STRING
    # Ciphers, MACs, key exchanges, strict kex and the packet framing:
    # ServerTransportCrypto (edd_gateway.ssh.transport_crypto).
    supportedCompressions = [b"none"]
    #: Given by an C{--ssh-listen haproxy:} listener (L{admit_on_first_bytes}):
    #: admission waits for the client's first bytes, the first that come
    #: after the PROXY header (before it the peer is the balancer).
    _admit_later: Callable[[Any], bool] | None = None

    def __init__(self) -> None:
        self._grace: IDelayedCall | None = None
        self.keepalive: Keepalive | None = None
        #: What became of the connection, for metrics and the access log:
        #: closed (before any login), refused, timeout, relayed.
        self.outcome = "closed"
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = 0.0

    def connectionMade(self) -> None:
        self.started = self.factory.clock.seconds()
        set_no_delay(self.transport)
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(True)
        self._grace = self.factory.clock.callLater(self.factory.settings.login_grace_time, self._graceExpired)
        super().connectionMade()

    def admit_on_first_bytes(self, admit: Callable[[Any], bool]) -> None:
        self._admit_later = admit

    def dataReceived(self, data: bytes) -> None:
        # Wire bytes up; packet payloads down (see sendPacket): close enough
        # for the access log and byte counters, and free of a write wrapper.
        self.bytes_up += len(data)
        if self._admit_later is not None:
            admit, self._admit_later = self._admit_later, None
            if not admit(self.transport):
                return
        if self.keepalive is not None:
            self.keepalive.heard()
        super().dataReceived(data)

    def sendPacket(self, messageType: int, payload: bytes, tail: Buffer = b"") -> None:
        self.bytes_down += len(payload) + len(tail) + 1
        super().sendPacket(messageType, payload, tail)

    def setService(self, service: Any) -> None:
        super().setService(service)
        if isinstance(service, GatewayUserAuthServer) and self.factory.settings.proxy_protocol is not None:
            # Conch hands the realm no connection; the PROXY header sent to
            # the container must name this one's client.
            service.portal = self.factory.portal_for((self.transport.getPeer(), self.transport.getHost()))
        if isinstance(service, DownstreamConnection):
            self.outcome = "relayed"
            self._stopGrace()
            settings = self.factory.settings
            self.keepalive = Keepalive(
                self.factory.clock, settings.keepalive_interval, settings.keepalive_max_missed,
                probe=lambda: probe_connection(service), dead=lambda: abandon(self, b"keepalive timeout"),
            )
            self.keepalive.start()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        pass  # the client's goodbye ("disconnected by user") is no error

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Conch's SSHServerTransport._keySetup calls this after the first
        # NEWKEYS with server-sig-algs set to supportedPublicKeys, the
        # host-key algorithms; users' keys are verified with others.
        super().sendExtInfo(server_sig_algs(extensions, self.factory.signatures.signature_algorithms))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopGrace()
        if self.keepalive is not None:
            self.keepalive.stop()
        super().connectionLost(reason)
        if self.outcome == "refused" and self.transport is not None:
            # One strike per connection, however many keys its agent offered.
            self.factory.admission.ssh_login_refused(getattr(self.transport.getPeer(), "host", ""))
        observer = self.factory.observer
        if observer is not None:
            observer.ssh_session(self._record())

    def _record(self) -> SSHSessionRecord:
        login = getattr(getattr(self, "avatar", None), "login", None)
        peer = self.transport.getPeer() if self.transport is not None else None
        return SSHSessionRecord(
            client_ip=getattr(peer, "host", "-"),
            username=login.target.user if login is not None else "-",
            container=login.container.id if login is not None else "-",
            backend=(f"{self.factory.addressing.host(login.container)}:{self.factory.settings.ssh_port}"
                     if login is not None else "-"),
            outcome=self.outcome, bytes_up=self.bytes_up, bytes_down=self.bytes_down,
            started=self.started, ended=self.factory.clock.seconds(),
        )

    def _graceExpired(self) -> None:
        self._grace = None
        self.outcome = "timeout"
        peer = self.transport.getPeer()
        _log.info("ssh: {client} did not log in within {grace:g} s; closing",
                  client=describe_peer(peer), grace=self.factory.settings.login_grace_time)
        self.factory.admission.hit("ssh-login-grace", getattr(peer, "host", ""))
        abandon(self, b"login grace time exceeded")

    def _stopGrace(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None


class GatewaySSHFactory(ssh_factory.SSHFactory):
    """
    Serves SSH logins to containers.

    @param directory: the containers and their owners' keys.
    @param pins: the containers' pinned host keys.
    @param host_keys: the gateway's host keys (private).
    @param client_key: the key the gateway logs in to containers with.
    @param reactor: connects upstream and keeps time.
    @param addressing: where containers' sshd are dialled.

    With C{pin-per-run}, the factory's L{RunWatch} observes C{directory}.
    """

    protocol = GatewayServerTransport
    services = {b"ssh-userauth": GatewayUserAuthServer, b"ssh-connection": DownstreamConnection}
    noisy = False
    _log = conch_logger()

    def __init__(self, directory: ContainerDirectory, pins: HostKeyPins, host_keys: Sequence[Key],
                 client_key: Key, reactor: Any, settings: SSHSettings = SSHSettings(),
                 addressing: ContainerAddressing = ContainerAddressing(), *,
                 observer: GatewayObserver | None = None, admission: Any = NO_ADMISSION) -> None:
        if not host_keys:
            raise ValueError("the SSH side needs at least one host key")
        self.directory = directory
        self.settings = settings
        self.addressing = addressing
        self.clock = reactor
        #: Told of every login attempt and every connection that ends.
        self.observer = observer
        #: Told of refused logins and login-grace hits (L{edd_gateway.front.admission.Admission}).
        self.admission = admission
        self.privateKeys = {key.sshType(): key for key in host_keys}
        self.publicKeys = {kind: key.public() for kind, key in self.privateKeys.items()}
        # No moduli file: no Diffie-Hellman group exchange is offered
        # (edd_gateway.ssh.algorithms.KEX).
        self.primes = None
        self.runs = RunWatch(directory, pins) if settings.host_key_policy is HostKeyPolicy.PIN_PER_RUN else None
        self.connector = UpstreamConnector(reactor, client_key, pins, settings.upstream(), addressing=addressing,
                                           runs=self.runs)
        #: The signature algorithms accepted from users and offered for host keys.
        self.signatures = SignaturePolicy(settings.allow_sha1_rsa)
        self.checker = ContainerKeyChecker(directory, addressing, self.signatures)
        self.portal = Portal(UpstreamRealm(self.connector), [self.checker])

    def portal_for(self, client: ClientAddresses) -> Portal:
        """A portal whose logins connect to containers on behalf of C{client} (for the PROXY header)."""
        return Portal(UpstreamRealm(self.connector, client), [self.checker])

    def buildProtocol(self, addr: IAddress) -> GatewayServerTransport:  # type: ignore[override]  # a port's peer
        # SSHFactory's own logs a line per connection about the moduli file.
        ssh = self.protocol()
        ssh.factory = self
        ssh.supportedPublicKeys = self.signatures.host_key_algorithms(self.privateKeys.values())
        ssh.useAlgorithms(self.settings.algorithms)
        return ssh


def build_ssh_factory(directory: ContainerDirectory, pins: HostKeyPins, *, host_key_path: str,
                      client_key_path: str, reactor: Any, rsa_host_key_path: str | None = None,
                      settings: SSHSettings = SSHSettings(),
                      addressing: ContainerAddressing = ContainerAddressing(),
                      observer: GatewayObserver | None = None,
                      admission: Any = NO_ADMISSION) -> GatewaySSHFactory:
    """
    The SSH protocol factory for C{--ssh-listen} endpoints and for the
    sniffer's C{Verdict.SSH} handler (one factory can serve both).  Key files
    missing are generated (Ed25519; the client key's public half is written
    beside it as C{.pub}); unusable ones raise L{KeyFileError}.
    """
    host_keys = load_host_keys(host_key_path, rsa_host_key_path)
    client_key = load_or_create_key(client_key_path, "ed25519", comment="edd-gateway", write_public=True)
    return GatewaySSHFactory(directory, pins, host_keys, client_key, reactor, settings, addressing,
                             observer=observer, admission=admission)


__all__ = ["DEFAULT_CLIENT_KEY", "DEFAULT_HOST_KEY", "GatewayAvatar", "GatewayServerTransport", "GatewaySSHFactory",
           "SSHSettings", "UpstreamRealm", "build_ssh_factory"]
