"""
The wiring: the factory serves connections the sniffer hands over mid-way,
offers only its own host keys and fixed-group key exchanges, enforces the
login grace time from the first byte, keeps the same host key across
restarts; keepalives give up silent peers.
"""

from __future__ import annotations

import os
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import DISCONNECT_SERVICE_NOT_AVAILABLE, SSHClientTransport
from twisted.conch.ssh.userauth import MSG_USERAUTH_FAILURE, MSG_USERAUTH_PK_OK, SSHUserAuthClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.ssh import algorithms
from edd_gateway.ssh.auth import GatewayLogin
from edd_gateway.ssh.factory import GatewayAvatar, GatewaySSHFactory, SSHSettings, UpstreamRealm, build_ssh_factory
from edd_gateway.ssh.keepalive import Keepalive
from edd_gateway.ssh.pins import MemoryHostKeyPins
from edd_gateway.ssh.username import SSHTarget

from edd_gateway.ssh.testing import container, directory, key
from edd_gateway.ssh.testing import line_of, typed_key

PEER = IPv4Address("TCP", "198.51.100.9", 40000)


class KeepaliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.probes: list[float] = []
        self.dead: list[float] = []
        self.keepalive = Keepalive(self.clock, 10, 3, probe=lambda: self.probes.append(self.clock.seconds()),
                                   dead=lambda: self.dead.append(self.clock.seconds()))
        self.keepalive.start()

    def advance(self, steps: int) -> None:
        for _ in range(steps):
            self.clock.advance(10)

    def test_silent_peer_probed_then_given_up(self) -> None:
        self.advance(4)
        self.assertEqual(self.probes, [10, 20, 30])
        self.assertEqual(self.dead, [40])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_keep_it_alive(self) -> None:
        for _ in range(10):
            self.keepalive.heard()
            self.clock.advance(10)
        self.assertEqual(self.dead, [])
        self.assertEqual(self.probes, [])

    def test_a_late_answer_resets_the_count(self) -> None:
        self.advance(3)
        self.keepalive.heard()
        self.advance(3)
        self.assertEqual(self.dead, [])
        self.assertEqual(self.keepalive.missed, 2)

    def test_stop(self) -> None:
        self.keepalive.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_interval_zero_is_off(self) -> None:
        off = Keepalive(self.clock, 0, 3, probe=lambda: None, dead=lambda: None)
        self.keepalive.stop()
        off.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FactoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.settings = SSHSettings(login_grace_time=20)
        self.factory = GatewaySSHFactory(directory(container()), MemoryHostKeyPins(), [key("host")],
                                         key("client"), self.reactor, self.settings)
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def test_needs_a_host_key(self) -> None:
        self.assertRaises(ValueError, GatewaySSHFactory, directory(), MemoryHostKeyPins(), [], key("client"),
                          self.reactor)

    def test_rsa_host_key_signs_with_sha2_only(self) -> None:
        keys = [key("host"), typed_key("rsa")]
        default = GatewaySSHFactory(directory(), MemoryHostKeyPins(), keys, key("client"), self.reactor)
        self.assertEqual(default.buildProtocol(PEER).supportedPublicKeys,
                         [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"])
        allowing = GatewaySSHFactory(directory(), MemoryHostKeyPins(), keys, key("client"), self.reactor,
                                     SSHSettings(allow_sha1_rsa=True))
        self.assertEqual(allowing.buildProtocol(PEER).supportedPublicKeys,
                         [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"])

    def test_offers_its_keys_and_the_gateway_algorithms(self) -> None:
        ssh = self.factory.buildProtocol(PEER)
        self.assertEqual(ssh.supportedPublicKeys, [b"ssh-ed25519"])
        # The lists themselves: tests/unit/test_ssh_crypto.py.
        self.assertEqual(ssh.supportedKeyExchanges, list(algorithms.KEX))
        self.assertEqual(ssh.supportedCiphers, list(algorithms.CIPHERS))
        self.assertEqual(ssh.supportedMACs, list(algorithms.MACS))
        self.assertEqual(ssh.supportedCompressions, [b"none"])

    def sniffed(self, first: bytes) -> tuple[Any, StringTransport]:
        sniffer = SniffingFactory({Verdict.SSH: self.factory}, clock=self.reactor, listener_name="test",
                                  default=Verdict.SSH)
        protocol = sniffer.buildProtocol(PEER)
        wire = StringTransport(peerAddress=PEER)
        wire.protocol = protocol  # type: ignore[attr-defined]
        protocol.makeConnection(wire)
        if first:
            protocol.dataReceived(first)
        else:
            self.reactor.advance(sniffer.timeout)
        return wire.protocol, wire  # type: ignore[attr-defined]

    def test_handed_over_by_the_sniffer(self) -> None:
        ssh, wire = self.sniffed(b"SSH-2.0-OpenSSH_9.2\r\n")
        # The product, without the gateway's or Twisted's version.
        self.assertTrue(wire.value().startswith(b"SSH-2.0-edd_gateway\r\n"))
        self.assertEqual(ssh.otherVersionString, b"SSH-2.0-OpenSSH_9.2")

    def test_silent_client_gets_the_server_version(self) -> None:
        ssh, wire = self.sniffed(b"")
        self.assertTrue(wire.value().startswith(b"SSH-2.0-"))
        self.assertFalse(ssh.gotVersion)

    def test_login_grace_time_covers_the_key_exchange(self) -> None:
        ssh, wire = self.sniffed(b"SSH-2.0-OpenSSH_9.2\r\n")
        self.reactor.advance(19)
        self.assertFalse(wire.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(wire.disconnecting)
        self.assertIn(b"login grace time exceeded", wire.value())
        ssh.connectionLost(None)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_same_host_key_after_a_restart(self) -> None:
        workdir = self.mktemp()
        paths = dict(host_key_path=os.path.join(workdir, "host"), client_key_path=os.path.join(workdir, "client"))
        first = build_ssh_factory(directory(), MemoryHostKeyPins(), reactor=self.reactor, **paths)
        again = build_ssh_factory(directory(), MemoryHostKeyPins(), reactor=self.reactor, **paths)
        self.assertEqual(first.publicKeys, again.publicKeys)
        self.assertEqual(first.connector.client_key, again.connector.client_key)
        self.assertTrue(os.path.exists(paths["client_key_path"] + ".pub"))


    def test_session_record_names_the_address_dialled(self) -> None:
        from dataclasses import replace

        from edd_gateway.routes.containers import ContainerAddressing

        factory = GatewaySSHFactory(directory(container()), MemoryHostKeyPins(), [key("host")], key("client"),
                                    self.reactor, SSHSettings(ssh_port=2022), ContainerAddressing("service-dns"))
        self.assertEqual(factory.checker.addressing, factory.addressing)
        self.assertIs(factory.connector.addressing, factory.addressing)
        ssh = factory.buildProtocol(PEER)
        ssh.transport = StringTransport(peerAddress=PEER)
        target = replace(container(external_ip=None), namespace="compute-u1-abc123")
        ssh.avatar = SimpleNamespace(login=GatewayLogin(SSHTarget("abc123", "root"), target, "SHA256:x"))
        self.assertEqual(ssh._record().backend, "lb.compute-u1-abc123.svc.cluster.local:2022")


class ConchUserAuth(SSHUserAuthClient):
    """A client's ssh-userauth offering one key; records every packet it receives."""

    def __init__(self, user: bytes, private: Key) -> None:
        super().__init__(user, SSHConnection())
        self.private = private
        self.received: list[tuple[int, bytes]] = []

    def packetReceived(self, messageNum: int, packet: bytes) -> Any:
        self.received.append((messageNum, packet))
        return super().packetReceived(messageNum, packet)

    def getPublicKey(self) -> Key | None:
        return None if self.triedPublicKeys else self.private.public()

    def getPrivateKey(self) -> Any:
        return succeed(self.private)


class ConchClient(SSHClientTransport):
    """A raw Conch client: trusts any host key, asks for ssh-userauth, records the server's goodbye."""

    def __init__(self, auth: ConchUserAuth) -> None:
        self.auth = auth
        self.goodbye: tuple[int, bytes] | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
        return succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.goodbye = (reasonCode, description)


class Strikes:
    def __init__(self) -> None:
        self.hosts: list[str] = []

    def ssh_login_refused(self, host: str) -> None:
        self.hosts.append(host)


class ConchClientTests(SynchronousTestCase):
    """A real (Conch) client against the gateway's transport, in memory."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        owned = (line_of(key("alice")),)
        self.containers = directory(replace(container("abc123"), ssh_keys=owned),
                                    replace(container("stop01", status="stopped"), ssh_keys=owned))

    def login(self, user: bytes, private: Key, settings: SSHSettings = SSHSettings(),
              host_keys: tuple[Key, ...] = ()) -> ConchClient:
        factory = GatewaySSHFactory(self.containers, MemoryHostKeyPins(), list(host_keys) or [key("host")],
                                    key("client"), self.reactor, settings)
        factory.admission = self.strikes = Strikes()
        server = factory.buildProtocol(PEER)
        client = ConchClient(ConchUserAuth(user, private))
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True, peerAddress=PEER),
                             client, iosim.FakeTransport(client, isServer=False), greet=False)
        pump.flush()
        self.addCleanup(server.connectionLost, None)
        return client

    def test_server_sig_algs_lists_the_verified_algorithms(self) -> None:
        expected = (b"ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,"
                    b"rsa-sha2-512,rsa-sha2-256")
        for host_keys in ((key("host"),), (key("host"), typed_key("rsa"))):
            client = self.login(b"abc123", key("alice"), host_keys=host_keys)
            self.assertEqual(client.peerExtensions, {b"server-sig-algs": expected})
        allowing = self.login(b"abc123", key("alice"), SSHSettings(allow_sha1_rsa=True))
        self.assertEqual(allowing.peerExtensions, {b"server-sig-algs": expected + b",ssh-rsa"})

    def test_banner(self) -> None:
        self.assertEqual(self.login(b"abc123", key("alice")).otherVersionString, b"SSH-2.0-edd_gateway")

    def test_unknown_stopped_and_another_key_get_the_same_bytes(self) -> None:
        seen = {}
        for user in (b"nope99", b"stop01", b"abc123"):
            client = self.login(user, key("mallory"))
            seen[user] = client.auth.received
            self.assertIsNone(client.goodbye, user)
            self.assertEqual(self.strikes.hosts, [PEER.host], user)
        self.assertEqual(seen[b"nope99"], seen[b"stop01"])
        self.assertEqual(seen[b"nope99"], seen[b"abc123"])
        # none, then the query, then the signature.
        self.assertEqual([kind for kind, _ in seen[b"nope99"]], [MSG_USERAUTH_FAILURE, MSG_USERAUTH_PK_OK,
                                                                 MSG_USERAUTH_FAILURE])

    def test_the_owner_is_told(self) -> None:
        client = self.login(b"stop01", key("alice"))
        self.assertEqual([kind for kind, _ in client.auth.received], [MSG_USERAUTH_FAILURE, MSG_USERAUTH_PK_OK])
        self.assertEqual(client.goodbye, (DISCONNECT_SERVICE_NOT_AVAILABLE, b"container stop01 is stopped"))
        self.assertEqual(self.strikes.hosts, [PEER.host])


class RealmTests(SynchronousTestCase):
    def test_avatar_holds_the_container_connection(self) -> None:
        upstream = SimpleNamespace(on_lost=None, closed=False)
        upstream.close = lambda: setattr(upstream, "closed", True)
        asked: list[tuple[str, str]] = []
        connector = SimpleNamespace(connect=lambda c, user: asked.append((c.id, user)) or succeed(upstream))
        login = GatewayLogin(SSHTarget("abc123", "www"), container(), "SHA256:x")
        interface, avatar, logout = self.successResultOf(
            UpstreamRealm(connector).requestAvatar(login, None, IConchUser))  # type: ignore[arg-type]
        self.assertEqual((interface, asked), (IConchUser, [("abc123", "www")]))
        self.assertIsInstance(avatar, GatewayAvatar)
        self.assertEqual(avatar.gotGlobalRequest(b"tcpip-forward", b""), 0)
        logout()
        self.assertTrue(upstream.closed)
        self.assertIsNone(upstream.on_lost)
