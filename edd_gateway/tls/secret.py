"""
One Kubernetes TLS secret directory: reading and checking its pair.

It owns the secret layout (C{tls.crt}: leaf then chain, C{tls.key}), the
checks that make a pair usable (parsable PEM, unencrypted signing key that
matches the leaf, at least one name), the names a certificate covers (SAN
DNS names and IP addresses, one-label wildcards, the CN only without SAN),
and the cheap fingerprint that reveals a C{..data} symlink swap.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "CERTIFICATE_FILE",
    "KEY_FILE",
    "CertificateError",
    "FileIdentity",
    "LoadedCertificate",
    "PairFingerprint",
    "ServerPrivateKey",
    "load_secret_directory",
    "normalize_name",
    "pair_fingerprint",
]

CERTIFICATE_FILE = "tls.crt"
KEY_FILE = "tls.key"

ServerPrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

# What identifies one file's content without reading it: the symlink-resolved
# path (it changes on a ..data swap) and the stat fields that change on a
# rewrite in place.
FileIdentity = tuple[str, int, int, int, int]
PairFingerprint = tuple[FileIdentity | None, FileIdentity | None]


class CertificateError(Exception):
    """A secret directory does not hold a usable certificate/key pair."""


def normalize_name(name: str) -> str:
    """
    Lower-case a host name and drop a trailing dot; IP addresses (IPv6 with
    or without brackets) come back in their compressed form.
    """
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        try:
            return ipaddress.ip_address(name).compressed
        except ValueError:
            return name
    return name[:-1] if name.endswith(".") else name


def _wildcard_suffix(name: str) -> str | None:
    """The part a one-label wildcard name covers under, e.g. C{cloud.example}."""
    first, _, suffix = name.partition(".")
    return suffix if first == "*" and suffix else None


@dataclass(frozen=True, eq=False)
class LoadedCertificate:
    """
    One usable certificate with its chain and key.

    Compared by identity: a reload makes a new object even for the same
    files, which is what lets consumers cache per-object state safely.

    @ivar directory: the secret directory it was read from.
    @ivar names: exact names covered: SAN DNS names without wildcards, SAN IP
        addresses (compressed), or the subject CN when there is no SAN.
    @ivar wildcard_suffixes: for each C{*.suffix} SAN, the C{suffix}.
    @ivar fingerprint: the files' identities when they were read.
    """

    directory: str
    certificate: x509.Certificate = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    private_key: ServerPrivateKey = field(repr=False)
    names: frozenset[str]
    wildcard_suffixes: frozenset[str]
    fingerprint: PairFingerprint = field(repr=False)

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def display_names(self) -> list[str]:
        return sorted(self.names) + sorted(f"*.{s}" for s in self.wildcard_suffixes)

    def covers(self, name: str) -> bool:
        """Whether this certificate is valid for C{name} (exact or wildcard)."""
        name = normalize_name(name)
        if name in self.names:
            return True
        _, _, suffix = name.partition(".")
        return bool(suffix) and suffix in self.wildcard_suffixes

    def days_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def _file_identity(path: str) -> FileIdentity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (
        os.path.realpath(path),
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
    )


def pair_fingerprint(directory: str) -> PairFingerprint:
    """
    Identify the current content of a secret directory's pair cheaply (two
    C{stat} calls), following the C{tls.crt -> ..data/tls.crt} symlinks so a
    Kubernetes C{..data} swap shows as a change.
    """
    return (
        _file_identity(os.path.join(directory, CERTIFICATE_FILE)),
        _file_identity(os.path.join(directory, KEY_FILE)),
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CertificateError(f"cannot read {path}: {error.strerror}") from None


def _public_key_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]  # any loaded key
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _names(certificate: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        dns_names = [str(attribute.value) for attribute in common_names]
        addresses: list[str] = []
    else:
        dns_names = san.get_values_for_type(x509.DNSName)
        addresses = [a.compressed for a in san.get_values_for_type(x509.IPAddress)]
    exact = set(addresses)
    wildcards = set()
    for dns_name in map(normalize_name, dns_names):
        suffix = _wildcard_suffix(dns_name)
        if suffix is not None and "*" not in suffix and "." in suffix:
            wildcards.add(suffix)
        elif "*" not in dns_name:
            exact.add(dns_name)
    return frozenset(exact), frozenset(wildcards)


def load_secret_directory(directory: str) -> LoadedCertificate:
    """
    Read and check the pair in one secret directory.

    @raise CertificateError: with the reason, when the pair is unusable.
    """
    fingerprint = pair_fingerprint(directory)
    certificate_path = os.path.join(directory, CERTIFICATE_FILE)
    key_path = os.path.join(directory, KEY_FILE)
    certificate_pem = _read(certificate_path)
    key_pem = _read(key_path)
    try:
        certificates = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError as error:
        raise CertificateError(f"{certificate_path} is not PEM certificates: {error}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{key_path} is not an unencrypted PEM key: {error}")
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise CertificateError(f"{key_path} holds a {type(key).__name__}, not a signing key")
    leaf = certificates[0]
    if _public_key_bytes(leaf.public_key()) != _public_key_bytes(key.public_key()):
        raise CertificateError(
            f"{key_path} does not match the first certificate of {certificate_path}"
        )
    names, wildcard_suffixes = _names(leaf)
    if not names and not wildcard_suffixes:
        raise CertificateError(f"{certificate_path} names no host")
    return LoadedCertificate(
        directory=directory,
        certificate=leaf,
        chain=tuple(certificates[1:]),
        private_key=key,
        names=names,
        wildcard_suffixes=wildcard_suffixes,
        fingerprint=fingerprint,
    )
