"""
TLS termination contexts: the pyOpenSSL server connections that the
gateway's C{TLSMemoryBIOFactory} wraps around the HTTP side.

It owns the TLS policy (TLS 1.2 and 1.3 only, ECDHE with AES-GCM or
ChaCha20-Poly1305 for TLS 1.2, ALPN C{http/1.1}, session resumption, no
renegotiation) and the choice of certificate at handshake time: a servername
callback asks the L{CertificateStore} and switches the connection to that
certificate's context, the way txsni's C{SNIMap} does.  Twisted's
C{CertificateOptions(contextForServerName=)} would leave the chain and the
policy to us anyway, and one context per loaded certificate, built once and
dropped when the store replaces the certificate, keeps reloads from touching
open connections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from edd_gateway.tls import openssl as _openssl
from edd_gateway.tls.store import CertificateStore, LoadedCertificate

__all__ = [
    "ALPN_PROTOCOL",
    "ALPN_WITH_H2",
    "TLS12_CIPHERS",
    "SNIConnectionCreator",
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


def _peer_description(connection: SSL.Connection) -> str:
    protocol = connection.get_app_data()
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return "an unknown peer"
    peer = transport.getPeer()
    return str(getattr(peer, "host", peer))


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """
    Server connections whose certificate the store chooses by SNI.

    Usable as the C{contextFactory} of
    C{TLSMemoryBIOFactory(creator, False, wrapped)}.  A connection picks its
    certificate during its handshake from the store's current index, so a
    reload serves new connections while open ones keep the context they
    hold.

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
    ) -> None:
        self._store = store
        self._alpn = tuple(alpn)
        self._log = Logger() if log is None else log
        self._contexts: dict[LoadedCertificate, _CertificateContext] = {}
        self._generation = store.generation
        self._tickets = tickets
        # The first context carries the policy, the session cache and the
        # ticket keys for every connection (OpenSSL uses the connection's
        # first context for both); certificates come from the switch.
        self._base = _policy_context(None, tickets, self._alpn)
        self._base.set_tlsext_servername_callback(self._choose_certificate)
        if tickets and ticket_keys is not None:
            _openssl.set_ticket_key_callback(self._base, ticket_keys, self._ticket_callback_failed)

    def _ticket_callback_failed(self, problem: BaseException) -> None:
        # Inside OpenSSL's handshake: the callback answered "no ticket" or
        # "unknown key" (a full handshake); say why, once per occurrence.
        self._log.error("tls: the session ticket callback failed ({problem}); that handshake went without "
                        "its ticket", problem=repr(problem))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._base, None)

    def context_for(self, certificate: LoadedCertificate) -> SSL.Context:
        """The (cached) context presenting C{certificate}."""
        if self._generation != self._store.generation:
            # Drop contexts of replaced certificates; open connections keep
            # theirs alive through their own reference.
            current = set(self._store.certificates())
            self._contexts = {c: x for c, x in self._contexts.items() if c in current}
            self._generation = self._store.generation
        context = self._contexts.get(certificate)
        if context is None:
            context = self._contexts[certificate] = _policy_context(certificate, self._tickets, self._alpn)
        return context

    def _choose_certificate(self, connection: SSL.Connection) -> None:
        server_name = negotiated_server_name(connection)
        certificate = self._store.choose(server_name)
        if certificate is None:
            # Without a certificate OpenSSL fails the handshake itself.
            self._log.info(
                "TLS from {peer}: no certificate for server name {server_name}",
                peer=_peer_description(connection),
                server_name=server_name,
            )
            return
        connection.set_context(self.context_for(certificate))


def server_connection_creator(
    store: CertificateStore,
    log: Logger | None = None,
    ticket_keys: _openssl.TicketKeyLookup | None = None,
    tickets: bool = True,
    alpn: Sequence[bytes] = (ALPN_PROTOCOL,),
) -> SNIConnectionCreator:
    """
    The connection creator terminating TLS with C{store}'s certificates (and
    C{ticket_keys}' keys), negotiating the first of C{alpn} a client offers.
    """
    return SNIConnectionCreator(store, log=log, ticket_keys=ticket_keys, tickets=tickets, alpn=alpn)


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
