"""A stored certificate as the TLS side serves it (L{LoadedCertificate}), parsed once per new chain."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edd_gateway.issuance.storage import StoredCertificate
from edd_gateway.tls.secret import LoadedCertificate, ServerPrivateKey

__all__ = ["loaded_certificate"]


def loaded_certificate(stored: StoredCertificate) -> LoadedCertificate:
    """
    The served form of C{stored}.

    @raise ValueError: the chain or key does not parse, or they do not match.
    """
    chain = x509.load_pem_x509_certificates(stored.chain_pem.encode("ascii"))
    key = serialization.load_pem_private_key(stored.key_pem, password=None)
    leaf = chain[0]
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
        raise ValueError(f"the stored key of {stored.domain} does not match its certificate")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(name.lower() for name in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    server_key: ServerPrivateKey = key  # type: ignore[assignment]  # the gateway makes EC keys only
    return LoadedCertificate(directory=f"acme:{stored.domain}", certificate=leaf, chain=tuple(chain[1:]),
                             private_key=server_key, names=names | {stored.domain}, wildcard_suffixes=frozenset(),
                             fingerprint=(None, None))
