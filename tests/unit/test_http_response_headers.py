"""
Tests for per-route response headers and HSTS (issue 14 item 7) through the
proxy on in-memory connections: the backend's answers edited on both
schemes, HSTS only over terminated TLS, and what the gateway's own answers
on the route get.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.testing import ClientConnection, ProxyHarness, backend_route
from edd_gateway.routes.model import Hsts, ResponseHeaders, Route, Target

HSTS = "max-age=31536000; includeSubDomains"
ROUTES = [
    backend_route("app.test", "/", "10.0.0.5:8080",
                  response_headers=ResponseHeaders(set=(("X-Frame-Options", "DENY"),), remove=("Server",)),
                  hsts=Hsts(31536000, include_subdomains=True)),
    backend_route("plain.test", "/", "10.0.0.6:8080"),
    Route(host="welcome.test", path="/", target=Target("", 0, internal="welcome"), hsts=Hsts(60)),
]
BACKEND = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22\r\nX-Frame-Options: SAMEORIGIN\r\n"
           b"Strict-Transport-Security: max-age=1\r\nContent-Length: 2\r\n\r\nok")


class ResponseHeadersTests(SynchronousTestCase):
    def client(self, scheme: str) -> tuple[ProxyHarness, ClientConnection]:
        harness = ProxyHarness(ROUTES, scheme=scheme)
        return harness, harness.connect_client()

    def answer(self, scheme: str, host: str = "app.test") -> list[tuple[bytes, bytes]]:
        harness, client = self.client(scheme)
        client.send(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
        harness.accept().send(BACKEND)
        [response] = client.responses()
        self.assertEqual(response.body, b"ok")
        return response.headers

    def test_tls_gets_edits_and_hsts(self) -> None:
        headers = dict((name.lower(), value) for name, value in self.answer("https"))
        self.assertNotIn(b"server", headers)
        self.assertEqual(headers[b"x-frame-options"], b"DENY")
        # The route's policy replaces the backend's.
        self.assertEqual(headers[b"strict-transport-security"], HSTS.encode())

    def test_plain_http_gets_edits_without_hsts(self) -> None:
        headers = self.answer("http")
        names = [name.lower() for name, _ in headers]
        self.assertNotIn(b"server", names)
        self.assertIn((b"X-Frame-Options", b"DENY"), headers)
        # The backend's own HSTS passes (browsers ignore it over plain HTTP);
        # the edge adds none.
        self.assertEqual([v for n, v in headers if n.lower() == b"strict-transport-security"], [b"max-age=1"])

    def test_route_without_edits_untouched(self) -> None:
        headers = self.answer("https", "plain.test")
        self.assertIn((b"Server", b"nginx/1.22"), headers)
        self.assertIn((b"Strict-Transport-Security", b"max-age=1"), headers)

    def test_gateway_error_on_the_route_gets_hsts_only(self) -> None:
        harness, client = self.client("https")
        client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        harness.refuse()
        [response] = client.responses()
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header("strict-transport-security"), HSTS.encode())
        self.assertIsNone(response.header("x-frame-options"))
        self.assertEqual(response.header("cache-control"), b"no-store")

    def test_gateway_error_over_plain_http_has_no_hsts(self) -> None:
        harness, client = self.client("http")
        client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        harness.refuse()
        [response] = client.responses()
        self.assertIsNone(response.header("strict-transport-security"))

    def test_internal_page_over_tls_gets_hsts(self) -> None:
        for scheme, expected in (("https", b"max-age=60"), ("http", None)):
            harness, client = self.client(scheme)
            client.send(b"GET / HTTP/1.1\r\nHost: welcome.test\r\n\r\n")
            [response] = client.responses()
            self.assertEqual(response.status, 200)
            self.assertEqual(response.header("strict-transport-security"), expected, scheme)

    def test_no_route_no_hsts(self) -> None:
        harness, client = self.client("https")
        client.send(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        [response] = client.responses()
        self.assertEqual(response.status, 404)
        self.assertIsNone(response.header("strict-transport-security"))

    def test_switching_protocols_untouched(self) -> None:
        """A 101 is the start of another protocol's stream: no edits."""
        harness, client = self.client("https")
        client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        harness.accept().send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                              b"Upgrade: websocket\r\nServer: ws\r\n\r\n")
        [response] = client.responses()
        self.assertEqual(response.status, 101)
        self.assertEqual(response.header("server"), b"ws")
        self.assertIsNone(response.header("strict-transport-security"))
