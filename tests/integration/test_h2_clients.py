"""
HTTP/2 through the real ``twistd edd-gateway`` with the clients people use:
``openssl s_client -alpn``, ``curl --http2``, ``nghttp`` and ``h2load``
(Debian's nghttp2-client), against a real backend (twisted.web) behind an
HTTP/1.1 route.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from edd_gateway.testing import DownloadResource, EndToEndMixin, download_sha256, require_tool, run_process
from edd_gateway.testing.backends import web_factory


class HTTP2ClientTests(EndToEndMixin, TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        backend, self.echo = self.serve_echo()
        root = Resource()
        root.putChild(b"download", DownloadResource())
        download = self.serve(web_factory(root))
        self.gateway = await self.start_gateway(routes=[
            {"host": "localhost", "path": "/download", "target": download.target},
            {"host": "localhost", "path": "/", "target": backend.target},
        ])
        self.base = f"https://localhost:{self.gateway.port}"

    async def tool(self, *argv: str, timeout: float = 60) -> str:
        run = run_process(argv, timeout=timeout)
        await run.result()
        self.assertFalse(run.timed_out, f"{argv[0]} timed out")
        return (run.out + run.err).decode("utf-8", "replace")

    async def test_alpn_answer_is_h2(self) -> None:
        openssl = require_tool("openssl")
        out = await self.tool("/bin/sh", "-c", f"'{openssl}' s_client -connect 127.0.0.1:{self.gateway.port} "
                              "-servername localhost -alpn h2,http/1.1 < /dev/null")
        self.assertIn("ALPN protocol: h2", out)

    async def test_no_http2_answers_http11(self) -> None:
        openssl = require_tool("openssl")
        gateway = await self.start_gateway(["--no-http2"], routes=[])
        out = await self.tool("/bin/sh", "-c", f"'{openssl}' s_client -connect 127.0.0.1:{gateway.port} "
                              "-servername localhost -alpn h2,http/1.1 < /dev/null")
        self.assertIn("ALPN protocol: http/1.1", out)

    async def test_curl_http2(self) -> None:
        curl = require_tool("curl")
        out = await self.tool(curl, "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                             f"{self.base}/hello?x=1")
        self.assertEqual(out.strip(), "2 200")
        post = await self.tool(curl, "-sk", "--http2", "--data-binary", "payload-" * 1000, f"{self.base}/echo")
        self.assertIn('"method": "POST"', post)
        self.assertIn('"body_length": 8000', post)

    async def test_curl_large_download_over_h2(self) -> None:
        curl = require_tool("curl")
        size = 8 * 1024 * 1024
        digest = await self.tool("/bin/sh", "-c", f"'{curl}' -sk --http2 '{self.base}/download/{size}' | sha256sum")
        self.assertEqual(digest.split()[0], download_sha256(size))

    async def test_nghttp_multiplexes(self) -> None:
        nghttp = require_tool("nghttp")
        out = await self.tool(nghttp, "-nv", "-m", "10", f"{self.base}/a")
        statuses = re.findall(r":status: (\d+)", out)
        self.assertEqual(statuses, ["200"] * 10, out[-2000:])
        self.assertIn("recv SETTINGS frame", out)
        self.assertIn("SETTINGS_ENABLE_CONNECT_PROTOCOL(0x08):1", out)

    async def test_h2load(self) -> None:
        h2load = require_tool("h2load")
        out = await self.tool(h2load, "-n", "2000", "-c", "10", "-m", "10", f"{self.base}/")
        self.assertIn("2000 succeeded, 0 failed, 0 errored", out)
        self.assertIn("status codes: 2000 2xx", out)
        scrape = await self.scrape(self.gateway)
        self.assertEqual(scrape.value("edd_gateway_http2_events_total", event="connection"), 10)
        self.assertGreaterEqual(scrape.value("edd_gateway_http2_events_total", event="stream"), 2000)
