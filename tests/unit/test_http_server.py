"""
Tests for the HTTP proxy's client side and exchanges
(L{edd_gateway.http.server}, L{edd_gateway.http.exchange}) over in-memory
connections: a client on a L{FakeConnection}, backends completed from the
memory reactor's C{tcpClients}, time moved by the test.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import error
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.server import LINGER_TIMEOUT
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import BackendConnection, ClientConnection, ProxyHarness
from edd_gateway.net.relay import RelayProtocol
from edd_gateway.routes.model import Target
from tests._support.http import CLIENT_IP, GET, OK, ROUTES, get, ok

FORWARDED_GET = (
    b"GET /x?y=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n"
    b"X-Forwarded-Host: app.test\r\nX-Request-ID: req-1\r\n\r\n"
)
OK_TO_CLIENT = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Request-ID: req-1\r\n\r\nhello"
)


class ProxyTestCase(SynchronousTestCase):
    """A harness with L{ROUTES}; C{settings} may be overridden per test."""

    #: Bodies stream as they come (as with --body-buffer-size 0), so that
    #: each test sees what reaches the backend when; BodyBufferingTests
    #: has the default.
    settings = ProxySettings(body_buffer_size=0)

    def setUp(self) -> None:
        self.harness = ProxyHarness(ROUTES, self.settings)
        self.client = self.harness.connect_client(CLIENT_IP)

    def with_settings(self, **changes: object) -> ClientConnection:
        """A new harness and client with C{changes} to this class's settings."""
        self.harness = ProxyHarness(ROUTES, replace(self.settings, **changes))  # type: ignore[arg-type]
        self.client = self.harness.connect_client(CLIENT_IP)
        return self.client

    def exchange(self, request: bytes = GET, response: bytes = OK) -> BackendConnection:
        """Send C{request}, accept the backend connection, answer C{response}."""
        self.client.send(request)
        backend = self.harness.accept()
        backend.send(response)
        return backend

    def assertStatuses(self, expected: list[int], head_requests: tuple[int, ...] = ()) -> None:
        got = [response.status for response in self.client.responses(head_requests)]
        self.assertEqual(got, expected, self.client.received())

    def assertRefused(self, status: int, text: bytes = b"", close: bool = True) -> None:
        [response] = self.client.responses()
        self.assertEqual(response.status, status, self.client.received())
        self.assertIn(text, response.body)
        self.assertEqual(response.header("connection") == b"close", close)
        self.assertEqual(self.client.closing, close, "connection closed after the answer")


class ProxyingTests(ProxyTestCase):
    def test_simple_get(self) -> None:
        self.client.send(GET)
        self.assertEqual(self.harness.connect_attempts, 1)
        host, port, _, timeout, _ = self.harness.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("10.0.0.5", 8080, 5.0))
        backend = self.harness.accept()
        self.assertEqual(backend.received(), FORWARDED_GET)
        backend.send(OK)
        self.assertEqual(self.client.received(), OK_TO_CLIENT)
        self.assertFalse(self.client.closing)
        self.assertEqual(self.harness.pool.idle_count(Target("10.0.0.5", 8080)), 1)

    def test_strip_prefix_and_query(self) -> None:
        self.client.send(get("/v1/users?id=3", host="API.test.:80"))
        backend = self.harness.accept()
        self.assertTrue(backend.received().startswith(b"GET /users?id=3 HTTP/1.1\r\nHost: API.test.:80\r\n"))

    def test_route_connect_timeout(self) -> None:
        self.client.send(get(host="slow.test"))
        self.assertEqual(self.harness.reactor.tcpClients[0][3], 1.5)

    def test_keep_alive_reuses_backend_connection(self) -> None:
        backend = self.exchange()
        backend.clear()
        self.client.send(get("/second"))
        self.assertEqual(self.harness.connect_attempts, 1, "a second connection was opened")
        self.assertTrue(backend.received().startswith(b"GET /second HTTP/1.1\r\n"))
        backend.send(ok(b"two"))
        self.assertEqual([r.body for r in self.client.responses()], [b"hello", b"two"])

    def test_pipelined_requests_answered_in_order(self) -> None:
        self.client.send(get("/1") + get("/2") + get("/3"))
        self.assertEqual(self.harness.connect_attempts, 1)
        backend = self.harness.accept()
        for number in (b"1", b"2", b"3"):
            self.assertEqual(backend.received().count(b"GET "), 1, "requests are sent one at a time")
            self.assertTrue(backend.received().startswith(b"GET /%s HTTP/1.1" % number))
            backend.clear()
            backend.send(ok(b"body " + number))
        self.assertEqual(self.harness.connect_attempts, 1)
        self.assertEqual([r.body for r in self.client.responses()], [b"body 1", b"body 2", b"body 3"])
        self.assertFalse(self.client.closing)

    def test_request_id_echoed(self) -> None:
        self.exchange(get(extra=b"X-Request-ID: mine.1\r\n"), ok(extra=b"X-Request-ID: backend\r\n"))
        [response] = self.client.responses()
        self.assertEqual(response.headers_named("x-request-id"), [b"mine.1"])

    def test_request_id_minted_and_sent_to_backend(self) -> None:
        backend = self.exchange(get())
        [response] = self.client.responses()
        minted = response.header("x-request-id")
        self.assertRegex(minted.decode(), r"^[0-9a-f]{24}$")
        self.assertIn(b"X-Request-ID: " + minted + b"\r\n", backend.received())

    def test_client_connection_close(self) -> None:
        self.exchange(get(extra=b"Connection: close\r\n"))
        [response] = self.client.responses()
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)

    def test_http10_keep_alive(self) -> None:
        self.exchange(get(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
        [response] = self.client.responses()
        self.assertEqual(response.header("connection"), b"keep-alive")
        self.assertFalse(self.client.closing)

    def test_http10_closes_by_default(self) -> None:
        self.exchange(get(version=b"1.0"))
        self.assertStatuses([200])
        self.assertTrue(self.client.closing)


class RequestBodyTests(ProxyTestCase):
    def test_content_length_body_streamed(self) -> None:
        self.client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n01234")
        backend = self.harness.accept()
        self.assertTrue(backend.received().endswith(b"Content-Length: 10\r\n\r\n01234"))
        self.client.send(b"56789")
        self.assertTrue(backend.received().endswith(b"\r\n\r\n0123456789"))
        backend.send(ok())
        self.assertStatuses([200])
        self.assertFalse(self.client.closing)

    def test_body_arriving_before_backend_connects(self) -> None:
        self.client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
        backend = self.harness.accept()
        self.assertTrue(backend.received().endswith(b"\r\n\r\nabc"))

    def test_chunked_body_rechunked(self) -> None:
        self.client.send(b"PUT /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend = self.harness.accept()
        head = backend.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", head)
        self.assertNotIn(b"Content-Length", head)
        backend.clear()
        self.client.send(b"3;ext=1\r\nabc\r\n")
        self.assertEqual(backend.received(), b"3\r\nabc\r\n")
        self.client.send(b"0\r\nX-Trailer: t\r\n\r\n")
        self.assertEqual(backend.received(), b"3\r\nabc\r\n0\r\n\r\n")
        backend.send(ok())
        self.assertStatuses([200])

    def test_expect_continue_relayed(self) -> None:
        self.client.send(
            b"POST /up HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        backend = self.harness.accept()
        self.assertIn(b"Expect: 100-continue\r\n", backend.received())
        backend.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertTrue(self.client.received().startswith(b"HTTP/1.1 100 Continue\r\n"))
        self.client.send(b"data")
        self.assertTrue(backend.received().endswith(b"\r\n\r\ndata"))
        backend.send(ok())
        self.assertStatuses([100, 200])

    def test_backend_answers_before_the_body_ends(self) -> None:
        self.client.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nab")
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        [response] = self.client.responses()
        self.assertEqual(response.status, 401)
        # The rest of the body cannot be skipped safely.
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)
        self.assertTrue(backend.closing, "a backend that did not read the whole body is not reused")


class ResponseBodyTests(ProxyTestCase):
    def test_chunked_response_streamed(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        self.assertTrue(self.client.received().endswith(b"\r\n\r\n5\r\nhello\r\n"), "first chunk not relayed")
        backend.send(b"6\r\n world\r\n0\r\n\r\n")
        [response] = self.client.responses()
        self.assertTrue(response.chunked)
        self.assertEqual(response.body, b"hello world")
        self.assertTrue(response.complete)
        self.assertFalse(self.client.closing)

    def test_event_stream_event_by_event(self) -> None:
        self.client.send(get("/events"))
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend.send(b"9\r\ndata: 1\n\n\r\n")
        self.assertTrue(self.client.received().endswith(b"9\r\ndata: 1\n\n\r\n"))
        backend.send(b"9\r\ndata: 2\n\n\r\n")
        self.assertTrue(self.client.received().endswith(b"9\r\ndata: 2\n\n\r\n"))

    def test_content_length_response_streamed(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        self.assertTrue(self.client.received().endswith(b"Content-Length: 10\r\nX-Request-ID: req-1\r\n\r\n01234"))
        backend.send(b"56789")
        [response] = self.client.responses()
        self.assertEqual(response.body, b"0123456789")

    def test_until_close_chunked_for_http11_client(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome ")
        backend.send(b"data")
        backend.close()
        [response] = self.client.responses()
        self.assertTrue(response.chunked)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"some data")
        # The chunked framing lets the client connection live on.
        self.assertFalse(self.client.closing, "the client connection was closed")
        self.client.send(get("/next"))
        self.assertEqual(self.harness.connect_attempts, 2)

    def test_until_close_for_http10_client(self) -> None:
        self.client.send(get(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
        backend = self.harness.accept()
        backend.send(b"HTTP/1.0 200 OK\r\n\r\nsome data")
        backend.close()
        [response] = self.client.responses()
        self.assertFalse(response.chunked)
        self.assertEqual(response.body, b"some data")
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)

    def test_chunked_response_to_http10_client(self) -> None:
        # RFC 9112 6.1: no Transfer-Encoding in a response to an HTTP/1.0 request.
        self.client.send(get(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        [response] = self.client.responses()
        self.assertEqual(response.header("transfer-encoding"), None, self.client.received())
        self.assertEqual(response.body, b"hello")

    def test_head(self) -> None:
        self.client.send(b"HEAD /file HTTP/1.1\r\nHost: app.test\r\n\r\n")
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        [response] = self.client.responses(head_requests=(0,))
        self.assertEqual(response.header("content-length"), b"1234")
        self.assertTrue(self.client.received().endswith(b"\r\n\r\n"))
        self.assertFalse(self.client.closing)
        backend.clear()
        self.client.send(get("/after"))
        # The HEAD's backend connection may be reused or replaced.
        after = self.harness.accept() if self.harness.pending_attempts() else backend
        self.assertTrue(after.received().startswith(b"GET /after "))
        after.send(ok(b"after"))
        self.assertEqual([r.status for r in self.client.responses(head_requests=(0,))], [200, 200])

    def test_no_content(self) -> None:
        backend = self.exchange(GET, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertStatuses([204])
        self.assertFalse(self.client.closing)
        backend.clear()
        self.client.send(get("/2"))
        self.assertTrue(backend.received().startswith(b"GET /2 "), "the connection was not reused")

    def test_informational_relayed(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        backend.send(OK)
        responses = self.client.responses()
        self.assertEqual([r.status for r in responses], [103, 200])
        self.assertEqual(responses[0].header("link"), b"</a.css>; rel=preload")

    def test_informational_not_sent_to_http10(self) -> None:
        self.client.send(get(version=b"1.0"))
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
        self.assertStatuses([200])


class GatewayAnswerTests(ProxyTestCase):
    def test_no_route_names_the_host(self) -> None:
        self.client.send(get("/", host="nowhere.test"))
        self.assertRefused(404, b"nowhere.test", close=False)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_exact_route_does_not_match_below(self) -> None:
        self.client.send(get("/only/more", host="exact.test"))
        self.assertRefused(404, b"exact.test", close=False)

    def test_missing_host(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRefused(400)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_invalid_host(self) -> None:
        self.client.send(get("/", host="bad host"))
        self.assertEqual(self.client.responses()[0].status, 400)

    def test_dot_segments_cannot_escape(self) -> None:
        self.client.send(get("/v1/../admin", host="api.test"))
        self.assertEqual(self.client.responses()[0].status, 404)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_connect_refused(self) -> None:
        self.client.send(GET)
        self.harness.refuse()
        self.assertRefused(502, b"10.0.0.5:8080", close=False)

    def test_connect_timeout(self) -> None:
        self.client.send(GET)
        self.harness.refuse(reason=error.TimeoutError())
        self.assertRefused(504, b"10.0.0.5:8080", close=False)

    def test_response_timeout(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        self.harness.clock.advance(59.9)
        self.assertEqual(self.client.received(), b"")
        self.harness.clock.advance(0.1)
        self.assertRefused(504, b"did not answer", close=False)
        self.assertTrue(backend.transport.aborted)

    def test_route_response_timeout(self) -> None:
        self.client.send(get(host="slow.test"))
        self.harness.accept()
        self.harness.clock.advance(2)
        self.assertEqual(self.client.responses()[0].status, 504)

    def test_response_timeout_starts_after_the_body(self) -> None:
        self.client.send(b"POST / HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 2\r\n\r\n")
        backend = self.harness.accept()
        self.harness.clock.advance(10)
        self.assertEqual(self.client.received(), b"")
        self.client.send(b"ab")
        self.harness.clock.advance(1.9)
        backend.send(ok())
        self.assertStatuses([200])

    def test_backend_garbage(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"\x00\xffSSH-2.0-nope\r\n\r\n")
        self.assertRefused(502, b"malformed", close=False)
        self.assertTrue(backend.transport.aborted)

    def test_backend_closes_before_answering(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.close()
        self.assertRefused(502, b"closed the connection", close=False)
        self.client.send(get("/next"))
        self.assertEqual(self.harness.connect_attempts, 2)

    def test_backend_closes_mid_body(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        backend.close(error.ConnectionLost())
        self.assertTrue(self.client.transport.aborted, "a cut response must not look complete")

    def test_backend_clean_close_mid_length_body(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        backend.close()
        self.assertTrue(self.client.transport.aborted, "a cut response must not look complete")

    def test_connect_method(self) -> None:
        self.client.send(b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n")
        [response] = self.client.responses()
        self.assertEqual(response.status, 405)
        self.assertEqual(self.harness.connect_attempts, 0)
        # Bytes after a CONNECT head are not HTTP to llhttp: the connection
        # must end with the answer instead of waiting for the idle timeout.
        self.assertTrue(self.client.closing, "the connection is left open and unread")

    def test_absolute_form_routed_by_its_host(self) -> None:
        self.client.send(b"GET http://app.test/abs?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        backend = self.harness.accept()
        self.assertEqual((backend.host, backend.port), ("10.0.0.5", 8080))
        received = backend.received()
        self.assertTrue(received.startswith(b"GET /abs?q=1 HTTP/1.1\r\n"), received)
        # RFC 9112 3.2.2: the target's authority replaces the Host header.
        self.assertIn(b"\r\nHost: app.test\r\n", received)
        self.assertNotIn(b"other.test", received)

    def test_absolute_form_with_unsupported_scheme(self) -> None:
        self.client.send(b"GET ftp://app.test/file HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual(self.client.responses()[0].status, 400, self.client.received())

    def test_absolute_form_with_user_info(self) -> None:
        self.client.send(b"GET http://user@app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual(self.client.responses()[0].status, 400, self.client.received())

    def test_redirect_to_https(self) -> None:
        self.client.send(get("/login?next=/a", host="secure.test:8080"))
        [response] = self.client.responses()
        self.assertEqual(response.status, 301)
        self.assertEqual(response.header("location"), b"https://secure.test/login?next=/a")
        self.assertEqual(self.harness.connect_attempts, 0)
        self.assertFalse(self.client.closing)

    def test_redirect_with_a_body_says_it_closes(self) -> None:
        self.client.send(b"POST /form HTTP/1.1\r\nHost: secure.test\r\nContent-Length: 5\r\n\r\nhello")
        [response] = self.client.responses()
        self.assertEqual(response.status, 301)
        # RFC 9112 9.6: a server that closes after a response says so in it.
        self.assertEqual(response.header("connection") == b"close", self.client.closing, self.client.received())

    def test_internal_welcome(self) -> None:
        self.client.send(get("/", host="welcome.test"))
        [response] = self.client.responses()
        self.assertEqual(response.status, 200)
        self.assertIn(b"edd-gateway is running", response.body)
        self.assertIn(b"routes.yaml:3", response.body)
        self.assertEqual(self.harness.connect_attempts, 0)
        self.assertFalse(self.client.closing)

    def test_internal_welcome_head(self) -> None:
        self.client.send(b"HEAD / HTTP/1.1\r\nHost: welcome.test\r\n\r\n")
        [response] = self.client.responses(head_requests=(0,))
        self.assertEqual(response.status, 200)
        self.assertTrue(self.client.received().endswith(b"\r\n\r\n"))
        self.assertGreater(int(response.header("content-length")), 0)

    def test_local_answers_keep_pipelined_order(self) -> None:
        self.client.send(get("/a") + get("/", host="nowhere.test") + get("/b"))
        backend = self.harness.accept()
        self.assertEqual(self.client.received(), b"")
        backend.send(ok(b"a"))
        backend.send(ok(b"b"))
        self.assertEqual([r.status for r in self.client.responses()], [200, 404, 200])


class LimitTests(ProxyTestCase):
    def test_request_target_too_long(self) -> None:
        client = self.with_settings(max_request_line=100)
        client.send(get("/" + "a" * 101))
        self.assertRefused(414)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_too_many_headers(self) -> None:
        client = self.with_settings(max_headers=5)
        client.send(get(extra=b"".join(b"X-%d: v\r\n" % n for n in range(5))))
        self.assertRefused(431)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_head_too_large_byte_by_byte(self) -> None:
        client = self.with_settings(max_header_bytes=1000)
        client.send_bytewise(get(extra=b"X-Big: " + b"a" * 2000 + b"\r\n"))
        self.assertRefused(431)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_head_too_large_in_one_read(self) -> None:
        client = self.with_settings(max_header_bytes=1000)
        client.send(get(extra=b"X-Big: " + b"a" * 2000 + b"\r\n"))
        self.assertRefused(431)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_body_before_a_pipelined_head_is_not_head(self) -> None:
        client = self.with_settings(max_header_bytes=1000)
        upload = b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3000\r\n\r\n" + b"x" * 3000
        client.send(upload + b"GET /next HTTP/1.1\r\nHo")
        client.send(b"st: app.test\r\n\r\n")
        backend = self.harness.accept()
        backend.send(ok(b"1"))
        backend.send(ok(b"2"))
        self.assertStatuses([200, 200])

    def test_body_too_large_by_content_length(self) -> None:
        client = self.with_settings(max_body_size=10)
        client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\r\n")
        self.assertRefused(413)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_body_at_the_limit(self) -> None:
        client = self.with_settings(max_body_size=10)
        client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n0123456789")
        self.harness.accept().send(ok())
        self.assertStatuses([200])

    def test_chunked_body_too_large(self) -> None:
        client = self.with_settings(max_body_size=10)
        client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
        backend = self.harness.accept()
        client.send(b"6\r\nghijkl\r\n")
        self.assertRefused(413)
        self.assertTrue(backend.transport.aborted, "the half-sent request must not reach the backend whole")

    def test_body_too_large_after_the_response_started(self) -> None:
        client = self.with_settings(max_body_size=10)
        client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        client.send(b"6\r\nghijkl\r\n")
        # A second response in the middle of the first would corrupt both.
        self.assertEqual(client.received().count(b"HTTP/1.1 "), 1, client.received())
        self.assertTrue(client.closing)

    def test_trailers_bounded(self) -> None:
        client = self.with_settings(max_header_bytes=1000)
        client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ")
        backend = self.harness.accept()
        for _ in range(100):
            if client.closing:
                break
            client.send(b"t" * 1000)
        self.assertTrue(client.closing, "a trailer grows without bound")
        self.assertIn(client.responses()[0].status, (400, 431))
        self.assertTrue(backend.transport.aborted)


class TimeoutTests(ProxyTestCase):
    def test_header_timeout(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\nHost: app")
        self.harness.clock.advance(9.9)
        self.assertEqual(self.client.received(), b"")
        self.harness.clock.advance(0.1)
        self.assertRefused(408)

    def test_header_timeout_after_a_response(self) -> None:
        self.exchange()
        self.client.send(b"GET / HTTP/1.1\r\n")
        self.harness.clock.advance(10)
        self.assertStatuses([200, 408])
        self.assertTrue(self.client.closing)

    def test_new_connection_without_a_request_closed_after_the_header_timeout(self) -> None:
        # The sniffer handed it over because a request had begun (or TLS
        # did, its handshake under way): the head's deadline applies.
        self.harness.clock.advance(9)
        self.assertFalse(self.client.closing)
        self.harness.clock.advance(1)
        self.assertTrue(self.client.closing)
        self.assertEqual(self.client.received(), b"", "nothing was asked: nothing is answered")

    def test_a_closed_connection_whose_client_stops_reading_is_cut(self) -> None:
        self.harness.clock.advance(10)
        self.assertTrue(self.client.closing)
        self.assertFalse(self.client.transport.aborted, "closed politely first")
        self.harness.clock.advance(LINGER_TIMEOUT)
        self.assertTrue(self.client.transport.aborted, "a client that never takes its bytes is cut off")

    def test_idle_after_a_response(self) -> None:
        self.exchange()
        self.harness.clock.advance(59)
        self.assertFalse(self.client.closing)
        self.harness.clock.advance(1)
        self.assertTrue(self.client.closing)

    def test_no_timeout_while_the_response_streams(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        self.harness.clock.advance(600)
        self.assertFalse(self.client.closing)
        backend.send(b"56789")
        self.assertEqual(self.client.responses()[0].body, b"0123456789")

    def test_connection_lost_cancels_timers(self) -> None:
        self.client.transport.lose()
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])


class BackendConnectionTests(ProxyTestCase):
    def test_stale_pooled_connection_retried(self) -> None:
        backend = self.exchange()
        backend.clear()
        self.client.send(get("/second"))
        self.assertIn(b"GET /second", backend.received())
        # The backend had closed the idle connection; the close arrives now.
        backend.close()
        self.assertEqual(self.harness.pending_attempts(), [1], "the request was not retried")
        self.harness.accept().send(ok(b"retried"))
        self.assertEqual([r.body for r in self.client.responses()], [b"hello", b"retried"])
        self.assertFalse(self.client.closing)

    def test_no_retry_after_bytes_arrived(self) -> None:
        backend = self.exchange()
        self.client.send(get("/second"))
        backend.send(b"HTTP/1.1 200 OK\r\n")
        backend.close()
        self.assertEqual(self.harness.pending_attempts(), [])
        self.assertEqual(self.client.responses()[-1].status, 502)

    def test_no_retry_with_a_body(self) -> None:
        backend = self.exchange()
        self.client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\n\r\nx")
        backend.close()
        self.assertEqual(self.harness.pending_attempts(), [])
        self.assertEqual(self.client.responses()[-1].status, 502)

    def test_client_gone_mid_response(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        self.client.transport.lose(error.ConnectionLost())
        self.assertTrue(backend.closing)
        self.harness.flush()
        self.assertEqual(self.harness.pool.idle_count(Target("10.0.0.5", 8080)), 0)
        self.client = self.harness.connect_client()
        self.client.send(GET)
        self.assertEqual(self.harness.pending_attempts(), [1], "the cut connection was reused")

    def test_client_gone_while_connecting(self) -> None:
        self.client.send(GET)
        self.client.transport.lose()
        backend = self.harness.accept()
        self.assertEqual(backend.received(), b"")
        self.assertEqual(self.harness.pool.idle_count(Target("10.0.0.5", 8080)), 1)

    def test_backend_connection_close_not_reused(self) -> None:
        backend = self.exchange(response=ok(extra=b"Connection: close\r\n"))
        [response] = self.client.responses()
        self.assertIsNone(response.header("connection"))
        self.assertTrue(backend.closing)
        self.assertFalse(self.client.closing)

    def test_backend_extra_bytes_not_reused(self) -> None:
        # Bytes after a complete response cannot belong to any request.
        backend = self.exchange(response=OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEV")
        self.assertTrue(backend.closing, "a connection that said too much was kept")
        self.client.send(get("/second"))
        self.assertEqual(self.harness.pending_attempts(), [1])

    def test_backend_extra_bytes_never_answer_the_next_request(self) -> None:
        self.client.send(get("/1") + get("/2"))
        backend = self.harness.accept()
        backend.send(ok(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        for index in self.harness.pending_attempts():
            self.harness.accept(index).send(ok(b"two"))
        bodies = [r.body for r in self.client.responses()]
        self.assertNotIn(b"forged", bodies, "unsolicited backend bytes answered another request")
        self.assertEqual(bodies, [b"one", b"two"])


class BackpressureTests(ProxyTestCase):
    def test_producers_registered_during_an_exchange(self) -> None:
        # A request with a body: the client throttles the backend (upload)
        # and the backend throttles the client (download).
        self.client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nok")
        backend = self.harness.accept()
        # Registered through throttles that pass pause/resume to the other
        # side but ignore stopProducing (see exchange.Throttle).
        self.assertIs(self.client.transport.producer.transport, backend.transport)
        self.assertIs(backend.transport.producer.transport, self.client.transport)
        backend.send(OK)
        self.assertIsNone(self.client.transport.producer)
        self.assertIsNone(backend.transport.producer)

    def test_producers_unregistered_after_a_failure(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"garbage\r\n\r\n")
        self.assertIsNone(self.client.transport.producer)
        self.assertIsNone(backend.transport.producer)

    def test_pooled_connection_not_left_paused(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        # The client's buffer fills while the last bytes are written: its
        # transport pauses its producer, the backend connection.
        self.client.transport.producer.pauseProducing()
        backend.send(b"56789")
        self.assertEqual(self.harness.pool.idle_count(Target("10.0.0.5", 8080)), 1)
        self.assertFalse(backend.transport.paused, "a pooled connection that never reads again")

    def test_pipelined_requests_pause_reading(self) -> None:
        client = self.with_settings(max_pipelined=2)
        client.send(get("/1") + get("/2") + get("/3") + get("/4"))
        self.assertTrue(client.transport.paused)
        backend = self.harness.accept()
        for number in range(1, 5):
            backend.send(ok(b"%d" % number))
        self.assertEqual(len(client.responses()), 4)
        self.assertFalse(client.transport.paused)

    def test_body_of_a_queued_request_pauses_reading(self) -> None:
        self.client.send(get("/1") + b"POST /2 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n01234")
        self.assertTrue(self.client.transport.paused)
        backend = self.harness.accept()
        backend.clear()
        backend.send(ok())
        self.assertFalse(self.client.transport.paused)
        self.assertTrue(backend.received().endswith(b"\r\n\r\n01234"))
        self.client.send(b"56789")
        self.assertTrue(backend.received().endswith(b"\r\n\r\n0123456789"))


class UpgradeTests(ProxyTestCase):
    UPGRADE = (
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def test_upgrade_becomes_a_tunnel(self) -> None:
        self.client.send(self.UPGRADE + b"early")
        backend = self.harness.accept()
        received = backend.received()
        self.assertIn(b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n", received)
        self.assertNotIn(b"early", received)
        backend.clear()
        backend.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: a\r\n\r\nfrom-backend"
        )
        [response] = self.client.responses()
        self.assertEqual(response.status, 101)
        self.assertEqual(response.header("upgrade"), b"websocket")
        self.assertEqual(response.body, b"from-backend")
        self.assertIsInstance(self.client.transport.protocol, RelayProtocol)
        self.assertIsInstance(backend.transport.protocol, RelayProtocol)
        self.assertEqual(backend.received(), b"early")
        self.client.send(b"ping")
        self.assertEqual(backend.received(), b"earlyping")
        backend.send(b"pong")
        self.assertTrue(self.client.received().endswith(b"from-backendpong"))
        self.assertIs(self.client.transport.producer, backend.transport)
        self.assertIs(backend.transport.producer, self.client.transport)
        self.assertFalse(self.client.transport.paused)
        self.assertFalse(backend.transport.paused)
        # The relay owns the backend connection: the pool forgot it.
        self.assertEqual(self.harness.pool.idle_count(Target("10.0.0.5", 8080)), 0)
        self.assertEqual(self.harness.pool._backends[("10.0.0.5", 8080)].count, 0)

    def test_declined_upgrade_closes_after_the_answer(self) -> None:
        self.client.send(self.UPGRADE + b"not http")
        backend = self.harness.accept()
        backend.send(ok(b"no websocket here"))
        [response] = self.client.responses()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"no websocket here")
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)

    def test_upgrade_to_nowhere(self) -> None:
        self.client.send(self.UPGRADE.replace(b"app.test", b"nowhere.test") + b"junk")
        self.assertRefused(404)

    def test_unasked_switch_is_refused(self) -> None:
        self.client.send(GET)
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        self.assertEqual(self.client.responses()[-1].status, 502)
        self.assertTrue(backend.transport.aborted)
