"""
Request smuggling: every request that two HTTP implementations could frame
differently is answered 400 by the gateway itself and never reaches a
backend.

Decisions recorded here, where RFC 9110/9112 leave a choice:
  - Two identical Content-Length fields, or one holding the list ``5, 5``,
    are refused (RFC 9110 8.6 allows accepting them; llhttp refuses them, and
    refusing costs legitimate clients nothing).
  - ``HTTP/2.0`` in a request line is answered 505 (a well-formed line with
    a version the gateway does not serve), ``HTTP/0.9`` 400; the HTTP/2
    connection preface (``PRI * HTTP/2.0``) gets an HTTP/2 GOAWAY.
  - A field name with an underscore (``Transfer_Encoding``) is dropped, as
    nginx does: CGI/WSGI stacks would read it as ``Transfer-Encoding``.
  - Repeated spaces between the request line's parts are accepted (RFC 9112
    3 allows it): the gateway writes its own canonical request line, so the
    backend never sees them.  A tab there is refused.
  - A head-level problem refuses the request before any backend connection
    is opened.  A problem in a chunked body (bad chunk size) is found after
    the valid head was accepted for streaming: the backend connection may be
    opening already, but it gets no byte when the body is refused in the same
    read, and it is aborted (never sees a complete request) otherwise.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.requestline import HTTP2_REFUSAL
from edd_gateway.http.testing import ProxyHarness, backend_route

ROUTES = [backend_route("app.test", "/", "10.0.0.5:8080")]

HEAD_PROBLEMS: dict[str, bytes] = {
    "content-length and transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    "transfer-encoding and content-length":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
    "two different content-lengths":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two identical content-lengths":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length list":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    "content-length with a sign":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +5\r\n\r\nhello",
    "negative content-length":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: -1\r\n\r\n",
    "hexadecimal content-length":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0x5\r\n\r\nhello",
    "empty content-length":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length:\r\n\r\n",
    "overflowing content-length":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "gzip then chunked":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked then identity":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "chunked twice":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    "unknown coding only":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "obs-fold continuation line":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: b\r\n c\r\n\r\n",
    "obs-fold of transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare CR in a header value":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: b\rX-B: c\r\n\r\n",
    "bare LF line ends":
        b"GET / HTTP/1.1\nHost: app.test\n\n",
    "NUL in a header value":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: b\x00c\r\n\r\n",
    "space before the colon":
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "tab before the colon":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A\t: b\r\n\r\n",
    "invalid header name":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX[A]: b\r\n\r\n",
    "two hosts":
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
    "HTTP/0.9 request line":
        b"GET /\r\n\r\n",
    "HTTP/1.2 request line":
        b"GET / HTTP/1.2\r\nHost: app.test\r\n\r\n",
    "tab in the request line":
        b"GET\t/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "space after the version":
        b"GET / HTTP/1.1 \r\nHost: app.test\r\n\r\n",
    "space in the target":
        b"GET /a b HTTP/1.1\r\nHost: app.test\r\n\r\n",
}

BODY_PROBLEMS: dict[str, bytes] = {
    "invalid chunk size": b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk size with a space": b"5 \r\nhello\r\n0\r\n\r\n",
    "chunk size with a sign": b"+5\r\nhello\r\n0\r\n\r\n",
    "overflowing chunk size": b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "control byte in a chunk extension": b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    "bare LF in a chunk extension": b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    "LF-only chunk lines": b"5\nhello\n0\n\n",
    "chunk longer than its size": b"5\r\nhelloXX\r\n0\r\n\r\n",
}

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"


class SmugglingTests(SynchronousTestCase):
    """One test per malformed request (generated below), and the special cases."""

    def setUp(self) -> None:
        self.harness = ProxyHarness(ROUTES)
        self.client = self.harness.connect_client()

    def check_head_problem(self, request: bytes, bytewise: bool) -> None:
        if bytewise:
            self.client.send_bytewise(request)
        else:
            self.client.send(request)
        self.refused()
        self.assertEqual(self.harness.connect_attempts, 0, "a backend connection was opened")

    def check_body_problem_in_the_same_read(self, body: bytes) -> None:
        self.client.send(CHUNKED_HEAD + body)
        self.refused()
        for index in self.harness.pending_attempts():
            backend = self.harness.accept(index)
            self.assertEqual(backend.received(), b"", "refused bytes reached a backend")

    def check_body_problem_after_the_head_was_sent(self, body: bytes) -> None:
        # Streamed bodies (no buffering): the head is at the backend first.
        self.harness = ProxyHarness(ROUTES, ProxySettings(body_buffer_size=0))
        self.client = self.harness.connect_client()
        self.client.send(CHUNKED_HEAD)
        backend = self.harness.accept()
        self.client.send(body)
        self.refused()
        self.assertTrue(backend.transport.aborted, "the backend was left with half a request")
        self.assertNotIn(b"0\r\n\r\n", backend.received())

    def refused(self, status: int = 400) -> None:
        responses = self.client.responses()
        self.assertEqual([r.status for r in responses], [status], self.client.received())
        self.assertEqual(responses[0].header("connection"), b"close")
        self.assertTrue(self.client.closing)

    def test_http2_version(self) -> None:
        self.client.send(b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n")
        self.refused(505)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_h2_preface(self) -> None:
        """Answered in HTTP/2 (GOAWAY, see tests.unit.test_http_requestline), never by a backend."""
        self.client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertEqual(self.client.received(), HTTP2_REFUSAL)
        self.assertTrue(self.client.closing)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_chunk_extensions_accepted_and_dropped(self) -> None:
        self.client.send(CHUNKED_HEAD + b"5;name=value;x\r\nhello\r\n0\r\n\r\n")
        backend = self.harness.accept()
        self.assertTrue(backend.received().endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))

    def test_repeated_spaces_in_the_request_line(self) -> None:
        self.client.send(b"GET  /a  HTTP/1.1\r\nHost: app.test\r\n\r\n")
        backend = self.harness.accept()
        self.assertTrue(backend.received().startswith(b"GET /a HTTP/1.1\r\n"), backend.received())

    def test_leading_zeros_in_content_length_reframed(self) -> None:
        self.client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 005\r\n\r\nhello")
        backend = self.harness.accept()
        self.assertIn(b"\r\nContent-Length: 5\r\n", backend.received())
        self.assertNotIn(b"005", backend.received())

    def test_transfer_encoding_in_http10(self) -> None:
        # RFC 9112 6.1: the framing of an HTTP/1.0 message with
        # Transfer-Encoding is faulty; the connection closes after it.
        self.client.send(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        for index in self.harness.pending_attempts():
            self.harness.accept(index).send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(self.client.closing, "the connection outlives a faulty framing")

    def test_malformed_pipelined_request(self) -> None:
        self.client.send(
            b"GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
        )
        self.assertEqual(self.harness.connect_attempts, 1)
        backend = self.harness.accept()
        self.assertEqual(self.client.received(), b"", "the 400 overtook the first answer")
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        responses = self.client.responses()
        self.assertEqual([r.status for r in responses], [200, 400])
        self.assertEqual(responses[0].body, b"first")
        self.assertTrue(self.client.closing)
        self.assertEqual(backend.received().count(b"HTTP/1.1\r\n"), 1)
        self.assertNotIn(b"smuggled", backend.received())
        self.assertEqual(self.harness.connect_attempts, 1)

    def test_malformed_pipelined_request_in_a_later_read(self) -> None:
        self.client.send(b"GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n")
        backend = self.harness.accept()
        self.client.send(b"GET /second HTTP/1.1\r\nHost: app.test\r\nX-A: b\r\n c\r\n\r\n")
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        self.assertEqual([r.status for r in self.client.responses()], [200, 400])
        self.assertTrue(self.client.closing)
        self.assertNotIn(b"second", backend.received())

    def test_after_a_complete_answer(self) -> None:
        self.client.send(b"GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n")
        backend = self.harness.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        self.client.send(HEAD_PROBLEMS["content-length and transfer-encoding"])
        self.assertEqual([r.status for r in self.client.responses()], [200, 400])
        self.assertTrue(self.client.closing)
        self.assertEqual(self.harness.connect_attempts, 1)
        self.assertEqual(backend.received().count(b"HTTP/1.1\r\n"), 1)


def _add_generated_tests() -> None:
    def identifier(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name.lower())

    for name, request in HEAD_PROBLEMS.items():
        for bytewise in (False, True):
            test_name = f"test_head_{identifier(name)}" + ("_bytewise" if bytewise else "")
            setattr(SmugglingTests, test_name,
                    lambda self, r=request, b=bytewise: self.check_head_problem(r, b))
    for name, body in BODY_PROBLEMS.items():
        setattr(SmugglingTests, f"test_body_{identifier(name)}_same_read",
                lambda self, b=body: self.check_body_problem_in_the_same_read(b))
        setattr(SmugglingTests, f"test_body_{identifier(name)}_after_head",
                lambda self, b=body: self.check_body_problem_after_the_head_was_sent(b))


_add_generated_tests()
