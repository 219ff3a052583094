"""
Test doubles for the SSH side, shipped in the package as L{edd_gateway.http.testing}
is: keys made once per run (Ed25519 by name, and one of every user key type the
compute service accepts), containers, an SSH transport that records the packets a
service sends (the service's view of the wire), and channel bookkeeping as Conch
does it on open.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from edd_gateway.ssh.factory import SSHSettings
from edd_gateway.state.model import RUNNING, Container, ContainerDirectory, ContainerSnapshot


@functools.lru_cache(maxsize=None)
def key(name: str) -> Key:
    """An Ed25519 key, the same one for the same name during a run."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return Key(ed25519.Ed25519PrivateKey.generate())


#: Every user key type the compute service accepts, with the signature
#: algorithms the gateway verifies for it by default.
USER_KEYS = {
    "ed25519": (b"ssh-ed25519",),
    "ecdsa-p256": (b"ecdsa-sha2-nistp256",),
    "ecdsa-p384": (b"ecdsa-sha2-nistp384",),
    "ecdsa-p521": (b"ecdsa-sha2-nistp521",),
    "rsa": (b"rsa-sha2-256", b"rsa-sha2-512"),
}


@functools.lru_cache(maxsize=None)
def typed_key(kind: str) -> Key:
    """A private key of C{kind} (a L{USER_KEYS} name, or C{dsa}), the same one during a run."""
    curves: dict[str, Callable[[], ec.EllipticCurve]] = {
        "ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1, "ecdsa-p521": ec.SECP521R1}
    if kind in curves:
        return Key(ec.generate_private_key(curves[kind]()))
    if kind == "rsa":
        return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if kind == "dsa":
        return Key(dsa.generate_private_key(key_size=1024))
    assert kind == "ed25519"
    return Key(ed25519.Ed25519PrivateKey.generate())


def line_of(private: Key) -> str:
    return private.public().toString("openssh", comment="someone@laptop").decode()


def public_line(name: str, comment: str = "someone@laptop") -> str:
    return key(name).public().toString("openssh", comment=comment).decode()


def container(cid: str = "abc123", *, owner_keys: tuple[str, ...] = ("alice",), status: str = RUNNING,
              ssh_enabled: bool = True, external_ip: str | None = "127.0.0.1") -> Container:
    return Container(id=cid, user_id="u-" + cid, status=status, external_ip=external_ip,
                     ssh_enabled=ssh_enabled, ssh_keys=tuple(public_line(name) for name in owner_keys))


def directory(*containers: Container, ready: bool = True) -> ContainerDirectory:
    return ContainerDirectory(ContainerSnapshot({c.id: c for c in containers}, ready=ready))


class RecordingSSH:
    """
    What an SSH service sees of its transport: C{sendPacket} records
    C{(message number, payload)}; C{sendDisconnect} records the reason.
    """

    def __init__(self, factory: Any = None, peer: tuple[str, int] = ("203.0.113.7", 50123)) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.disconnected: tuple[int, bytes] | None = None
        self.factory = factory
        self.sessionID = b"session-id"
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))

    def sendPacket(self, message: int, payload: bytes, tail: bytes | memoryview = b"") -> None:
        # The relay passes channel data apart from its header (see
        # TransportCrypto.sendPacket): recorded as the packet it becomes.
        self.packets.append((message, payload + tail))

    def sendDisconnect(self, code: int, description: bytes) -> None:
        self.disconnected = (code, description)
        self.transport.loseConnection()

    def isEncrypted(self, direction: str = "out") -> bool:
        return True

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def take(self) -> list[tuple[int, bytes]]:
        packets, self.packets = self.packets, []
        return packets


class FakeFactory:
    """The attributes of GatewaySSHFactory that the services read."""

    def __init__(self, containers: ContainerDirectory, portal: Any = None,
                 settings: SSHSettings = SSHSettings()) -> None:
        self.directory = containers
        self.portal = portal
        self.settings = settings
        self.clock = Clock()
        self.services: dict[bytes, Any] = {}

    def getService(self, transport: Any, name: bytes) -> Any:
        return self.services.get(name)


def attach(service: Any, ssh: RecordingSSH) -> Any:
    """Start C{service} on C{ssh}, as SSHTransportBase.setService does."""
    service.transport = ssh
    service.serviceStarted()
    return service


def open_channel(conn: Any, channel: Any, remote_id: int, window: int = 1 << 20, max_packet: int = 32768) -> int:
    """Register an open channel on C{conn} the way Conch does on confirmation; its local id."""
    local_id = conn.localChannelID
    conn.localChannelID += 1
    channel.id = local_id
    channel.conn = conn
    conn.channels[local_id] = channel
    conn.channelsToRemoteChannel[channel] = remote_id
    conn.localToRemoteChannel[local_id] = remote_id
    channel.remoteWindowLeft = window
    channel.remoteMaxPacket = max_packet
    return local_id


def channel_payloads(packets: list[tuple[int, bytes]], message: int) -> list[bytes]:
    """The payloads of C{message} packets, after their channel number."""
    return [payload[4:] for kind, payload in packets if kind == message]


def sent_data(packets: list[tuple[int, bytes]]) -> bytes:
    from twisted.conch.ssh.connection import MSG_CHANNEL_DATA

    return b"".join(getNS(payload)[0] for payload in channel_payloads(packets, MSG_CHANNEL_DATA))


def kinds(packets: list[tuple[int, bytes]]) -> list[int]:
    return [kind for kind, _ in packets]


def request_packet(local_id: int, name: bytes, want_reply: bool, data: bytes = b"") -> bytes:
    from twisted.conch.ssh.common import NS

    return struct.pack(">L", local_id) + NS(name) + (b"\x01" if want_reply else b"\x00") + data
