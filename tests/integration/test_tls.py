"""
End-to-end tests of TLS on the sniffing port: the real ``twistd edd-gateway``
with certificates these tests make (an exact name, a wildcard, a default),
real ``openssl s_client -servername`` and ``curl --resolve`` in front of it,
a TLS backend with its own certificate behind a passthrough route, and a
Python TLS client in memory-BIO mode over a raw socket for what those tools
cannot do: a ClientHello trickled a few bytes at a time over many TLS
records, and one connection kept open across a certificate renewal.
"""

from __future__ import annotations

import os
import re
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from edd_gateway.testing import (
    BackendServer,
    EchoResource,
    EndToEndMixin,
    RawConnection,
    RawResponse,
    echo_header,
    free_port,
    parse_responses,
    poll_until,
    require_tool,
    run_process,
    web_factory,
)
from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", re.S)


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


class _TLSCase(EndToEndMixin, TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.openssl = require_tool("openssl")
        self.curl_path = require_tool("curl")
        self.dir = Path(self.mktemp()).absolute()
        secrets = self.dir / "secrets"
        self.exact_key_pair = make_pair("app.cloud.test")
        self.exact = self.exact_key_pair[0]
        self.exact_volume = SecretVolume(secrets / "app")
        self.exact_volume.publish(*self.exact_key_pair)
        self.wildcard = write_pair(secrets / "wildcard", "*.cloud.test")
        self.default = write_pair(self.dir / "default", "default.test")
        self.backend_certificate, backend_key = make_pair("vm.cloud.test")
        self.echo_backend, self.echo = self.serve_echo("plain")
        self.tls_echo = EchoResource("tls-backend")
        self.tls_backend: BackendServer = self.serve(
            TLSMemoryBIOFactory(BackendTLS(self.backend_certificate, backend_key), False, web_factory(self.tls_echo))
        )
        self.vm_target = self.tls_backend.target

    def routes(self) -> list[dict[str, Any]]:
        echo = self.echo_backend.target
        return [
            {"host": "app.cloud.test", "path": "/", "target": echo},
            {"host": "other.cloud.test", "path": "/", "target": echo},
            {"host": "secure.test", "path": "/", "target": echo, "redirect_https": True},
            {"host": "vm.cloud.test", "path": "/", "target": self.vm_target, "tls": "passthrough"},
        ]

    async def start(self, *extra: str) -> None:
        args = ["--tls-dir", str(self.dir / "secrets"), "--tls-dir", str(self.dir / "default"),
                "--default-cert", "default.test", "--cert-check-interval", "0.2", *extra]
        self.gateway = await self.start_gateway(args, routes=self.routes())

    async def s_client(self, server_name: str | None, *args: str) -> tuple[x509.Certificate | None, str]:
        """The certificate C{openssl s_client} was shown, and its output."""
        sni = ["-servername", server_name] if server_name else ["-noservername"]
        argv = [self.openssl, "s_client", "-connect", f"127.0.0.1:{self.gateway.port}", *sni, *args]
        run = run_process(argv, timeout=20)
        run.transport.closeStdin()
        await run.result()
        output = bytes(run.out + run.err).decode("utf-8", "replace")
        found = _PEM.search(bytes(run.out))
        return (x509.load_pem_x509_certificate(found.group(0)) if found else None), output

    async def presented(self, server_name: str | None) -> x509.Certificate:
        certificate, output = await self.s_client(server_name)
        self.assertIsNotNone(certificate, f"no certificate for SNI {server_name}:\n{output}")
        assert certificate is not None
        return certificate

    async def https(self, host: str, path: str = "/", *args: str, cacert: x509.Certificate | None = None) -> Any:
        port = self.gateway.port
        trust = ["--cacert", write_pem(self.dir / f"trust-{host}.pem", cacert)] if cacert else ["-k"]
        return await self.curl(f"https://{host}:{port}{path}", "--resolve", f"{host}:{port}:127.0.0.1",
                               *trust, *args)

    async def raw_tls(self, server_name: str) -> MemoryTLSClient:
        return MemoryTLSClient(await self.raw(self.gateway.port), server_name)


class CertificateChoiceTests(_TLSCase):
    async def test_exact_wildcard_and_default_by_sni(self) -> None:
        await self.start()
        expected = {
            "app.cloud.test": self.exact,
            "other.cloud.test": self.wildcard,
            "a.b.cloud.test": self.default,
            "cloud.test": self.default,
            "unknown.example": self.default,
            None: self.default,
        }
        for server_name, certificate in expected.items():
            presented = await self.presented(server_name)
            self.assertEqual(presented, certificate, f"SNI {server_name}: got {common_name(presented)}")

    async def test_protocol_policy(self) -> None:
        await self.start()
        _, modern = await self.s_client("app.cloud.test", "-alpn", "h2,http/1.1")
        self.assertIn("ALPN protocol: http/1.1", modern)
        self.assertIn("TLSv1.3", modern)
        _, tls12 = await self.s_client("app.cloud.test", "-tls1_2")
        self.assertRegex(tls12, r"Cipher is ECDHE-(ECDSA|RSA)-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)")
        certificate, tls11 = await self.s_client("app.cloud.test", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertIsNone(certificate, tls11)

    async def test_embedded_default_serves_https_with_a_development_certificate(self) -> None:
        self.gateway = await self.start_gateway()
        directory = self.gateway.workdir / "edd-gateway-state" / "dev-tls"
        self.assertTrue((directory / "tls.crt").exists())
        self.assertIn(str(directory), self.gateway.log_text())
        response = await self.https("localhost", cacert=x509.load_pem_x509_certificate(
            (directory / "tls.crt").read_bytes()))
        self.assertEqual(response.status, 200, response.describe())
        self.assertIn("edd-gateway is running", response.text)
        plain = await self.curl(self.gateway.url("/", "localhost"))
        self.assertEqual(plain.status, 200, "plain HTTP on the same port")


class TerminationTests(_TLSCase):
    async def test_https_proxied_with_forwarded_proto(self) -> None:
        await self.start()
        response = await self.https("app.cloud.test", "/p?q=1", cacert=self.exact)
        self.assertEqual(response.status, 200, response.describe())
        seen = response.json()
        self.assertEqual(seen["path"], "/p?q=1")
        self.assertEqual(echo_header(seen, "x-forwarded-proto"), ["https"])
        self.assertEqual(echo_header(seen, "x-forwarded-for"), ["127.0.0.1"])
        wildcard = await self.https("other.cloud.test", cacert=self.wildcard)
        self.assertEqual(wildcard.status, 200, wildcard.describe())

    async def test_host_the_certificate_was_not_chosen_for_gets_421(self) -> None:
        await self.start()
        for host in ("other.cloud.test", "secure.test"):
            response = await self.https("app.cloud.test", "/", "-H", f"Host: {host}", cacert=self.exact)
            self.assertEqual(response.status, 421, f"Host {host}: {response.describe()}")
        self.assertEqual(self.echo.requests, [], "no backend saw a misdirected request")
        passthrough_host = await self.https("other.cloud.test", "/", "-H", "Host: vm.cloud.test", cacert=self.wildcard)
        self.assertEqual(passthrough_host.status, 421, passthrough_host.describe())
        plain = await self.curl(self.gateway.url("/"), "-H", "Host: other.cloud.test")
        self.assertEqual(plain.status, 200, "plain HTTP has no certificate to disagree with")

    async def test_redirects(self) -> None:
        await self.start("--main-site", "https://www.cloud.test/")
        plain = await self.curl(self.gateway.url("/a/b?c=d"), "-H", "Host: secure.test")
        self.assertEqual(plain.status, 301, plain.describe())
        self.assertEqual(plain.header("Location"), "https://secure.test/a/b?c=d")
        secure = await self.https("secure.test", "/a/b?c=d")
        self.assertEqual(secure.status, 200, secure.describe())
        for url in (self.gateway.url("/x"), f"https://127.0.0.1:{self.gateway.port}/x"):
            by_address = await self.curl(url, "-k")
            self.assertEqual(by_address.status, 301, f"{url}: {by_address.describe()}")
            self.assertEqual(by_address.header("Location"), "https://www.cloud.test/")

    async def test_clienthello_trickled_over_many_records(self) -> None:
        await self.start()
        client = await self.raw_tls("app.cloud.test")
        await client.handshake(chunk=5, record_size=40)
        self.assertEqual(client.presented(), self.exact)
        response = await client.request("app.cloud.test", "/trickled")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["path"], "/trickled")

    async def test_garbage_after_0x16_closes_only_that_connection(self) -> None:
        await self.start()
        connection = await self.raw(self.gateway.port)
        connection.send(b"\x16\x03\x01\x00\x30" + b"\x07" * 48)
        await connection.read_until_closed()
        await poll_until(lambda: "malformed ClientHello" in self.gateway.log_text(), "the refusal's log line")
        [line] = [line for line in self.gateway.log_text().splitlines() if "malformed ClientHello" in line]
        self.assertIn("127.0.0.1:", line)
        self.assertIn("not ClientHello", line)
        response = await self.https("app.cloud.test", cacert=self.exact)
        self.assertEqual(response.status, 200, "the gateway still serves others")

    async def test_renewal_while_a_connection_is_open(self) -> None:
        await self.start()
        held = await self.raw_tls("app.cloud.test")
        await held.handshake()
        self.assertEqual(held.presented(), self.exact)
        self.assertEqual((await held.request("app.cloud.test", "/before")).status, 200)

        renewed, key = make_pair("app.cloud.test")
        self.exact_volume.publish(renewed, key)
        await poll_until(lambda: self.presented_is("app.cloud.test", renewed), "the renewed certificate", 15)
        response = await held.request("app.cloud.test", "/after")
        self.assertEqual(response.status, 200, "the open connection keeps working")
        self.assertEqual(response.json()["path"], "/after")
        fresh = await self.raw_tls("app.cloud.test")
        await fresh.handshake()
        self.assertEqual(fresh.presented(), renewed)

        # A broken pair (key of another certificate) keeps the renewed one.
        broken, _ = make_pair("app.cloud.test")
        self.exact_volume.publish(broken, make_pair("x.test")[1])
        await poll_until(lambda: "Keeping the previous TLS certificate" in self.gateway.log_text(),
                         "the refusal of the broken pair", 15)
        self.assertEqual(await self.presented("app.cloud.test"), renewed)

    async def presented_is(self, server_name: str, certificate: x509.Certificate) -> bool:
        return await self.presented(server_name) == certificate


class PassthroughTests(_TLSCase):
    async def test_client_sees_the_backends_certificate(self) -> None:
        await self.start()
        presented = await self.presented("vm.cloud.test")
        self.assertEqual(presented.fingerprint(hashes.SHA256()), self.backend_certificate.fingerprint(hashes.SHA256()))
        self.assertEqual(common_name(presented), "vm.cloud.test")
        response = await self.https("vm.cloud.test", "/inside", cacert=self.backend_certificate)
        self.assertEqual(response.status, 200, response.describe())
        self.assertEqual(response.header("X-Backend"), "tls-backend")
        seen = response.json()
        self.assertEqual(seen["path"], "/inside")
        self.assertEqual(echo_header(seen, "x-forwarded-for"), [], "the gateway never saw the request")
        await poll_until(lambda: "passed through" in self.gateway.log_text(), "the passthrough log line")
        line = next(line for line in self.gateway.log_text().splitlines() if "passed through" in line)
        self.assertIn("vm.cloud.test", line)
        self.assertIn(self.tls_backend.target, line)
        self.assertIn("127.0.0.1:", line)

    async def test_clienthello_trickled_to_the_backend(self) -> None:
        await self.start()
        client = await self.raw_tls("vm.cloud.test")
        await client.handshake(chunk=3, record_size=50)
        self.assertEqual(client.presented(), self.backend_certificate)
        response = await client.request("vm.cloud.test", "/slowly")
        self.assertEqual((response.status, response.header("X-Backend")), (200, "tls-backend"))

    async def test_unreachable_backend_is_logged_and_closed(self) -> None:
        self.vm_target = f"127.0.0.1:{free_port()}"
        await self.start()
        certificate, output = await self.s_client("vm.cloud.test")
        self.assertIsNone(certificate, output)
        await poll_until(lambda: "refused the connection" in self.gateway.log_text(), "the refusal's log line")
        response = await self.https("app.cloud.test", cacert=self.exact)
        self.assertEqual(response.status, 200, "others are still served")
