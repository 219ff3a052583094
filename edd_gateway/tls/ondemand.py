"""
Certificates decided per connection by a collaborator (on-demand ACME for
custom domains): L{OnDemandTLSListenerFactory} asks its L{SNIHook} about
each ClientHello's name before the usual choice, and the hook answers:

 - L{Terminate}: terminate with this certificate (a custom domain's own);
 - L{Wait}: the certificate is being obtained: the ClientHello is held, and
   the connection terminated with the certificate the Deferred brings, or
   refused with an alert when it brings none (the hook bounds the wait);
 - L{Validate}: an ACME TLS-ALPN-01 validation handshake (ALPN
   C{acme-tls/1}): the validation certificate, C{acme-tls/1} negotiated, and
   the connection closed once the handshake is done;
 - L{Refuse}: an alert, and a log line with the reason;
 - None: not the hook's: passthrough, the secret store and the containers
   decide as on any listener.

A route that passes the name through wins over the hook, as it wins over
every certificate; so does a certificate of the secret store that covers
the name (the operator's choice is kept, and nothing is issued for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Union

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol as TwistedProtocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.net.transport import swap_protocol
from edd_gateway.tls.clienthello_body import ClientHello
from edd_gateway.tls.context import CertificateSource
from edd_gateway.tls.listener import _ALERT_INTERNAL_ERROR, _ALERT_UNRECOGNIZED_NAME, ClientHelloProtocol, TLSListenerFactory
from edd_gateway.tls.secret import LoadedCertificate, ServerPrivateKey

__all__ = ["OnDemandHelloProtocol", "OnDemandTLSListenerFactory", "Refuse", "SNIAnswer", "SNIHook", "Terminate",
           "Validate", "Wait"]

#: Seconds a validation connection may stay open (the CA closes it after its handshake).
VALIDATION_TIMEOUT = 10.0


@dataclass(frozen=True)
class Terminate:
    certificate: LoadedCertificate


@dataclass(frozen=True)
class Wait:
    """C{certificate} fires with a certificate, or None (refused: C{reason} says why in the log)."""

    certificate: Deferred[LoadedCertificate | None]
    reason: str = "no certificate could be had in time"


@dataclass(frozen=True)
class Validate:
    certificate: x509.Certificate
    key: ServerPrivateKey
    alpn: bytes = b"acme-tls/1"


@dataclass(frozen=True)
class Refuse:
    reason: str


SNIAnswer = Union[Terminate, Wait, Validate, Refuse, None]


class SNIHook(CertificateSource, Protocol):
    """
    What the listener asks about a ClientHello's name
    (L{edd_gateway.issuance.sni.OnDemandSNI}); the certificates it answers
    with, for the contexts' cache (L{CertificateSource}).
    """

    def answer(self, name: str, alpn: tuple[str, ...]) -> SNIAnswer: ...


class OnDemandHelloProtocol(ClientHelloProtocol):
    """L{ClientHelloProtocol}, asking the factory's hook first."""

    _factory: OnDemandTLSListenerFactory

    def _decide(self, hello: ClientHello) -> None:
        name = hello.server_name
        if (name is None or self._factory.routes.current.tls_passthrough(name) is not None
                or self._factory.store.covering(name) is not None):
            # A passthrough route, or a certificate the operator gave for the
            # name (--tls-dir), wins over anything obtained on demand.
            super()._decide(hello)
            return
        answer = self._factory.hook.answer(name, hello.alpn)
        if answer is None:
            super()._decide(hello)
            return
        self._decided = True
        self._stop_timer()
        if isinstance(answer, Terminate):
            self._terminate(hello, answer.certificate)
        elif isinstance(answer, Refuse):
            self._refuse("SNI {sni}: {reason}", _ALERT_UNRECOGNIZED_NAME, sni=name, reason=answer.reason)
        elif isinstance(answer, Validate):
            self._validate(answer)
        else:
            self._wait(hello, answer)

    def _wait(self, hello: ClientHello, answer: Wait) -> None:
        transport = self.transport
        assert transport is not None
        # Nothing is read while the certificate is obtained: the ClientHello is all there is to hold.
        _call_if_any(transport, "pauseProducing")
        self._log.info("tls: {client} SNI {sni}: no certificate yet; waiting for it", client=self.client,
                       sni=hello.server_name)

        def arrived(certificate: LoadedCertificate | None) -> None:
            if self._lost:
                return
            if certificate is None:
                self._factory.stats.no_certificate += 1
                self._refuse("SNI {sni}: {reason}", _ALERT_INTERNAL_ERROR, sni=hello.server_name,
                             reason=answer.reason)
                return
            _call_if_any(transport, "resumeProducing")
            self._terminate(hello, certificate)

        def failed(reason: Failure) -> None:
            self._log.failure("tls: obtaining a certificate for {sni} failed", reason, sni=hello.server_name)
            arrived(None)

        answer.certificate.addCallbacks(arrived, failed)

    def _validate(self, answer: Validate) -> None:
        transport = self.transport
        assert transport is not None and self._peer is not None
        self._log.info("tls: {client} ACME TLS-ALPN-01 validation handshake", client=self.client)
        tls = self._factory.validation_factory(answer).buildProtocol(self._peer)
        swap_protocol(transport, tls)
        tls.makeConnection(transport)
        self.transport = None
        tls.dataReceived(self._parser.buffered)
        self._factory.clock.callLater(VALIDATION_TIMEOUT, _abort_if_open, transport, tls)


def _call_if_any(transport: Any, name: str) -> None:
    """Pause or resume reading where the transport can (TCP and its wrappers can; a test's may not)."""
    method = getattr(transport, name, None)
    if method is not None:
        method()


def _abort_if_open(transport: Any, tls: Any) -> None:
    if getattr(transport, "connected", False) and not getattr(transport, "disconnecting", False):
        tls.abortConnection()


@implementer(IHandshakeListener)
class _Silent(TwistedProtocol):
    """What speaks inside a validation handshake: nothing (the CA only looks at the handshake)."""

    def handshakeCompleted(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.loseConnection()


@implementer(IOpenSSLServerConnectionCreator)
class _ValidationCreator:
    def __init__(self, answer: Validate) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate(answer.certificate)
        context.use_privatekey(answer.key)
        alpn = answer.alpn
        # Only acme-tls/1 is ever negotiated here (RFC 8737 section 4).
        context.set_alpn_select_callback(lambda connection, offered: alpn if alpn in offered
                                         else SSL.NO_OVERLAPPING_PROTOCOLS)
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class OnDemandTLSListenerFactory(TLSListenerFactory):
    """L{TLSListenerFactory} whose connections ask C{hook} first (L{OnDemandHelloProtocol})."""

    def __init__(self, *args: Any, hook: SNIHook, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook = hook

    def validation_factory(self, answer: Validate) -> TLSMemoryBIOFactory:
        factory = TLSMemoryBIOFactory(_ValidationCreator(answer), False, Factory.forProtocol(_Silent))
        factory.doStart()
        return factory

    def buildProtocol(self, addr: IAddress) -> OnDemandHelloProtocol:  # type: ignore[override]  # a port's peer
        return OnDemandHelloProtocol(self, addr)
