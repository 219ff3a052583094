"""
Issue 16's browser acceptance: headless Chromium loads a page through the
real gateway over HTTPS that opens 20 Server-Sent Event streams and 4
WebSockets at once.  Over HTTP/2 every event and every echo arrives, on one
TCP connection (the gateway's own count of terminated TLS connections);
over HTTP/1.1 (Chromium's C{--disable-http2}) the same page stalls at six
connections per origin, for contrast.

The page reports what it received by POSTing to the backend, which is how
the test learns that the page is done; the browser is then stopped.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from edd_gateway.testing import (
    EndToEndMixin, WebSocketEcho, require_module, require_tool, run_process, web_factory,
)

SSE_STREAMS = 20
WEBSOCKETS = 4
EVENTS = 3
#: Seconds between two events of one stream.
EVENT_INTERVAL = 1.0

PAGE = """<!doctype html><meta charset=utf-8><title>h2 fan-out</title>
<script>
const started = performance.now();
const done = {sse: 0, events: 0, echoes: 0};
let reported = false;
function report(final) {
  if (reported) return;
  reported = true;
  fetch("/report", {method: "POST", body: JSON.stringify(
    Object.assign({final, ms: Math.round(performance.now() - started)}, done))});
}
function check() {
  if (done.events === %(sse)d * %(events)d && done.echoes === %(ws)d) report(true);
}
for (let i = 0; i < %(sse)d; i++) {
  const source = new EventSource("/sse?" + i);
  let seen = 0;
  source.onmessage = () => {
    done.events++; seen++;
    if (seen === %(events)d) { done.sse++; source.close(); }
    check();
  };
}
for (let i = 0; i < %(ws)d; i++) {
  const ws = new WebSocket("wss://" + location.host + "/ws/" + i);
  ws.onopen = () => ws.send("echo " + i);
  ws.onmessage = (m) => { if (m.data === "echo " + i) { done.echoes++; ws.close(); check(); } };
}
setTimeout(() => report(false), %(window)d);
</script>"""


class _Page(Resource):
    isLeaf = True

    def __init__(self, window_ms: int) -> None:
        super().__init__()
        self.window_ms = window_ms

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (PAGE % {"sse": SSE_STREAMS, "ws": WEBSOCKETS, "events": EVENTS, "window": self.window_ms}).encode()


class _Events(Resource):
    """
    Each stream sends an event every second and stays open: the page closes
    it once it has them all.  Over HTTP/1.1 such a stream holds one of the
    browser's six connections for as long.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[Request, IDelayedCall] = {}

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        self._send(request, 0)
        return NOT_DONE_YET

    def _send(self, request: Request, n: int) -> None:
        self.pending.pop(request, None)
        if request.finished or request.channel is None:
            return
        request.write(f"data: {n}\n\n".encode())
        if n + 1 < EVENTS:
            self.pending[request] = reactor.callLater(EVENT_INTERVAL, self._send, request, n + 1)

    def stop(self) -> None:
        """Send no more: the test is over (streams the browser never read to the end)."""
        for call in self.pending.values():
            call.cancel()
        self.pending.clear()


class _Report(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: Deferred[dict[str, Any]] = Deferred()

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        if not self.received.called:
            self.received.callback(json.loads(request.content.read()))
        return b"ok"


class BrowserTests(EndToEndMixin, TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.chromium = require_tool("chromium")
        require_module("websockets")
        self.echo: WebSocketEcho = await self.serve_websocket_echo()

    async def load(self, *flags: str, window_ms: int) -> tuple[dict[str, Any], float, float]:
        """
        The page's report, the TLS connections the gateway terminated for it,
        and the HTTP/2 connections among them that carried a stream.
        """
        root = Resource()
        root.putChild(b"", _Page(window_ms))
        events = _Events()
        self.addCleanup(events.stop)
        root.putChild(b"sse", events)
        report = _Report()
        root.putChild(b"report", report)
        site = self.serve(web_factory(root))
        gateway = await self.start_gateway(routes=[
            {"host": "localhost", "path": "/ws", "target": self.echo.target},
            {"host": "localhost", "path": "/", "target": site.target},
        ])
        before = (await self.scrape(gateway)).value("edd_gateway_tls_connections_total", outcome="terminated")
        profile = self.mktemp()
        os.makedirs(profile)
        browser = run_process([
            self.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
            "--no-first-run", "--disable-background-networking", f"--user-data-dir={profile}", *flags,
            f"https://localhost:{gateway.port}/",
        ], timeout=90)
        self.addCleanup(browser.stop)
        result = await report.received
        scrape = await self.scrape(gateway)
        await browser.stop()
        terminated = scrape.value("edd_gateway_tls_connections_total", outcome="terminated") - before
        self.streams = scrape.value("edd_gateway_http2_events_total", event="stream")
        self.http11_requests = [line for line in gateway.log_text().splitlines()
                                if "edd_gateway.access" in line and ('"GET ' in line or '"POST ' in line)
                                and "proto=h2" not in line]
        return result, terminated, scrape.value("edd_gateway_http2_events_total", event="connection")

    async def test_http2_one_connection_for_everything(self) -> None:
        result, terminated, carrying = await self.load(window_ms=20_000)
        streams = self.streams
        self.assertEqual((result["final"], result["sse"], result["events"], result["echoes"]),
                         (True, SSE_STREAMS, SSE_STREAMS * EVENTS, WEBSOCKETS), result)
        # Every request and WebSocket on one connection.  Chromium may open
        # more that carry nothing (preconnects: one or two, run to run), and
        # none carries an HTTP/1.1 request:
        self.assertEqual(carrying, 1, result)
        self.assertGreaterEqual(terminated, 1, result)
        self.assertEqual(self.http11_requests, [], result)
        # The page, its event streams, its WebSockets and its report, all streams of that connection.
        self.assertGreaterEqual(streams, 1 + SSE_STREAMS + WEBSOCKETS + 1, result)

    async def test_http11_stalls_at_six_connections(self) -> None:
        """The contrast: without HTTP/2 the open SSE streams hold all six connections and the rest wait."""
        # Within the time all twenty take over HTTP/2 (EVENTS - 1 seconds), a few more.
        result, terminated, carrying = await self.load("--disable-http2", window_ms=int((EVENTS + 1.5) * 1000))
        self.assertFalse(result["final"], result)
        self.assertLess(result["sse"], SSE_STREAMS, result)
        self.assertGreaterEqual(terminated, 6, result)
        self.assertEqual(carrying, 0, result)
