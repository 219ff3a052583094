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

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edd_gateway.testing import (
    echo_header,
    free_port,
    poll_until,
)
from edd_gateway.testing.tls import common_name, make_pair
from tests._support.tls_gateway import TLSCase

class CertificateChoiceTests(TLSCase):
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
        # HTTP/2 first when offered (docs/http2.md), HTTP/1.1 for a client offering only it.
        self.assertIn("ALPN protocol: h2", modern)
        _, http11 = await self.s_client("app.cloud.test", "-alpn", "http/1.1")
        self.assertIn("ALPN protocol: http/1.1", http11)
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


class TerminationTests(TLSCase):
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


class PassthroughTests(TLSCase):
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
