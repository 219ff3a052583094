"""
The development certificate: a self-signed ECDSA P-256 certificate that the
embedded default creates on first start, written in the Kubernetes TLS secret
layout (C{tls.crt}, C{tls.key} with mode 0600) so that the certificate store
reads it like any mounted secret.  It also owns the small helpers that make a
self-signed certificate for a list of names and write a secret directory,
which tests reuse to build the certificates they need.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edd_gateway.tls.secret import CERTIFICATE_FILE, KEY_FILE, ServerPrivateKey

__all__ = [
    "DEV_CERTIFICATE_DAYS",
    "DEV_CERTIFICATE_NAMES",
    "ensure_dev_certificate",
    "self_signed_certificate",
    "write_secret_directory",
]

DEV_CERTIFICATE_NAMES = ("localhost", "127.0.0.1", "::1")
DEV_CERTIFICATE_DAYS = 365

_log = Logger()


def _subject_alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    general_names: list[x509.GeneralName] = []
    for name in names:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general_names.append(x509.DNSName(name))
    return general_names


def self_signed_certificate(
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    key: ServerPrivateKey | None = None,
) -> tuple[x509.Certificate, ServerPrivateKey]:
    """
    Make a self-signed server certificate whose subjectAltName lists
    C{names} (DNS names, wildcards and IP addresses alike); the subject CN is
    the first name.  A new P-256 key is made unless C{key} is given.
    """
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    public_key = key.public_key()
    # Ed25519/Ed448 sign without a separate digest.
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(_subject_alternative_names(names)),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key),
            critical=False,
        )
    )
    return builder.sign(key, algorithm), key


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    # A temporary file in the same directory then a rename: a reader (or a
    # crash) never sees half a key, and the key is never briefly world-readable.
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_secret_directory(
    directory: str,
    certificates: Sequence[x509.Certificate],
    key: ServerPrivateKey,
) -> None:
    """
    Write C{tls.crt} (the certificates in order: leaf first) and C{tls.key}
    (PKCS#8 PEM, mode 0600) into C{directory}, creating it (mode 0700).
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    _write_atomically(os.path.join(directory, KEY_FILE), key_pem, 0o600)
    _write_atomically(os.path.join(directory, CERTIFICATE_FILE), chain_pem, 0o644)


def ensure_dev_certificate(
    directory: str,
    names: Sequence[str] = DEV_CERTIFICATE_NAMES,
    valid_days: int = DEV_CERTIFICATE_DAYS,
    clock: IReactorTime | None = None,
) -> tuple[str, bool]:
    """
    Make sure C{directory} holds a certificate/key pair, creating a
    self-signed one for C{names} when either file is missing.  An existing
    pair is left alone, whatever it holds.

    @return: C{(directory, created)}.
    """
    certificate_path = os.path.join(directory, CERTIFICATE_FILE)
    key_path = os.path.join(directory, KEY_FILE)
    if os.path.exists(certificate_path) and os.path.exists(key_path):
        return directory, False
    now = (
        datetime.now(timezone.utc)
        if clock is None
        else datetime.fromtimestamp(clock.seconds(), timezone.utc)
    )
    # Backdated an hour so that a client with a slightly slow clock accepts it.
    certificate, key = self_signed_certificate(
        names, now - timedelta(hours=1), now + timedelta(days=valid_days)
    )
    write_secret_directory(directory, [certificate], key)
    _log.info(
        "Created a self-signed development TLS certificate for {names} in "
        "{directory}, valid until {not_after}",
        names=", ".join(names),
        directory=directory,
        not_after=certificate.not_valid_after_utc.isoformat(),
    )
    return directory, True
