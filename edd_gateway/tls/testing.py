"""
Test doubles for the TLS side, shipped in the package as L{edd_gateway.http.testing}
is: the ClientHello a real pyOpenSSL client sends and TLS record framing (for the
parser), certificate pairs written as Kubernetes TLS secrets, a passthrough
route, an in-memory transport whose protocol is swapped as TCP's is, and a
pyOpenSSL client in memory-BIO mode whose bytes are moved by hand.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection

from edd_gateway.routes.model import Route, Target
from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory

__all__ = [
    "CLIENT", "SERVER", "HandoverTransport", "MemoryClient", "captured_client_hello", "handshake_bytes",
    "passthrough_route", "quiet_logger", "records", "write_pair",
]


def captured_client_hello(
    server_name: bytes | None = None,
    alpn: list[bytes] | None = None,
    max_version: int | None = None,
) -> bytes:
    """The bytes a real pyOpenSSL client sends first."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    if server_name is not None:
        client.set_tlsext_host_name(server_name)
    if alpn is not None:
        client.set_alpn_protos(alpn)
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return client.bio_read(65536)


def handshake_bytes(stream: bytes) -> bytes:
    """The handshake-layer bytes carried by a stream of records."""
    payload = bytearray()
    while stream:
        (length,) = struct.unpack("!H", stream[3:5])
        payload += stream[5 : 5 + length]
        stream = stream[5 + length :]
    return bytes(payload)


def records(payload: bytes, sizes: list[int], content_type: int = 22) -> bytes:
    """Frame C{payload} into TLS records of the given sizes, cycling."""
    out = bytearray()
    position, turn = 0, 0
    while position < len(payload):
        size = sizes[turn % len(sizes)]
        chunk = payload[position : position + size]
        out += struct.pack("!BHH", content_type, 0x0301, len(chunk)) + chunk
        position += size
        turn += 1
    return bytes(out)


CLIENT = IPv4Address("TCP", "198.51.100.9", 40123)


SERVER = IPv4Address("TCP", "127.0.0.1", 443)


def write_pair(directory: str, *names: str, days: float = 90) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    certificate, key = self_signed_certificate(names, now - timedelta(days=1), now + timedelta(days=days))
    write_secret_directory(directory, [certificate], key)
    return certificate


def passthrough_route(host: str, port: int = 8443, connect_timeout: float | None = None) -> Route:
    return Route(host, "/", Target("127.0.0.1", port), tls_passthrough=True,
                 connect_timeout=connect_timeout, source="routes.yaml:7")


class HandoverTransport(StringTransportWithDisconnection):
    """An in-memory transport whose protocol can be swapped like TCP's."""

    def __init__(self, peer: IPv4Address = CLIENT) -> None:
        super().__init__(hostAddress=SERVER, peerAddress=peer)

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


class MemoryClient:
    """A pyOpenSSL TLS client in memory-BIO mode; bytes are moved by hand."""

    def __init__(self, server_name: bytes | None) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.connection = SSL.Connection(context, None)
        if server_name is not None:
            self.connection.set_tlsext_host_name(server_name)
        self.connection.set_connect_state()
        self.handshook = False
        self.received = b""
        self.error: SSL.Error | None = None

    def feed(self, incoming: bytes) -> bytes:
        """Give the client the server's bytes; return what it sends back."""
        if incoming:
            self.connection.bio_write(incoming)
        if not self.handshook:
            try:
                self.connection.do_handshake()
                self.handshook = True
            except SSL.WantReadError:
                pass
            except SSL.Error as problem:
                self.error = problem
                return b""
        if self.handshook:
            while True:
                try:
                    self.received += self.connection.recv(65536)
                except (SSL.WantReadError, SSL.ZeroReturnError):
                    break
        return self.drain()

    def drain(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.connection.bio_read(65536)
            except SSL.WantReadError:
                return out

    def send(self, data: bytes) -> bytes:
        self.connection.send(data)
        return self.drain()

    def presented(self) -> x509.Certificate | None:
        return self.connection.get_peer_certificate(as_cryptography=True)


def quiet_logger() -> Any:
    from twisted.logger import Logger

    return Logger(observer=lambda event: None)  # type: ignore[arg-type]  # any callable observes
