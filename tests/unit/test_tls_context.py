"""
Tests for L{edd_gateway.tls.context}: in-memory handshakes (iosim) between the
terminating factory using the connection creator, given the certificate the
listener would choose, and pyOpenSSL clients.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from edd_gateway.tls.context import (
    TLS12_CIPHERS,
    chosen_certificate,
    negotiated_server_name,
    server_connection_creator,
)
from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory
from edd_gateway.tls.listener import TLSStats
from edd_gateway.tls.store import CertificateStore
from edd_gateway.tls.terminated import TerminatorFactory


def write_pair(directory: str, *names: str) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    certificate, key = self_signed_certificate(
        names, now - timedelta(days=1), now + timedelta(days=90)
    )
    write_secret_directory(directory, [certificate], key)
    return certificate


@implementer(IOpenSSLClientConnectionCreator)
class PlainClient:
    """A pyOpenSSL client without verification: the tests look at the cert."""

    def __init__(
        self,
        server_name: bytes | None = None,
        alpn: list[bytes] | None = None,
        version: int | None = None,
        ciphers: bytes | None = None,
        session: SSL.Session | None = None,
    ) -> None:
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if version is not None:
            self.context.set_min_proto_version(version)
            self.context.set_max_proto_version(version)
        if ciphers is not None:
            self.context.set_cipher_list(ciphers)
        if alpn is not None:
            self.context.set_alpn_protos(alpn)
        self.server_name = server_name
        self.session = session

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        if self.session is not None:
            connection.set_session(self.session)
        return connection


@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records the handshake and what arrives; the server side echoes."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.handshook = False
        self.received = b""
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


def session_reused(connection: SSL.Connection) -> bool:
    # pyOpenSSL has no public wrapper for SSL_session_reused.
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))


class Connection:
    """Both ends of one in-memory TLS connection."""

    def __init__(
        self,
        client: TLSMemoryBIOProtocol,
        server: TLSMemoryBIOProtocol,
        pump: IOPump,
        client_peer: Peer,
        server_peer: Peer,
    ) -> None:
        self.client, self.server, self.pump = client, server, pump
        # Kept here: TLSMemoryBIOProtocol forgets its wrapped protocol on close.
        self.client_peer, self.server_peer = client_peer, server_peer

    def presented(self) -> x509.Certificate | None:
        return self.client.getHandle().get_peer_certificate(as_cryptography=True)

    def round_trip(self, data: bytes) -> bytes:
        self.client_peer.received = b""
        self.client_peer.transport.write(data)
        self.pump.flush()
        return self.client_peer.received


class CertificateConnectionCreatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.exact = write_pair(os.path.join(self.root, "exact"), "a.cloud.example")
        self.wildcard = write_pair(os.path.join(self.root, "wildcard"), "*.cloud.example")
        self.default = write_pair(os.path.join(self.root, "default"), "default.example")
        self.events: list[dict] = []
        log = Logger(observer=self.events.append)
        self.store = CertificateStore(default_name="default.example", log=log)
        self.store.add_directory(self.root)
        self.creator = server_connection_creator(self.store, log=log)
        self.clock = Clock()

    def connect(self, client: PlainClient) -> Connection:
        address = IPv4Address("TCP", "127.0.0.1", 443)
        client_peer, server_peer = Peer(echo=False), Peer(echo=True)
        # The certificate the listener chooses from the client's ClientHello
        # (edd_gateway.tls.listener), given to the terminated connection.
        name = None if client.server_name is None else client.server_name.decode()
        certificate = self.store.choose(name)
        assert certificate is not None, "the listener refuses a name no certificate serves"
        server_factory = TerminatorFactory(
            self.creator, ServerFactory.forProtocol(lambda: server_peer), self.clock, TLSStats(), None
        )
        client_factory = TLSMemoryBIOFactory(
            client, True, ClientFactory.forProtocol(lambda: client_peer), self.clock
        )
        for factory in (server_factory, client_factory):
            factory.doStart()
            self.addCleanup(factory.doStop)
        client_address = IPv4Address("TCP", "192.0.2.7", 50000)
        client_protocol, server_protocol, pump = connectedServerAndClient(
            lambda: server_factory.terminate(client_address, name, certificate),
            lambda: client_factory.buildProtocol(address),
            clientTransportFactory=lambda p: FakeTransport(p, False, client_address, address),
            serverTransportFactory=lambda p: FakeTransport(p, True, address, client_address),
            clock=self.clock,
        )
        return Connection(client_protocol, server_protocol, pump, client_peer, server_peer)

    def assertServed(self, server_name: bytes | None, certificate: x509.Certificate) -> Connection:
        connection = self.connect(PlainClient(server_name))
        self.assertTrue(connection.server_peer.handshook)
        self.assertEqual(connection.presented(), certificate)
        handle = connection.server.getHandle()
        self.assertEqual(chosen_certificate(handle).certificate, certificate)
        expected_name = None if server_name is None else server_name.decode()
        self.assertEqual(negotiated_server_name(handle), expected_name)
        self.assertEqual(connection.round_trip(b"ping"), b"ping")
        return connection

    def test_exact_name(self) -> None:
        self.assertServed(b"a.cloud.example", self.exact)

    def test_wildcard(self) -> None:
        self.assertServed(b"b.cloud.example", self.wildcard)

    def test_default_for_uncovered_name(self) -> None:
        self.assertServed(b"x.b.cloud.example", self.default)

    def test_default_without_sni(self) -> None:
        self.assertServed(None, self.default)

    def test_tls11_is_refused(self) -> None:
        client = PlainClient(b"a.cloud.example", version=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT:@SECLEVEL=0")
        connection = self.connect(client)
        self.assertFalse(connection.server_peer.handshook)
        self.assertFalse(connection.client_peer.handshook)
        self.assertIn("unsupported protocol", str(connection.server_peer.lost.value))

    def test_tls12_uses_a_modern_cipher(self) -> None:
        connection = self.connect(PlainClient(b"a.cloud.example", version=SSL.TLS1_2_VERSION))
        self.assertTrue(connection.client_peer.handshook)
        handle = connection.server.getHandle()
        self.assertEqual(handle.get_protocol_version_name(), "TLSv1.2")
        self.assertIn(handle.get_cipher_name().encode(), TLS12_CIPHERS.split(b":"))

    def test_tls12_cbc_only_client_is_refused(self) -> None:
        client = PlainClient(b"a.cloud.example", version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-SHA")
        connection = self.connect(client)
        self.assertFalse(connection.server_peer.handshook)

    def test_tls13_negotiated_by_default(self) -> None:
        connection = self.connect(PlainClient(b"a.cloud.example"))
        self.assertEqual(connection.server.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_alpn_http11(self) -> None:
        connection = self.connect(PlainClient(b"a.cloud.example", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(connection.client.getHandle().get_alpn_proto_negotiated(), b"http/1.1")
        self.assertEqual(connection.client.negotiatedProtocol, b"http/1.1")

    def test_alpn_without_http11_goes_on_without_alpn(self) -> None:
        connection = self.connect(PlainClient(b"a.cloud.example", alpn=[b"h2"]))
        self.assertTrue(connection.server_peer.handshook)
        self.assertEqual(connection.client.getHandle().get_alpn_proto_negotiated(), b"")

    def test_session_resumption(self) -> None:
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            client = PlainClient(b"a.cloud.example", version=version)
            first = self.connect(client)
            # TLS 1.3 tickets arrive after the handshake, with the first data.
            first.round_trip(b"ping")
            self.assertFalse(session_reused(first.client.getHandle()))
            session = first.client.getHandle().get_session()
            client.session = session
            second = self.connect(client)
            self.assertTrue(second.server_peer.handshook)
            self.assertTrue(session_reused(second.client.getHandle()), version)

    def test_reload_serves_new_connections_only(self) -> None:
        before = self.assertServed(b"a.cloud.example", self.exact)
        renewed = write_pair(os.path.join(self.root, "exact"), "a.cloud.example")
        self.assertEqual(self.store.reload().loaded, (os.path.join(self.root, "exact"),))
        self.assertServed(b"a.cloud.example", renewed)
        # The open connection still works with the certificate it chose.
        self.assertEqual(before.round_trip(b"still here"), b"still here")
        self.assertEqual(chosen_certificate(before.server.getHandle()).certificate, self.exact)

    def test_contexts_are_reused_until_reload(self) -> None:
        certificate = self.store.choose("a.cloud.example")
        context = self.creator.context_for(certificate)
        self.assertIs(self.creator.context_for(certificate), context)
        self.store.reload(force=True)
        renewed = self.store.choose("a.cloud.example")
        self.assertIsNot(self.creator.context_for(renewed), context)
