"""
Tests for L{edd_gateway.tls.ondemand} on memory transports: what the
listener does with each answer of its hook (terminate with the given
certificate, hold the ClientHello until a certificate comes or refuse, a
TLS-ALPN-01 validation handshake negotiating C{acme-tls/1}), and that names
the hook leaves alone get the usual choice.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred

from edd_gateway.issuance.challenges import ACME_IDENTIFIER, validation_certificate
from edd_gateway.issuance.loaded import loaded_certificate
from edd_gateway.issuance.testing import stored_certificate
from edd_gateway.tls.context import server_connection_creator
from edd_gateway.tls.ondemand import OnDemandTLSListenerFactory, Refuse, SNIAnswer, Terminate, Validate, Wait
from edd_gateway.tls.secret import LoadedCertificate
from edd_gateway.tls.testing import MemoryClient
from tests._support.tls import ListenerCase

NAME = "app.example.test"


class Hook:
    def __init__(self) -> None:
        self.answers: dict[str, SNIAnswer] = {}
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.generation = 0

    def certificates(self) -> list[LoadedCertificate]:
        return [answer.certificate for answer in self.answers.values() if isinstance(answer, Terminate)]

    def answer(self, name: str, alpn: tuple[str, ...]) -> SNIAnswer:
        self.asked.append((name, alpn))
        return self.answers.get(name)


class OnDemandTests(ListenerCase):
    def setUp(self) -> None:
        super().setUp()
        self.hook = Hook()
        self.factory = self.make_factory(self.store)
        self.certificate = loaded_certificate(stored_certificate(NAME, self.reactor))

    def make_factory(self, store: Any, **options: Any) -> OnDemandTLSListenerFactory:
        factory = OnDemandTLSListenerFactory(self.routes, store, self.https, self.reactor, connect_timeout=4.0,
                                             hook=getattr(self, "hook", Hook()), **options)
        factory.doStart()
        self.addCleanup(factory.doStop)
        return factory

    def presented_to(self, name: bytes) -> tuple[MemoryClient, Any]:
        client = MemoryClient(name)
        _, transport = self.connect()
        self.handshake(client, transport)
        return client, transport

    def test_terminate(self) -> None:
        self.hook.answers[NAME] = Terminate(self.certificate)
        client, _ = self.presented_to(NAME.encode())
        self.assertTrue(client.handshook)
        self.assertEqual(client.presented(), self.certificate.certificate)

    def test_left_alone(self) -> None:
        client, _ = self.presented_to(b"other.test")
        self.assertEqual(client.presented(), self.default)
        self.assertEqual(self.hook.asked[0][0], "other.test")

    def test_passthrough_wins(self) -> None:
        self.hook.answers["vm.cloud.test"] = Refuse("no")
        self.presented_to(b"vm.cloud.test")
        self.assertEqual(self.hook.asked, [])
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_operator_certificate_wins(self) -> None:
        self.hook.answers["a.cloud.test"] = Refuse("no")
        client, _ = self.presented_to(b"a.cloud.test")
        self.assertEqual(client.presented(), self.exact)
        self.assertEqual(self.hook.asked, [])

    def test_refuse(self) -> None:
        self.hook.answers[NAME] = Refuse("not for you")
        _, transport = self.presented_to(NAME.encode())
        self.assertFalse(transport.connected)

    def test_wait_then_terminate(self) -> None:
        arriving: Deferred[LoadedCertificate | None] = Deferred()
        self.hook.answers[NAME] = Wait(arriving)
        client = MemoryClient(NAME.encode())
        _, transport = self.connect()
        transport.protocol.dataReceived(client.feed(b""))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        arriving.callback(self.certificate)
        self.assertEqual(transport.producerState, "producing")
        self.handshake(client, transport)
        self.assertEqual(client.presented(), self.certificate.certificate)

    def test_wait_then_refuse(self) -> None:
        arriving: Deferred[LoadedCertificate | None] = Deferred()
        self.hook.answers[NAME] = Wait(arriving)
        _, transport = self.connect()
        transport.protocol.dataReceived(MemoryClient(NAME.encode()).feed(b""))
        arriving.callback(None)
        self.assertFalse(transport.connected)
        self.assertEqual(transport.value(), b"\x15\x03\x03\x00\x02\x02\x50")

    def test_client_leaves_while_waiting(self) -> None:
        arriving: Deferred[LoadedCertificate | None] = Deferred()
        self.hook.answers[NAME] = Wait(arriving)
        hello, transport = self.connect()
        transport.protocol.dataReceived(MemoryClient(NAME.encode()).feed(b""))
        transport.loseConnection()
        arriving.callback(self.certificate)
        self.assertEqual(transport.value(), b"")

    def test_validation_handshake(self) -> None:
        validation = validation_certificate(NAME, "token.thumbprint")
        self.hook.answers[NAME] = Validate(validation.certificate, validation.key)
        client = MemoryClient(NAME.encode())
        client.connection.set_alpn_protos([b"acme-tls/1"])
        _, transport = self.connect()
        self.handshake(client, transport)
        self.assertTrue(client.handshook)
        self.assertEqual(client.connection.get_alpn_proto_negotiated(), b"acme-tls/1")
        presented = client.presented()
        assert presented is not None
        extension = presented.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        self.assertTrue(extension.critical)
        self.assertIsInstance(extension.value, x509.UnrecognizedExtension)
        self.assertEqual(self.hook.asked, [(NAME, ("acme-tls/1",))])
        self.reactor.advance(11)


class ContextCacheTests(ListenerCase):
    def test_replaced_on_demand_certificates_dropped(self) -> None:
        hook = Hook()
        creator = server_connection_creator(self.store, extra=hook)
        first = loaded_certificate(stored_certificate(NAME, self.reactor))
        hook.answers[NAME] = Terminate(first)
        context = creator.context_for(first)
        self.assertIs(creator.context_for(first), context, "cached")
        renewed = loaded_certificate(stored_certificate(NAME, self.reactor))
        hook.answers[NAME] = Terminate(renewed)
        hook.generation += 1
        creator.context_for(renewed)
        self.assertIsNot(creator.context_for(first), context, "the replaced one's context was dropped")
