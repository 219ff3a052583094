"""
TLS for end-to-end tests: self-signed pairs written as Kubernetes TLS secrets
(and as a mounted secret volume that updates through C{..data}), a TLS backend
with one certificate (a passthrough route's own), a pyOpenSSL client in
memory-BIO mode over a raw connection.  The test case that runs the real
gateway with them is C{tests._support.tls_gateway.TLSCase}.
"""

from __future__ import annotations

import os
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import deferLater
from zope.interface import implementer

from . import (
    RawConnection,
    RawResponse,
    parse_responses,
    poll_until,
)
from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory


def make_pair(*names: str) -> tuple[x509.Certificate, Any]:
    now = datetime.now(timezone.utc)
    return self_signed_certificate(names, now - timedelta(hours=1), now + timedelta(days=90))


def write_pair(directory: str | Path, *names: str) -> x509.Certificate:
    certificate, key = make_pair(*names)
    write_secret_directory(str(directory), [certificate], key)
    return certificate


def write_pem(path: Path, certificate: x509.Certificate) -> str:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(path)


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


class SecretVolume:
    """
    A directory laid out like a mounted Kubernetes TLS secret: C{tls.crt}
    and C{tls.key} are symlinks through C{..data}, itself a symlink to a
    timestamped directory; an update writes a new one and renames a new
    C{..data} over the old, atomically.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        path.mkdir(parents=True)

    def publish(self, certificate: x509.Certificate, key: Any) -> None:
        self.version += 1
        version = f"..2026_11_27_00_00_{self.version:02d}.{self.version}"
        write_secret_directory(str(self.path / version), [certificate], key)
        staging = self.path / "..data_tmp"
        staging.symlink_to(version)
        os.replace(staging, self.path / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.path / name).is_symlink():
                (self.path / name).symlink_to(f"..data/{name}")


@implementer(IOpenSSLServerConnectionCreator)
class BackendTLS:
    """A TLS server with one certificate: the passthrough backend's own."""

    def __init__(self, certificate: x509.Certificate, key: Any) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate(certificate)
        self.context.use_privatekey(key)

    def serverConnectionForTLS(self, tls_protocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


def reframe(flight: bytes, record_size: int) -> bytes:
    """The first TLS record of C{flight} split into records of C{record_size} payload bytes."""
    header, length = flight[:3], int.from_bytes(flight[3:5], "big")
    payload, rest = flight[5:5 + length], flight[5 + length:]
    chunks = [payload[i:i + record_size] for i in range(0, len(payload), record_size)]
    return b"".join(header + len(chunk).to_bytes(2, "big") + chunk for chunk in chunks) + rest


class MemoryTLSClient:
    """
    Python's TLS client over a L{RawConnection}: the test decides how the
    bytes go out (the ClientHello trickled, records split) and when to send
    requests on the open connection.  No verification: the tests compare
    the presented certificate themselves.
    """

    def __init__(self, connection: RawConnection, server_name: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        self.connection = connection
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self.offset = 0
        self.plaintext = b""

    async def handshake(self, chunk: int = 0, record_size: int = 0) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = self.outgoing.read()
        if record_size:
            hello = reframe(hello, record_size)
        step = chunk or len(hello)
        for start in range(0, len(hello), step):
            self.connection.send(hello[start:start + step])
            if chunk:
                # The installed reactor, imported here: at module import it would install
                # the default one before trial's asyncio reactor (the package ships this module).
                from twisted.internet import reactor

                await deferLater(reactor, 0.002, lambda: None)
        while True:
            await self._wait_for_bytes("the handshake")
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                continue
            self._flush()
            return

    def presented(self) -> x509.Certificate:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    async def request(self, host: str, path: str = "/") -> RawResponse:
        self.tls.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self._flush()
        already = len(parse_responses(self.plaintext))
        while True:
            try:
                self.plaintext += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            responses = parse_responses(self.plaintext)
            if len(responses) > already:
                return responses[already]
            await self._wait_for_bytes(f"the response to {path}")

    async def _wait_for_bytes(self, what: str) -> None:
        connection = self.connection

        def arrived() -> bool:
            if len(connection.received) > self.offset:
                return True
            if connection.closed:
                raise AssertionError(f"the gateway closed the connection during {what}")
            return False

        await poll_until(arrived, what, timeout=10, interval=0.005)
        self.incoming.write(bytes(connection.received[self.offset:]))
        self.offset = len(connection.received)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.connection.send(data)
