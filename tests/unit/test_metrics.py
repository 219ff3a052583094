"""
The metrics (read back through prometheus-client's own text parser) and
the admin endpoint's resources, with fake records and a fake readiness.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from edd_gateway.ops.admin import DEGRADED, DOWN, OK, Part, Readiness, admin_site
from edd_gateway.ops.metrics import GatewayMetrics, Histogram, ListenerStats
from edd_gateway.ops.observe import SSHSessionRecord, TunnelRecord


def request(route: str = "app.test/", status: int = 200, *, started: float = 10.0, responded: float | None = 10.02,
            scheme: str = "http", bytes_in: int = 5, bytes_out: int = 100) -> Any:
    return SimpleNamespace(route_label=route, status=status, started=started, responded=responded, scheme=scheme,
                           bytes_in=bytes_in, bytes_out=bytes_out)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_cumulative_with_inf(self) -> None:
        histogram = Histogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 3.0):
            histogram.observe(value)
        self.assertEqual(histogram.buckets(), [("0.1", 2), ("1.0", 3), ("+Inf", 4)])
        self.assertAlmostEqual(histogram.total, 3.65)


class GatewayMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics()

    def test_http_requests_by_route_status_and_scheme(self) -> None:
        self.metrics.http_request(request(), 10.05)
        self.metrics.http_request(request(), 10.05)
        self.metrics.http_request(request("-", 404, responded=None), 10.001)
        self.metrics.http_request(request(status=0, responded=None), 10.5)
        got = samples(self.metrics)
        ok = ("route", "app.test/"), ("scheme", "http"), ("status", "200")
        self.assertEqual(got[("edd_gateway_http_requests_total", ok)], 2)
        self.assertEqual(got[("edd_gateway_http_requests_total",
                              (("route", "-"), ("scheme", "http"), ("status", "404")))], 1)
        self.assertEqual(got[("edd_gateway_http_requests_total",
                              (("route", "app.test/"), ("scheme", "http"), ("status", "none")))], 1,
                         "a client that left before any response")
        upstream = ("route", "app.test/"),
        self.assertEqual(got[("edd_gateway_http_upstream_response_seconds_count", upstream)], 2,
                         "only requests a backend answered")
        self.assertAlmostEqual(got[("edd_gateway_http_upstream_response_seconds_sum", upstream)], 0.04)
        self.assertEqual(got[("edd_gateway_http_upstream_response_seconds_bucket",
                              (("le", "0.025"), ("route", "app.test/")))], 2)
        self.assertEqual(got[("edd_gateway_http_upstream_response_seconds_bucket",
                              (("le", "0.01"), ("route", "app.test/")))], 0)
        self.assertEqual(got[("edd_gateway_http_request_duration_seconds_count", upstream)], 3)
        self.assertEqual(got[("edd_gateway_bytes_total", (("direction", "out"), ("protocol", "http")))], 400)
        self.assertEqual(got[("edd_gateway_bytes_total", (("direction", "in"), ("protocol", "http")))], 20)

    def test_tunnels_and_ssh(self) -> None:
        self.metrics.tunnel(TunnelRecord("websocket", "192.0.2.1", "app.test/", "10.0.0.1:80", 10, 20, 1.0, 2.0))
        self.metrics.ssh_login("refused")
        self.metrics.ssh_login("accepted")
        self.metrics.ssh_session(SSHSessionRecord("192.0.2.1", "root", "box", "10.0.0.2:22", "relayed", 300, 4000,
                                                  1.0, 9.0))
        got = samples(self.metrics)
        self.assertEqual(got[("edd_gateway_tunnels_total", (("kind", "websocket"),))], 1)
        self.assertEqual(got[("edd_gateway_bytes_total", (("direction", "out"), ("protocol", "websocket")))], 20)
        self.assertEqual(got[("edd_gateway_ssh_logins_total", (("outcome", "refused"),))], 1)
        self.assertEqual(got[("edd_gateway_ssh_sessions_total", (("outcome", "relayed"),))], 1)
        self.assertEqual(got[("edd_gateway_bytes_total", (("direction", "in"), ("protocol", "ssh")))], 300)

    def test_sources_are_read_at_each_scrape(self) -> None:
        state = {"open": 3, "routes": 7.0}
        self.metrics.add_listener(ListenerStats("tcp:443", lambda: state["open"], lambda: {"TLS": 8, "HTTP": 1}))
        self.metrics.add_gauge("edd_gateway_routes", "Routes.", lambda: [({}, state["routes"])])
        self.metrics.add_counter("edd_gateway_routes_reloads", "Reloads.",
                                 lambda: [({"result": "ok"}, 2.0), ({"result": "failed"}, 1.0)])
        lag = Histogram()
        self.metrics.add_histogram("edd_gateway_event_propagation_seconds", "Lag.", lag)
        lag.observe(0.004)
        got = samples(self.metrics)
        self.assertEqual(got[("edd_gateway_connections_total", (("listener", "tcp:443"), ("protocol", "TLS")))], 8)
        self.assertEqual(got[("edd_gateway_connections_active", (("listener", "tcp:443"),))], 3)
        self.assertEqual(got[("edd_gateway_routes", ())], 7)
        self.assertEqual(got[("edd_gateway_routes_reloads_total", (("result", "failed"),))], 1)
        self.assertEqual(got[("edd_gateway_event_propagation_seconds_bucket", (("le", "0.005"),))], 1)
        state.update(open=0, routes=8.0)
        got = samples(self.metrics)
        self.assertEqual(got[("edd_gateway_connections_active", (("listener", "tcp:443"),))], 0)
        self.assertEqual(got[("edd_gateway_routes", ())], 8)


def render(site: Any, path: bytes, accept: str | None = None) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    resource = site.getResourceFor(DummyRequest([path]))
    dummy = DummyRequest([path])
    if accept is not None:
        dummy.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
    body = resource.render(dummy)
    headers = {name.lower(): values for name, values in dummy.responseHeaders.getAllRawHeaders()}
    return dummy.responseCode or 200, headers, body


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics()
        self.readiness = Readiness()
        self.site = admin_site(self.metrics.registry, self.readiness)

    def test_healthz(self) -> None:
        code, _, body = render(self.site, b"healthz")
        self.assertEqual((code, body), (200, b"ok\n"))

    def test_ready_when_every_required_part_is_ok(self) -> None:
        self.readiness.parts["routes"] = lambda: Part(OK, "3 routes")
        self.readiness.parts["database"] = lambda: Part(DEGRADED, "PostgreSQL unreachable")
        self.readiness.parts["containers"] = lambda: Part(OK, required=True)
        code, headers, body = render(self.site, b"readyz")
        report = json.loads(body)
        self.assertEqual((code, report["ready"]), (200, True), "a degraded optional part keeps it ready")
        self.assertEqual(report["parts"]["database"], {"state": "degraded", "detail": "PostgreSQL unreachable"})
        self.assertEqual(headers[b"content-type"], [b"application/json"])

    def test_not_ready_when_a_required_part_is_not_ok(self) -> None:
        draining = [False]
        self.readiness.parts["draining"] = lambda: Part(DOWN, "stopping", required=True) if draining[0] \
            else Part(OK, required=True)
        self.assertEqual(render(self.site, b"readyz")[0], 200)
        draining[0] = True
        code, _, body = render(self.site, b"readyz")
        self.assertEqual((code, json.loads(body)["parts"]["draining"]["state"]), (503, "down"))

    def test_metrics_in_text_and_openmetrics(self) -> None:
        self.metrics.ssh_login("accepted")
        code, headers, body = render(self.site, b"metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"][0].startswith(b"text/plain; version=0.0.4"))
        self.assertIn(b'edd_gateway_ssh_logins_total{outcome="accepted"} 1.0', body)
        _, headers, body = render(self.site, b"metrics", "application/openmetrics-text; version=1.0.0")
        self.assertTrue(headers[b"content-type"][0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
