"""
End-to-end tests of issue 14 items 4 and 7 against the real ``twistd
edd-gateway`` with curl in front: unknown methods and the HTTP/2 preface on
the plain sniffing port, an underscore header that never reaches the
backend, and a route's response headers and HSTS over terminated TLS
(HSTS never over plain HTTP on the same port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, echo_header, poll_until, require_tool
from edd_gateway.testing.tls import write_pair, write_pem


class EdgeHeadersTests(EndToEndMixin, TestCase):
    timeout = 120

    def setUp(self) -> None:
        require_tool("curl")
        self.dir = Path(self.mktemp()).absolute()
        self.certificate = write_pair(self.dir / "secrets" / "app", "app.cloud.test")
        self.backend, self.echo = self.serve_echo("plain")

    def routes(self) -> list[dict[str, Any]]:
        return [{
            "host": "app.cloud.test", "path": "/", "target": self.backend.target,
            "response_headers": {"set": {"X-Frame-Options": "DENY"}, "remove": ["Server"]},
            "hsts": {"max_age": 31536000, "include_subdomains": True},
        }]

    async def start(self) -> None:
        self.gateway = await self.start_gateway(["--tls-dir", str(self.dir / "secrets")], routes=self.routes())

    async def test_hsts_and_removed_server_over_tls_only(self) -> None:
        await self.start()
        port = self.gateway.port
        trust = write_pem(self.dir / "trust.pem", self.certificate)
        tls = await self.curl(f"https://app.cloud.test:{port}/", "--resolve", f"app.cloud.test:{port}:127.0.0.1",
                              "--cacert", trust)
        self.assertEqual(tls.status, 200, tls.describe())
        self.assertEqual(tls.header("Strict-Transport-Security"), "max-age=31536000; includeSubDomains")
        self.assertIsNone(tls.header("Server"), tls.describe())
        self.assertEqual(tls.header("X-Frame-Options"), "DENY")
        plain = await self.curl(self.gateway.url("/"), "-H", "Host: app.cloud.test")
        self.assertEqual(plain.status, 200, plain.describe())
        self.assertIsNone(plain.header("Strict-Transport-Security"), plain.describe())
        self.assertIsNone(plain.header("Server"))
        # The backend does send one: the edge removed it.
        direct = await self.curl(f"http://{self.backend.target}/")
        self.assertIsNotNone(direct.header("Server"), direct.describe())

    async def test_unknown_and_lower_case_methods_get_501(self) -> None:
        await self.start()
        for method in ("FOO", "get"):
            response = await self.curl(self.gateway.url("/a"), "-H", "Host: app.cloud.test", "-X", method)
            self.assertEqual(response.status, 501, response.describe())

    async def test_http2_prior_knowledge_refused_clearly(self) -> None:
        await self.start()
        response = await self.curl(self.gateway.url("/"), "-H", "Host: app.cloud.test", "--http2-prior-knowledge",
                                   "-v")
        self.assertNotEqual(response.exit_code, 0, response.describe())
        # curl 7.88 names the reason only in its verbose lines (13 is
        # HTTP_1_1_REQUIRED), then fails with "Error in the HTTP2 framing
        # layer"; a close without the SETTINGS frame first reads as "Empty
        # reply from server".
        self.assertRegex(response.stderr, r"GOAWAY, error=13\b", response.describe())
        await poll_until(lambda: "sent the HTTP/2 connection preface" in self.gateway.log_text(),
                         "the gateway's log line naming the preface", 10)

    async def test_underscore_header_dropped(self) -> None:
        await self.start()
        response = await self.curl(self.gateway.url("/"), "-H", "Host: app.cloud.test",
                                   "-H", "Transfer_Encoding: chunked", "-H", "X-Kept: 1")
        self.assertEqual(response.status, 200, response.describe())
        seen = response.json()
        self.assertEqual(echo_header(seen, "transfer_encoding"), [])
        self.assertEqual(echo_header(seen, "x-kept"), ["1"])
        await poll_until(lambda: "dropped header Transfer_Encoding from 127.0.0.1" in self.gateway.log_text(),
                         "the gateway's log line naming the header", 10)
