"""
The challenges the gateway answers itself, and the board that holds them
while an order waits.

 - HTTP-01 (RFC 8555 section 8.3): the key authorization, served on the
   plain port at C{/.well-known/acme-challenge/<token>} for the domain
   (L{edd_gateway.domains.router});
 - TLS-ALPN-01 (RFC 8737): a TLS handshake on the TLS port for the domain's
   SNI with ALPN C{acme-tls/1} presenting a self-signed certificate for the
   domain with the critical acmeIdentifier extension holding the SHA-256 of
   the key authorization (L{validation_certificate}).  The C{acme} library
   dropped its TLS-ALPN-01 class (it kept HTTP-01 and DNS-01), so the
   challenge type is registered here, on the library's own base class.

The board is in memory, per replica; the replica that places a challenge
also writes it to the challenges table, whose notification has every other
replica load it (L{edd_gateway.issuance.challenge_sync}), so the CA's
validation may reach any of them.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from josepy.jwk import JWK
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = ["ACME_TLS_ALPN", "ChallengeBoard", "PendingChallenge", "TLSALPN01", "TLSALPN01Response", "Validation",
           "validation_certificate"]

#: The ALPN protocol of TLS-ALPN-01 validation handshakes.
ACME_TLS_ALPN = "acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 section 6.1).
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The tls-alpn-01 response: the key authorization, as for every key authorization challenge."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """The tls-alpn-01 challenge (RFC 8737)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **kwargs: Any) -> str:
        """The key authorization; the certificate is L{validation_certificate}'s."""
        return self.key_authorization(account_key)


@dataclass(frozen=True)
class Validation:
    """A TLS-ALPN-01 validation certificate and its key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def validation_certificate(domain: str, key_authorization: str) -> Validation:
    """The self-signed certificate a TLS-ALPN-01 validation handshake for C{domain} presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is a DER OCTET STRING of the 32-byte digest.
    value = b"\x04\x20" + digest
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, value), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Validation(certificate, key)


@dataclass(frozen=True)
class PendingChallenge:
    """A challenge some replica placed, as the challenges table holds it (so every replica answers it)."""

    domain: str
    kind: str
    token: str
    key_authorization: str


class ChallengeBoard:
    """
    The challenges this replica answers now: its own, placed for its orders
    and taken down after them, and the other replicas' (L{replace_shared},
    from the challenges table), so that the CA's validation may reach any
    replica behind the load balancer.
    """

    def __init__(self) -> None:
        self._http: dict[tuple[str, str], str] = {}
        self._tls: dict[str, Validation] = {}
        self._shared_http: dict[tuple[str, str], str] = {}
        self._shared_tls: dict[str, str] = {}
        self._validations: dict[tuple[str, str], Validation] = {}

    def put_http01(self, domain: str, token: str, key_authorization: str) -> None:
        self._http[(domain, token)] = key_authorization

    def put_tls_alpn01(self, domain: str, validation: Validation) -> None:
        self._tls[domain] = validation

    def clear(self, domain: str) -> None:
        """Take down every challenge of C{domain} this replica placed."""
        self._tls.pop(domain, None)
        for key in [key for key in self._http if key[0] == domain]:
            del self._http[key]

    def replace_shared(self, pending: list[PendingChallenge]) -> None:
        """The other replicas' challenges now (the whole table: what is not in it is gone)."""
        self._shared_http = {(c.domain, c.token): c.key_authorization for c in pending if c.kind == "http-01"}
        self._shared_tls = {c.domain: c.key_authorization for c in pending if c.kind == "tls-alpn-01"}
        wanted = set(self._shared_tls.items())
        self._validations = {key: value for key, value in self._validations.items() if key in wanted}

    def http01(self, domain: str, token: str) -> str | None:
        return self._http.get((domain, token)) or self._shared_http.get((domain, token))

    def tls_alpn01(self, domain: str) -> Validation | None:
        own = self._tls.get(domain)
        if own is not None:
            return own
        key_authorization = self._shared_tls.get(domain)
        if key_authorization is None:
            return None
        # Made once per challenge, at its first validation handshake here.
        key = (domain, key_authorization)
        validation = self._validations.get(key)
        if validation is None:
            validation = self._validations[key] = validation_certificate(domain, key_authorization)
        return validation
