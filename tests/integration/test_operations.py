"""
End-to-end tests of what operators watch and do: the admin endpoint
(C{/metrics} read with prometheus-client's own text parser, C{/readyz},
C{/healthz}) and the graceful drain on SIGTERM, against the real
``twistd edd-gateway`` with real curl.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    DownloadResource,
    EndToEndMixin,
    MetricsScrape,
    download_sha256,
    poll_until,
    require_tool,
    routes_yaml,
    run_process,
    web_factory,
)

HOST = "app.test"


def route(target: str, path: str = "/") -> dict[str, Any]:
    return {"host": HOST, "path": path, "target": target}


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_tool("curl")

    async def scrape(self, gateway: Any) -> MetricsScrape:
        scrape = await super().scrape(gateway)
        self.assertTrue(scrape.content_type.startswith("text/plain"))
        return scrape

    async def readyz(self, gateway: Any) -> tuple[int, dict[str, Any]]:
        response = await self.curl(gateway.admin_url("/readyz"))
        return response.status, json.loads(response.text)


class MetricsTests(_Case):
    async def test_counters_move_with_traffic(self) -> None:
        backend, _ = self.serve_echo()
        gateway = await self.start_gateway(routes=[route(backend.target)])
        before = await self.scrape(gateway)
        ok = await self.curl(gateway.url("/hello"), "-H", f"Host: {HOST}")
        missing = await self.curl(gateway.url("/"), "-H", "Host: nowhere.test")
        secure = await self.curl(f"https://localhost:{gateway.port}/", "-k")
        self.assertEqual((ok.status, missing.status, secure.status), (200, 404, 404))
        after = await self.scrape(gateway)

        def moved(name: str, **labels: str) -> float:
            return after.value(name, **labels) - before.value(name, **labels)

        self.assertEqual(moved("edd_gateway_http_requests_total", route=f"{HOST}/", status="200", scheme="http"), 1)
        self.assertEqual(moved("edd_gateway_http_requests_total", route="-", status="404", scheme="http"), 1)
        self.assertEqual(moved("edd_gateway_http_requests_total", status="404", scheme="https"), 1)
        self.assertEqual(moved("edd_gateway_http_upstream_response_seconds_count", route=f"{HOST}/"), 1)
        self.assertGreater(moved("edd_gateway_http_upstream_response_seconds_sum", route=f"{HOST}/"), 0)
        self.assertGreater(moved("edd_gateway_bytes_total", protocol="http", direction="out"), 0)
        self.assertEqual(moved("edd_gateway_tls_handshakes_total", result="ok"), 1)
        # Scrapes go to the admin endpoint, not to a sniffing listener.
        self.assertEqual(moved("edd_gateway_connections_total", protocol="HTTP"), 2)
        self.assertEqual(moved("edd_gateway_connections_total", protocol="TLS"), 1)
        self.assertEqual(after.value("edd_gateway_routes"), 1)
        self.assertEqual(after.value("edd_gateway_draining"), 0)

    async def test_a_refused_routes_file_shows_in_metrics_and_readyz(self) -> None:
        backend, _ = self.serve_echo()
        gateway = await self.start_gateway(["--reload-interval", "0.1"], routes=[route(backend.target)])
        status, body = await self.readyz(gateway)
        self.assertEqual((status, body["ready"], body["parts"]["routes"]["state"]), (200, True, "ok"))
        with open(gateway.workdir / "routes.yaml", "w") as routes:
            routes.write("routes:\n  - host: [unclosed\n")

        async def refused() -> bool:
            return (await self.scrape(gateway)).value("edd_gateway_routes_reloads_total", result="failed") >= 1

        await poll_until(refused, "the bad routes file to be refused", 10)
        status, body = await self.readyz(gateway)
        self.assertEqual(status, 200, "the last good table is still served: still ready")
        self.assertEqual(body["parts"]["routes"]["state"], "degraded")
        self.assertIn("routes.yaml", body["parts"]["routes"]["detail"])
        with open(gateway.workdir / "routes.yaml", "w") as routes:
            routes.write(routes_yaml([route(backend.target), route(backend.target, "/two")]))

        async def reloaded() -> bool:
            return (await self.scrape(gateway)).value("edd_gateway_routes") == 2

        await poll_until(reloaded, "the good routes file to be loaded", 10)
        status, body = await self.readyz(gateway)
        self.assertEqual(body["parts"]["routes"]["state"], "ok")

    async def test_healthz(self) -> None:
        gateway = await self.start_gateway()
        response = await self.curl(gateway.admin_url("/healthz"))
        self.assertEqual((response.status, response.text), (200, "ok\n"))


class DrainTests(_Case):
    timeout = 120

    async def test_slow_download_finishes_across_sigterm_while_new_connections_are_refused(self) -> None:
        backend = self.serve(web_factory(DownloadResource()))
        gateway = await self.start_gateway(["--drain-timeout", "30"], routes=[route(backend.target)])
        # Far more than loopback socket buffers hold (several MiB with
        # autotuning), so most of it is still to send when SIGTERM comes.
        size = 64 * 1024 * 1024
        target = self.mktemp()
        # 16 MB/s: about four seconds, most of them after the SIGTERM.
        download = run_process(
            [require_tool("curl"), "-sS", "--limit-rate", "16M", "-H", f"Host: {HOST}", "-o", target,
             "-w", "%{http_code}", gateway.url(f"/{size}")], timeout=60)
        await poll_until(lambda: os.path.exists(target) and os.path.getsize(target) > 0,
                         "the download to start", 10)
        signalled = reactor.seconds()
        gateway.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        await poll_until(refused, "the listener to stop accepting", 5)
        status, body = await self.readyz(gateway)
        self.assertEqual((status, body["ready"], body["parts"]["draining"]["state"]), (503, False, "down"))
        self.assertIsNone(gateway.process.poll(), "the gateway must wait for the download")
        run = await download.result()
        self.assertEqual((run.exit_code, bytes(run.out)), (0, b"200"), run.err)
        with open(target, "rb") as got:
            self.assertEqual(hashlib.sha256(got.read()).hexdigest(), download_sha256(size))
        await poll_until(lambda: gateway.process.poll() is not None, "the gateway to exit after the drain", 10)
        self.assertLess(reactor.seconds() - signalled, 30, "within the grace period")
        self.assertIn("drain: every connection finished", gateway.log_text())

    async def test_tunnels_left_at_the_end_of_the_grace_period_are_closed(self) -> None:
        backend = self.serve(web_factory(DownloadResource()))
        gateway = await self.start_gateway(["--drain-timeout", "1"], routes=[route(backend.target)])
        target = self.mktemp()
        # Far too slow to finish within the one-second grace period; fast
        # enough to read what the socket buffers hold after the cut quickly.
        size = 512 * 1024 * 1024
        download = run_process(
            [require_tool("curl"), "-sS", "--limit-rate", "2000k", "-H", f"Host: {HOST}", "-o", target,
             gateway.url(f"/{size}")], timeout=60)
        await poll_until(lambda: os.path.exists(target) and os.path.getsize(target) > 0,
                         "the download to start", 10)
        signalled = reactor.seconds()
        gateway.signal(signal.SIGTERM)
        await poll_until(lambda: gateway.process.poll() is not None, "the gateway to exit", 10)
        self.assertLess(reactor.seconds() - signalled, 1 + 1 + 2, "grace, final close time, slack")
        self.assertIn("drain: grace period over; closing 1 connections", gateway.log_text())
        run = await download.result()
        self.assertNotEqual(run.exit_code, 0, "cut short at the end of the grace period")
        self.assertLess(os.path.getsize(target), size)
