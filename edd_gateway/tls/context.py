"""
TLS termination contexts: the pyOpenSSL server connections that the
gateway's C{TLSMemoryBIOFactory} wraps around the HTTP side.

It owns the TLS policy (TLS 1.2 and 1.3 only, ECDHE with AES-GCM or
ChaCha20-Poly1305 for TLS 1.2, ALPN, session resumption, no renegotiation)
and one context per loaded certificate, built once and dropped when the store
replaces the certificate, so that reloads never touch open connections.  The
certificate is not chosen here: the listener chose it from the ClientHello it
parsed (L{edd_gateway.tls.listener}), and a connection starts with that
certificate's context already in place, so the handshake makes no choice of
its own.  Twisted's C{CertificateOptions} would leave the chain and the
policy to us anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from edd_gateway.tls import openssl as _openssl
from edd_gateway.tls.store import CertificateStore, LoadedCertificate

__all__ = [
    "ALPN_PROTOCOL",
    "ALPN_WITH_H2",
    "CertificateSource",
    "TLS12_CIPHERS",
    "CertificateConnectionCreator",
    "PresentsCertificate",
    "chosen_certificate",
    "negotiated_server_name",
    "server_connection_creator",
]

ALPN_PROTOCOL = b"http/1.1"

# Mozilla's "intermediate" TLS 1.2 suites: forward secret AEAD only.  TLS 1.3
# suites are all AEAD and keep OpenSSL's defaults.
TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

# Sessions resumed (by session id or ticket) only within this application.
_SESSION_ID_CONTEXT = b"edd-gateway"


class _CertificateContext(SSL.Context):
    """A server context that remembers which certificate it serves."""

    certificate: LoadedCertificate | None = None


def alpn_selector(
    preference: Sequence[bytes],
) -> Callable[[SSL.Connection, list[bytes]], bytes | SSL._NoOverlappingProtocols]:
    """
    The ALPN callback choosing the first of C{preference} (the server's
    order: h2, then http/1.1) that the client offered.
    """
    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
        for protocol in preference:
            if protocol in offered:
                return protocol
        # Go on without ALPN rather than fail clients offering only unknown names.
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


#: The protocols spoken inside terminated TLS, in the gateway's order, with HTTP/2 on.
ALPN_WITH_H2 = (b"h2", ALPN_PROTOCOL)


def _policy_context(certificate: LoadedCertificate | None, tickets: bool = True,
                    alpn: Sequence[bytes] = (ALPN_PROTOCOL,)) -> _CertificateContext:
    """
    A context with the gateway's TLS policy.  OpenSSL takes protocol
    versions, ciphers and options from the connection's first context but the
    ALPN callback and session id context from the switched one, so every
    context gets the whole policy.  Without C{tickets}, TLS 1.2 resumes by
    session id only and TLS 1.3 gets stateful tickets (an id into this
    process's session cache, no encrypted session).
    """
    context = _CertificateContext(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.set_cipher_list(TLS12_CIPHERS)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | (0 if tickets else SSL.OP_NO_TICKET))
    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_alpn_select_callback(alpn_selector(alpn))
    if certificate is not None:
        context.use_certificate(certificate.certificate)
        for intermediate in certificate.chain:
            context.add_extra_chain_cert(intermediate)
        context.use_privatekey(certificate.private_key)
        context.check_privatekey()
        context.certificate = certificate
    return context


def _accept_server_name(connection: SSL.Connection) -> None:
    """
    The servername callback, which chooses nothing: OpenSSL acknowledges a
    client's SNI, and keeps it in a TLS 1.2 session for its resumptions, only
    when such a callback accepts the name.
    """


class CertificateSource(Protocol):
    """Certificates served besides the store's (custom domains' on-demand ones), with a change counter."""

    @property
    def generation(self) -> int: ...
    def certificates(self) -> Iterable[LoadedCertificate]: ...


class PresentsCertificate(Protocol):
    """A TLS transport given its certificate before its handshake (L{edd_gateway.tls.terminated.TerminatedTLS})."""

    @property
    def certificate(self) -> LoadedCertificate: ...


@implementer(IOpenSSLServerConnectionCreator)
class CertificateConnectionCreator:
    """
    Server connections presenting the certificate their TLS transport was
    given (L{PresentsCertificate}).

    Usable as the C{contextFactory} of
    C{TLSMemoryBIOFactory(creator, False, wrapped)} whose protocol is given
    a certificate.  A connection is made with the policy context, then moved
    to its certificate's context before any byte is read: OpenSSL keeps the
    first context's session cache and ticket keys for the connection's whole
    life, so every certificate shares one cache and one ticket key, and takes
    the certificate and the ALPN callback from the second.

    Session tickets: with C{ticket_keys}, OpenSSL encrypts and decrypts them
    with the keys it holds at each ticket (L{edd_gateway.tls.tickets});
    without, with the key OpenSSL drew for this creator; C{tickets=False}
    issues none.
    """

    def __init__(
        self,
        store: CertificateStore,
        log: Logger | None = None,
        ticket_keys: _openssl.TicketKeyLookup | None = None,
        tickets: bool = True,
        alpn: Sequence[bytes] = (ALPN_PROTOCOL,),
        extra: CertificateSource | None = None,
    ) -> None:
        self._store = store
        self._extra = extra
        self._alpn = tuple(alpn)
        self._log = Logger() if log is None else log
        self._contexts: dict[LoadedCertificate, _CertificateContext] = {}
        self._store_generation = store.generation
        self._extra_generation = extra.generation if extra is not None else 0
        self._tickets = tickets
        # The first context carries the policy, the session cache and the
        # ticket keys for every connection (OpenSSL uses the connection's
        # first context for both); certificates come from the context
        # connection_for moves each connection to.
        self._base = _policy_context(None, tickets, self._alpn)
        self._base.set_tlsext_servername_callback(_accept_server_name)
        if tickets and ticket_keys is not None:
            _openssl.set_ticket_key_callback(self._base, ticket_keys, self._ticket_callback_failed)

    def _ticket_callback_failed(self, problem: BaseException) -> None:
        # Inside OpenSSL's handshake: the callback answered "no ticket" or
        # "unknown key" (a full handshake); say why, once per occurrence.
        self._log.error("tls: the session ticket callback failed ({problem}); that handshake went without "
                        "its ticket", problem=repr(problem))

    def serverConnectionForTLS(self, tlsProtocol: PresentsCertificate) -> SSL.Connection:
        return self.connection_for(tlsProtocol.certificate)

    def connection_for(self, certificate: LoadedCertificate) -> SSL.Connection:
        """A server connection whose handshake will present C{certificate}."""
        connection = SSL.Connection(self._base, None)
        connection.set_context(self.context_for(certificate))
        return connection

    def context_for(self, certificate: LoadedCertificate) -> SSL.Context:
        """The (cached) context presenting C{certificate}."""
        # Two integers compared per handshake, no call: this runs for every connection.
        extra = self._extra
        if self._store.generation != self._store_generation or (
                extra is not None and extra.generation != self._extra_generation):
            # Drop contexts of replaced certificates (the store's, and the
            # ones obtained on demand); open connections keep theirs alive
            # through their own reference.
            current = set(self._store.certificates())
            if self._extra is not None:
                current.update(self._extra.certificates())
            self._contexts = {c: x for c, x in self._contexts.items() if c in current}
            self._store_generation = self._store.generation
            self._extra_generation = extra.generation if extra is not None else 0
        context = self._contexts.get(certificate)
        if context is None:
            context = self._contexts[certificate] = _policy_context(certificate, self._tickets, self._alpn)
        return context


def server_connection_creator(
    store: CertificateStore,
    log: Logger | None = None,
    ticket_keys: _openssl.TicketKeyLookup | None = None,
    tickets: bool = True,
    alpn: Sequence[bytes] = (ALPN_PROTOCOL,),
    extra: CertificateSource | None = None,
) -> CertificateConnectionCreator:
    """
    The connection creator terminating TLS with C{store}'s certificates (and
    C{ticket_keys}' keys), negotiating the first of C{alpn} a client offers;
    C{extra}'s certificates are served too (their contexts dropped once replaced).
    """
    return CertificateConnectionCreator(store, log=log, ticket_keys=ticket_keys, tickets=tickets, alpn=alpn,
                                        extra=extra)


def negotiated_server_name(connection: SSL.Connection) -> str | None:
    """
    The SNI name the client sent, lower-case without trailing dot (L{None}
    without SNI, or when it is not ASCII and so matched no certificate).
    """
    raw = connection.get_servername()
    if not raw:
        return None
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    return name[:-1] if name.endswith(".") else name


def chosen_certificate(connection: SSL.Connection) -> LoadedCertificate | None:
    """The certificate the connection's handshake presented, if any."""
    context = connection.get_context()
    return context.certificate if isinstance(context, _CertificateContext) else None
