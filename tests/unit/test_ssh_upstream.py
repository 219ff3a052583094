"""
The gateway's connection to a container's sshd, on a memory reactor: where
it connects, how every failure becomes a message for the user, trust on
first use of the container's host key, and the client key as its only
credential.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import connection as c
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.service import SSHService
from twisted.conch.ssh.transport import MSG_EXT_INFO, MSG_NEWKEYS, SSHServerTransport, SSHTransportBase
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.auth import LoginRefused, fingerprint
from edd_gateway.ssh.hostkey import public_text
from edd_gateway.ssh.pins import HostKeyPins, MemoryHostKeyPins
from edd_gateway.ssh.upstream import UpstreamConnector, UpstreamSettings
from edd_gateway.ssh.upstream_protocol import UpstreamAuth, UpstreamConnection
from edd_gateway.state.localfile import LocalPinStore

from edd_gateway.ssh.testing import RecordingSSH, attach, container, key


class BrokenPins(MemoryHostKeyPins):
    def get_pin(self, container_id: str) -> Deferred[Any]:
        return fail(OSError("database gone"))


class ConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pins = MemoryHostKeyPins()
        self.connector = UpstreamConnector(self.reactor, key("gateway-client"), self.pins,
                                           UpstreamSettings(port=2200, timeout=10.0))

    def connect(self, cid: str = "abc123", ip: str = "10.42.0.7") -> Deferred[Any]:
        return self.connector.connect(container(cid, external_ip=ip), "root")

    def transport(self) -> Any:
        """The UpstreamTransport of the last connection, connected to a StringTransport."""
        wrapping = self.reactor.tcpClients[-1][2].buildProtocol(IPv4Address("TCP", "10.42.0.7", 2200))
        wrapping.makeConnection(StringTransport())
        return wrapping._wrappedProtocol

    def test_pin_stores_fit_the_interface(self) -> None:
        self.assertIsInstance(MemoryHostKeyPins(), HostKeyPins)
        self.assertIsInstance(LocalPinStore(), HostKeyPins)

    def test_endpoint_by_address_kind(self) -> None:
        self.assertIsInstance(self.connector.endpoint("10.0.0.1"), TCP4ClientEndpoint)
        self.assertIsInstance(self.connector.endpoint("fd00::7"), TCP6ClientEndpoint)
        self.assertIsInstance(self.connector.endpoint("box.internal"), HostnameEndpoint)

    def test_connects_to_the_external_ip_and_port(self) -> None:
        self.connect()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.42.0.7", 2200))

    def test_refused(self) -> None:
        result = self.connect()
        self.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(result, LoginRefused)
        self.assertEqual(str(failure.value), "container abc123 is not accepting SSH connections (connection refused)")

    def test_no_answer_in_time(self) -> None:
        result = self.connect()
        self.reactor.advance(10)
        failure = self.failureResultOf(result, LoginRefused)
        self.assertEqual(str(failure.value), "container abc123 did not answer SSH within 10 s")

    def test_handshake_stalls_past_the_deadline(self) -> None:
        result = self.connect()
        ssh = self.transport()
        self.reactor.advance(10)
        self.assertTrue(ssh.transport.disconnecting)
        self.failureResultOf(result, LoginRefused)
        ssh.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_abandons(self) -> None:
        result = self.connect()
        ssh = self.transport()
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertTrue(ssh.transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_first_host_key_is_pinned(self) -> None:
        self.connect()
        blob = key("container-host").public().blob()
        self.successResultOf(self.transport().verifyHostKey(blob, b"md5"))
        pin = self.pins.pins["abc123"]
        self.assertEqual(pin.host_key, public_text(key("container-host")))

    def test_pinned_key_is_accepted(self) -> None:
        self.pins.set_pin("abc123", public_text(key("container-host"), "any comment"))
        self.connect()
        self.successResultOf(self.transport().verifyHostKey(key("container-host").public().blob(), b"md5"))

    def test_changed_host_key_is_refused(self) -> None:
        self.pins.set_pin("abc123", public_text(key("container-host")))
        result = self.connect()
        ssh = self.transport()
        self.failureResultOf(ssh.verifyHostKey(key("impostor").public().blob(), b"md5"), LoginRefused)
        ssh.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(result, LoginRefused)
        self.assertIn("presented a different SSH host key", str(failure.value))
        self.assertIn("python -m edd_gateway forget-host-key abc123", str(failure.value))
        self.assertEqual(self.pins.pins["abc123"].host_key, public_text(key("container-host")))

    def test_pin_store_failure(self) -> None:
        self.connector.pins = BrokenPins()
        result = self.connect()
        ssh = self.transport()
        self.failureResultOf(ssh.verifyHostKey(key("container-host").public().blob(), b"md5"))
        ssh.connectionLost(Failure(ConnectionDone()))
        self.assertIn("cannot check the host key", str(self.failureResultOf(result, LoginRefused).value))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_closed_during_login_says_what_the_container_said(self) -> None:
        result = self.connect()
        ssh = self.transport()
        ssh.receiveError(2, b"Too many authentication failures")
        ssh.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(str(self.failureResultOf(result, LoginRefused).value),
                         "container abc123 closed the SSH connection during login (Too many authentication failures)")

    def test_only_the_client_key_is_offered(self) -> None:
        result = self.connect()
        ssh = self.transport()
        auth = UpstreamAuth(ssh.attempt, UpstreamConnection(ssh.attempt))
        self.assertEqual(auth.user, b"root")
        self.assertEqual(auth.getPublicKey(), key("gateway-client").public())
        self.assertEqual(self.successResultOf(auth.getPrivateKey()), key("gateway-client"))
        self.assertFalse(auth.auth_password())
        self.assertFalse(auth.auth_keyboard_interactive())
        self.assertIsNone(auth.getPublicKey())
        ssh.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(str(self.failureResultOf(result, LoginRefused).value),
                         "container abc123 did not accept the gateway's key for user root")

    def test_ready_connection_and_its_loss(self) -> None:
        result = self.connect()
        ssh = self.transport()
        upstream = UpstreamConnection(ssh.attempt)
        ssh.setService(upstream)
        self.assertIs(self.successResultOf(result), upstream)
        lost: list[bool] = []
        upstream.on_lost = lambda: lost.append(True)
        ssh.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lost, [True])

    def test_keepalive_gives_up_a_silent_container(self) -> None:
        self.connect()
        ssh = self.transport()
        ssh.setService(UpstreamConnection(ssh.attempt))
        for _ in range(3):
            self.reactor.advance(30)
        self.assertFalse(ssh.transport.disconnecting)
        self.reactor.advance(30)
        self.assertTrue(ssh.transport.disconnecting)

    def test_channels_from_the_container_are_refused(self) -> None:
        recorded = RecordingSSH()
        self.connect()
        upstream = attach(UpstreamConnection(self.transport().attempt), recorded)
        upstream.ssh_CHANNEL_OPEN(NS(b"forwarded-tcpip") + struct.pack(">3L", 4, 1000, 1000))
        [(kind, payload)] = recorded.take()
        self.assertEqual(kind, c.MSG_CHANNEL_OPEN_FAILURE)
        self.assertEqual(struct.unpack(">2L", payload[:8]), (4, c.OPEN_ADMINISTRATIVELY_PROHIBITED))

    def test_fingerprint_logged_when_pinning(self) -> None:
        from twisted.logger import capturedLogs

        self.connect()
        with capturedLogs() as events:
            self.transport().verifyHostKey(key("container-host").public().blob(), b"md5")
        self.assertIn(fingerprint(key("container-host").public().blob()),
                      [e.get("fingerprint") for e in events])


class OpenSSHLikeServer(SSHServerTransport):
    """
    Conch's server, sending its EXT_INFO as OpenSSH's sshd does: right after
    its NEWKEYS and under the new keys, without waiting for the client's
    NEWKEYS (Conch's own server queues it until then).  Records what it sends.
    """

    def __init__(self) -> None:
        self.sent: list[int] = []

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.sent.append(messageType)
        super().sendPacket(messageType, payload)

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        SSHTransportBase._keySetup(self, sharedSecret, exchangeHash)  # sends NEWKEYS
        old, self.currentEncryptions = self.currentEncryptions, self.nextEncryptions
        state, self._keyExchangeState = self._keyExchangeState, self._KEY_EXCHANGE_NONE
        self.sendExtInfo([(b"server-sig-algs", b",".join(self.supportedPublicKeys))])
        self.currentEncryptions, self._keyExchangeState = old, state


class RecordingUserAuth(SSHService):
    """The container's ssh-userauth: records the client's requests."""

    name = b"ssh-userauth"

    def serviceStarted(self) -> None:
        self.received: list[int] = []

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.received.append(messageNum)


class ContainerSSHFactory(SSHFactory):
    protocol = OpenSSHLikeServer
    publicKeys = {b"ssh-ed25519": key("container-host").public()}
    privateKeys = {b"ssh-ed25519": key("container-host")}
    primes = None  # fixed groups and curves only, as GatewaySSHFactory

    def getService(self, transport: Any, service: bytes) -> Any:
        return {b"ssh-userauth": RecordingUserAuth}.get(service)


class SlowPins(MemoryHostKeyPins):
    """Pins whose reads wait for the test to answer them, as PostgreSQL's wait for a query."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[Deferred[Any]] = []

    def get_pin(self, container_id: str) -> Deferred[Any]:
        self.reads.append(Deferred())
        return self.reads[-1]


class SlowHostKeyCheckTests(SynchronousTestCase):
    """The key exchange with a real (Conch) sshd while the pin store is slow to answer."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pins = SlowPins()
        connector = UpstreamConnector(self.reactor, key("gateway-client"), self.pins,
                                      UpstreamSettings(port=2200, timeout=10.0))
        connector.connect(container("abc123", external_ip="10.42.0.7"), "root")

    def test_packets_after_newkeys_wait_for_the_host_key_check(self) -> None:
        wrapping = self.reactor.tcpClients[-1][2].buildProtocol(IPv4Address("TCP", "10.42.0.7", 2200))
        ssh = wrapping._wrappedProtocol
        server = ContainerSSHFactory().buildProtocol(IPv4Address("TCP", "10.42.0.99", 50000))
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             wrapping, iosim.FakeTransport(wrapping, isServer=False), greet=False)
        pump.flush()
        # The sshd's NEWKEYS and the EXT_INFO under the new keys reached us
        # while our host key check still waits for the pin store.
        self.assertEqual(server.sent[-2:], [MSG_NEWKEYS, MSG_EXT_INFO])
        self.assertEqual(len(self.pins.reads), 1)
        self.pins.reads[0].callback(None)
        pump.flush()
        self.assertFalse(ssh.transport.disconnecting)
        self.assertIsInstance(ssh.service, UpstreamAuth)
        self.assertEqual(server.service.received, [MSG_USERAUTH_REQUEST])
        self.assertEqual(self.pins.pins["abc123"].host_key, public_text(key("container-host")))
