"""
End-to-end tests of custom domains with on-demand ACME: the real ``twistd
edd-gateway`` against a throwaway PostgreSQL and a throwaway pebble (the
RFC 8555 test CA, L{edd_gateway.testing.pebble}) whose validation ports
point at the gateway's listener, its DNS server resolving every test name to
loopback.  The container is an HTTP backend in this process.  ACME traffic
is counted from pebble's side (its C{Added order} lines).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from edd_gateway.issuance.sealing import generate_key_text
from edd_gateway.testing import EndToEndMixin, GatewayProcess, curl, free_port, poll_until, require_asyncio_reactor
from edd_gateway.testing import require_tool
from edd_gateway.testing.containers import insert_container
from edd_gateway.testing.pebble import ThrowawayPebble
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres

NAME = "app.example.test"


def handshake(port: int, name: str, cafile: str) -> ssl.SSLSocket:
    """A TLS connection to the gateway for C{name}, checked against C{cafile} (blocking: run in a thread)."""
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname=name)


def presented(connection: ssl.SSLSocket) -> x509.Certificate:
    der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def get(connection: ssl.SSLSocket, name: str) -> bytes:
    """One HTTP/1.1 request on an open TLS connection; the response's first bytes (blocking)."""
    connection.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    return connection.recv(65536)


class CustomDomainsTests(EndToEndMixin, TestCase):
    timeout = 240

    def setUp(self) -> None:
        require_tool("curl")
        require_tool("pebble")
        require_asyncio_reactor()
        self.port = free_port()

    async def start_all(self, challenges: str, validity: int | None = None) -> None:
        pebble = self.pebble = ThrowawayPebble(self.mktemp(), http_port=self.port, tls_port=self.port,
                                               validity=validity)
        self.addCleanup(lambda: ensureDeferred(pebble.stop()))
        await pebble.start()
        self.root = pebble.fetch_root()
        server = self.server = await start_postgres(self)
        await server.create_compute_tables()
        self.backend, self.echo = self.serve_echo("app")
        await insert_container(server, "web1", ip="127.0.0.1")
        key = Path(self.mktemp()).absolute()
        key.write_text(generate_key_text())
        self.args = ["--database", server.dsn(), "--acme-directory", pebble.directory, "--acme-ca-bundle",
                     pebble.wfe_ca, "--acme-storage-key", str(key), "--acme-challenges", challenges,
                     "--acme-check-interval", "1", "--poll-interval", "1"]
        self.gateway = await self.start_gateway([*self.args, "--listen", f"tcp:{self.port}:interface=127.0.0.1"])
        await poll_until(lambda: ensureDeferred(self.tables_created()), "the gateway's tables", 20)
        await add_domain(server, NAME, "web1", self.backend.port)
        await self.served_plain(self.port)

    async def tables_created(self) -> bool:
        rows = await self.server.query("SELECT to_regclass('custom_domains')")
        return rows[0][0] is not None

    async def served_plain(self, port: int, name: str = NAME) -> None:
        async def answered() -> bool:
            response = await curl(f"http://127.0.0.1:{port}/", "-H", f"Host: {name}")
            return response.status in (200, 301)

        await poll_until(answered, f"{name} served over plain HTTP", 20)

    async def first_https(self, port: int, name: str = NAME) -> tuple[Any, float]:
        started = time.monotonic()
        response = await curl(f"https://{name}:{port}/", "--resolve", f"{name}:{port}:127.0.0.1",
                              "--cacert", self.root)
        return response, time.monotonic() - started

    async def check_first_connection(self) -> None:
        orders = self.pebble.orders
        response, seconds = await self.first_https(self.port)
        self.assertEqual(response.status, 200, response.describe())
        self.assertEqual(response.json()["path"], "/")
        self.assertEqual(self.pebble.orders, orders + 1)
        connection = await deferToThread(handshake, self.port, NAME, self.root)
        certificate = presented(connection)
        connection.close()
        self.assertIn("Pebble Intermediate CA", certificate.issuer.rfc4514_string())
        print(f"\nfirst connection to a served certificate: {seconds:.2f} s")
        # Plain HTTP now redirects, but for the ACME path.
        plain = await curl(f"http://127.0.0.1:{self.port}/x", "-H", f"Host: {NAME}")
        self.assertEqual((plain.status, plain.header("location")), (301, f"https://{NAME}/x"))
        challenge = await curl(f"http://127.0.0.1:{self.port}/.well-known/acme-challenge/nope", "-H",
                               f"Host: {NAME}")
        self.assertEqual(challenge.status, 200)
        self.assertEqual(challenge.json()["path"], "/.well-known/acme-challenge/nope")
        metrics = (await curl(self.gateway.admin_url())).text
        self.assertIn('edd_gateway_acme_certificates_total{outcome="issued"} 1.0', metrics)
        self.assertIn(f'edd_gateway_acme_certificate_expiry_timestamp_seconds{{domain="{NAME}"}}', metrics)
        self.assertIn('edd_gateway_custom_domains{state="served"} 1.0', metrics)

    async def test_http01(self) -> None:
        await self.start_all("http-01")
        await self.check_first_connection()
        self.assertIn("Attempting to validate w/ HTTP", self.pebble.output)

    async def test_tls_alpn01(self) -> None:
        await self.start_all("tls-alpn-01")
        await self.check_first_connection()
        self.assertIn("ACME TLS-ALPN-01 validation handshake", self.gateway.log_text())

    async def test_second_replica_stopped_container_unknown_name(self) -> None:
        await self.start_all("tls-alpn-01,http-01")
        response, _ = await self.first_https(self.port)
        self.assertEqual(response.status, 200, response.describe())
        orders = self.pebble.orders
        first = presented(await deferToThread(handshake, self.port, NAME, self.root))
        # A second replica on the same database serves the same certificate without issuing.
        second = await self.start_gateway(self.args)
        await self.served_plain(second.port)
        connection = await deferToThread(handshake, second.port, NAME, self.root)
        self.assertEqual(presented(connection).serial_number, first.serial_number)
        connection.close()
        self.assertEqual(self.pebble.orders, orders)
        # An unknown name in SNI: no ACME traffic.
        unknown = await curl("https://unknown.example.test:%d/" % self.port, "--resolve",
                             f"unknown.example.test:{self.port}:127.0.0.1", "-k")
        self.assertEqual(unknown.status, 404, unknown.describe())
        self.assertEqual(self.pebble.orders, orders)
        # A stopped container's domain is no longer served, and gets no issuance.
        await add_domain(self.server, "other.example.test", "web1", self.backend.port)
        await self.server.execute("UPDATE containers SET status = 'stopped' WHERE id = 'web1'")

        async def gone() -> bool:
            plain = await curl(f"http://127.0.0.1:{self.port}/", "-H", f"Host: {NAME}")
            return plain.status == 404

        await poll_until(gone, "the stopped container's domain to go", 20)
        for name in (NAME, "other.example.test"):
            refused = await curl(f"https://{name}:{self.port}/", "--resolve", f"{name}:{self.port}:127.0.0.1", "-k")
            self.assertEqual(refused.status, 404, refused.describe())
        self.assertEqual(self.pebble.orders, orders)

    async def check_validation_elsewhere(self, challenges: str, evidence: str) -> None:
        # Pebble validates at the first gateway's listener; the order is placed by a second one.
        await self.start_all(challenges)
        issuing = await self.start_gateway(self.args)
        await self.served_plain(issuing.port)
        response, seconds = await self.first_https(issuing.port)
        self.assertEqual(response.status, 200, response.describe())
        print(f"\nfirst connection, validated at another replica: {seconds:.2f} s")
        self.assertIn("obtained a certificate for app.example.test", issuing.log_text())
        self.assertNotIn("obtained a certificate", self.gateway.log_text())
        self.assertIn(evidence, self.gateway.log_text())

    async def test_http01_answered_by_another_replica(self) -> None:
        await self.check_validation_elsewhere("http-01", "backend=internal:acme-http-01")

    async def test_tls_alpn01_answered_by_another_replica(self) -> None:
        await self.check_validation_elsewhere("tls-alpn-01", "ACME TLS-ALPN-01 validation handshake")

    async def test_ca_forgets_the_account(self) -> None:
        await self.start_all("http-01")
        response, _ = await self.first_https(self.port)
        self.assertEqual(response.status, 200, response.describe())
        await self.pebble.restart()
        self.root = self.pebble.fetch_root()
        await add_domain(self.server, "b.example.test", "web1", self.backend.port)
        await self.served_plain(self.port, "b.example.test")
        response, _ = await self.first_https(self.port, "b.example.test")
        self.assertEqual(response.status, 200, response.describe())
        self.assertEqual(self.pebble.output.count("There are now 1 accounts in memory"), 2)

    async def test_renewal_without_restart(self) -> None:
        await self.start_all("http-01", validity=15)
        response, _ = await self.first_https(self.port)
        self.assertEqual(response.status, 200, response.describe())
        connection = await deferToThread(handshake, self.port, NAME, self.root)
        first = presented(connection)
        # A request first: an idle keep-alive connection then waits --keepalive-timeout (60 s), where a fresh
        # one without ALPN gets --header-timeout (10 s) to show which HTTP it speaks.
        answer = await deferToThread(get, connection, NAME)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])

        async def renewed() -> bool:
            fresh = await deferToThread(handshake, self.port, NAME, self.root)
            serial = presented(fresh).serial_number
            fresh.close()
            return serial != first.serial_number

        await poll_until(renewed, "a renewed certificate", 40, interval=0.5)
        answer = await deferToThread(get, connection, NAME)
        connection.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        self.assertIn("renewed a certificate for app.example.test", self.gateway.log_text())


async def add_domain(server: ThrowawayPostgres, name: str, container_id: str, port: int) -> None:
    await server.execute(
        "INSERT INTO custom_domains (id, user_id, container_id, domain, target_port, verify_token, status)"
        " VALUES (%s, 'u1', %s, %s, %s, 'token', 'active')", (f"d-{name}", container_id, name, port))


__all__ = ["CustomDomainsTests", "GatewayProcess", "reactor"]
