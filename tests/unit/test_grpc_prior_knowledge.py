"""
Tests for L{edd_gateway.h2.prior_knowledge}: with C{--h2c-prior-knowledge},
a plain connection that starts with the HTTP/2 preface is HTTP/2 cleartext
(protocol C{h2c}, scheme C{http}) serving C{protocol: grpc} / C{h2c} routes
only; any other start is HTTP/1.1 as before.
"""

from __future__ import annotations

from typing import Any

from h2.events import ResponseReceived
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.backend_exchange import H2BackendRelay
from edd_gateway.h2.prior_knowledge import PriorKnowledgeFactory, starts_like_h2
from edd_gateway.h2.server import H2ServerProtocol
from edd_gateway.h2.settings import H2Settings
from edd_gateway.h2.testing import FakeH2Pool, H2TestClient
from edd_gateway.http.requestline import H2_PREFACE
from edd_gateway.http.testing import FakeConnection, ProxyHarness, backend_route, read_responses
from edd_gateway.routes.table import RouteTable

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


class PrefaceTests(SynchronousTestCase):
    def test_starts_like_h2(self) -> None:
        self.assertIs(starts_like_h2(H2_PREFACE + b"\x00\x00"), True)
        self.assertIsNone(starts_like_h2(H2_PREFACE[:16]))
        self.assertIs(starts_like_h2(b"GET / HTTP/1.1\r\n"), False)
        self.assertIs(starts_like_h2(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), False)


class PriorKnowledgeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = FakeH2Pool()
        self.proxy = ProxyHarness([backend_route("grpc.test", "/", "10.0.0.9:50051", protocol="grpc"),
                                   backend_route("app.test", "/")], scheme="http",
                                  http2_relay=H2BackendRelay(self.pool))
        factory = self.proxy.factory
        self.chooser = PriorKnowledgeFactory(
            factory, lambda: H2ServerProtocol(factory, H2Settings(), protocol="h2c"), self.proxy.clock, 10.0)
        self.transport = FakeConnection(peer=IPv4Address("TCP", "203.0.113.7", 40000))
        protocol = self.chooser.buildProtocol(self.transport.getPeer())
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    def h2_client(self) -> H2TestClient:
        return H2TestClient(self.transport.protocol, self.transport, clock=self.proxy.clock)

    def test_the_preface_is_served_as_h2c(self) -> None:
        client = self.h2_client()
        server: Any = self.transport.protocol
        self.assertIsInstance(server, H2ServerProtocol)
        self.assertEqual((server.context.protocol, server.context.scheme), ("h2c", "http"))
        stream = client.request(authority="grpc.test", path="/pkg.Service/Echo", method="POST", headers=GRPC)
        backend = self.pool.accept()
        self.assertIn((b"x-forwarded-proto", b"http"), backend.headers)
        backend.listener.response_headers([(b":status", b"200"), (b"grpc-status", b"0")])
        backend.listener.response_ended()
        client.flush()
        self.assertEqual(client.headers(stream)[b"grpc-status"], b"0")

    def test_other_routes_get_421(self) -> None:
        client = self.h2_client()
        stream = client.request(authority="app.test", path="/")
        self.assertEqual(client.headers(stream)[b":status"], b"421")
        self.assertIn(b"not served over HTTP/2 cleartext", client.body(stream))
        self.assertEqual(self.proxy.connect_attempts, 0)

    def test_other_routes_get_unimplemented_for_a_grpc_call(self) -> None:
        client = self.h2_client()
        stream = client.request(authority="app.test", path="/pkg.Service/Echo", method="POST", headers=GRPC)
        [head] = client.of(ResponseReceived, stream)
        self.assertEqual(dict(head.headers)[b"grpc-status"], b"12")

    def test_a_route_redirected_to_https_is_421_naming_it(self) -> None:
        """No 301 to a prior-knowledge client: a gRPC stub follows no redirect and reads no HTML page."""
        self.proxy.routes.swap(RouteTable([
            backend_route("grpc.test", "/", "10.0.0.9:50051", protocol="grpc", redirect_https=True)]))
        client = self.h2_client()
        call = client.request(authority="grpc.test", path="/pkg.Service/Echo", method="POST", headers=GRPC)
        [head] = client.of(ResponseReceived, call)
        fields = dict(head.headers)
        self.assertEqual((fields[b":status"], fields[b"grpc-status"]), (b"200", b"12"))
        self.assertIn(b"https://grpc.test/pkg.Service/Echo", fields[b"grpc-message"])
        other = client.request(authority="grpc.test", path="/page")
        self.assertEqual(client.headers(other)[b":status"], b"421")
        self.assertIn(b"served over HTTPS only: https://grpc.test/page", client.body(other))
        self.assertEqual(self.pool.opening, [])

    def test_http11_is_still_http11(self) -> None:
        self.transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        [response] = read_responses(self.transport.value())
        self.assertEqual(response.status, 404)

    def test_a_preface_that_stops_half_way_is_closed(self) -> None:
        self.transport.protocol.dataReceived(H2_PREFACE[:16])
        self.proxy.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
