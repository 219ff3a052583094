"""
End-to-end test of the JSON log output: the real ``twistd --logger=
edd_gateway.ops.logs.json_to_stdout edd-gateway`` in a subprocess, real curl in
front of it, an echo backend behind it; every line the gateway writes is a
JSON object, and the request shows up as one access event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, GatewayProcess, poll_until, require_tool, routes_yaml

HOST = "app.test"
JSON_LOGGER = "--logger=edd_gateway.ops.logs.json_to_stdout"


class JSONLogTests(EndToEndMixin, TestCase):
    timeout = 60

    def setUp(self) -> None:
        require_tool("curl")

    async def start_json_gateway(self, routes: list[dict[str, Any]]) -> GatewayProcess:
        gateway = GatewayProcess(self.mktemp(), twistd_args=[JSON_LOGGER])
        routes_path = gateway.workdir / "routes.yaml"
        Path(routes_path).write_text(routes_yaml(routes))
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        await gateway.start(["--routes", str(routes_path)])
        return gateway

    def records(self, gateway: GatewayProcess) -> list[dict[str, Any]]:
        records = []
        for number, line in enumerate(gateway.log_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail(f"gateway output line {number} is not JSON: {line!r}")
        return records

    def access_events(self, gateway: GatewayProcess) -> list[dict[str, Any]]:
        return [r for r in self.records(gateway) if r.get("namespace") == "edd_gateway.access"]

    async def test_access_event_for_a_proxied_request(self) -> None:
        backend, _ = self.serve_echo()
        gateway = await self.start_json_gateway([{"host": HOST, "path": "/", "target": backend.target}])
        response = await self.curl(gateway.url("/logs/here?x=1"), "-H", f"Host: {HOST}")
        self.assertEqual(response.status, 200, response.describe())
        request_id = response.header("X-Request-ID")
        self.assertTrue(request_id)

        (event,) = await poll_until(lambda: self.access_events(gateway), "the access event in the gateway's output")
        self.assertEqual(event["level"], "info")
        self.assertTrue(event["time"].endswith("Z"), event["time"])
        self.assertEqual(event["client"], "127.0.0.1")
        self.assertEqual(event["status"], 200)
        self.assertEqual(event["route"], f"{HOST}/")
        self.assertEqual(event["request_id"], request_id)
        self.assertEqual((event["method"], event["host"], event["target"]), ("GET", HOST, "/logs/here?x=1"))
        self.assertEqual(event["backend"], backend.target)
        self.assertEqual(event["bytes_out"], len(response.body))
        self.assertIsInstance(event["duration_ms"], (int, float))
        self.assertTrue(event["completed"])
        self.assertEqual(event["message"], (
            f'127.0.0.1 "GET {HOST}/logs/here?x=1" 200 {event["bytes_out"]} {event["duration_ms"]}ms '
            f"route={HOST}/ backend={backend.target} id={request_id}"))

        # The startup lines are JSON too, the legacy ones from Twisted included.
        records = self.records(gateway)
        self.assertTrue(any(r["namespace"] == "edd_gateway.tap" for r in records), records[:5])
        self.assertTrue(any(r["namespace"] == "log_legacy" for r in records), records[:5])
