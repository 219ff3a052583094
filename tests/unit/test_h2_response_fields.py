"""
L{edd_gateway.h2.response_fields}: for any backend head, the header list an
HTTP/2 stream gets is what its re-framer reads from the HTTP/1.1 head the
exchange would have written (L{edd_gateway.http.response_head.client_head})
from the same parts.
"""

from __future__ import annotations

from httptools import HttpResponseParser
from hypothesis import example, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.reframe import ResponseReframer
from edd_gateway.http.headers import BODY_NONE
from edd_gateway.h2.response_fields import response_fields
from edd_gateway.http.response_head import client_framing, client_head, split_response_headers
from edd_gateway.routes.model import HeaderEdits

Headers = list[tuple[bytes, bytes]]

_names = st.sampled_from([b"Content-Type", b"content-length", b"Transfer-Encoding", b"Connection", b"X-A",
                          b"x-a", b"Set-Cookie", b"Upgrade", b"Keep-Alive", b"X-Request-ID", b"Server", b"TE",
                          b"Proxy-Connection", b"Trailer", b"Vary"])
# Field values as a backend sends them: visible ASCII and spaces (llhttp skips leading ones, keeps the rest).
_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(str.encode)
_special_values = st.sampled_from([b"5", b"0", b"chunked", b"gzip, chunked", b"gzip", b"close",
                                   b"keep-alive, X-A", b"Vary", b"websocket", b"a b"])


def backend_fields(head: bytes) -> tuple[int, Headers]:
    """The backend's head as llhttp reads it (the backend connection's parser)."""
    read: Headers = []

    class Reading:
        def on_header(self, name: bytes, value: bytes) -> None:
            read.append((name, value))

    parser = HttpResponseParser(Reading())
    parser.feed_data(head)
    return parser.get_status_code(), read


def reframed(data: bytes) -> tuple[int, Headers]:
    heads: list[tuple[int, Headers]] = []
    ResponseReframer(lambda status, fields: heads.append((status, fields)), lambda body: None).feed(data)
    [head] = heads
    return head


class SameAsTheReframer(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from([200, 204, 304, 404, 502]), st.lists(st.tuples(_names, st.one_of(_values, _special_values)),
                                                                max_size=8),
           st.booleans(), st.booleans(), st.one_of(st.none(), st.tuples(
               st.frozensets(st.sampled_from([b"x-a", b"server", b"vary"])),
               st.lists(st.sampled_from([b"X-Frame-Options: DENY", b"Strict-Transport-Security: max-age=1",
                                         b"X-A:  spaced "]), max_size=2))))
    @example(200, [(b"Connection", b"keep-alive, X-A"), (b"X-A", b"1"), (b"Content-Length", b"5")], False, True,
             None)
    @example(304, [(b"Content-Length", b"5"), (b"ETag", b"1")], False, True, None)  # bodiless: the length kept
    @example(200, [(b"Content-Length", b"5")], True, True, None)  # a HEAD answer
    def test_same_fields(self, status: int, fields: list[tuple[bytes, bytes]], head_request: bool, keep_alive: bool,
                         edits: tuple[frozenset[bytes], list[bytes]] | None) -> None:
        lengths = [value for name, value in fields if name.lower() == b"content-length"]
        if any(not value.isdigit() for value in lengths) or len(set(lengths)) > 1:
            return  # the backend connection refuses such a head before any exchange sees it
        head = b"HTTP/1.1 %d X\r\n" % status + b"".join(b"%b: %b\r\n" % field for field in fields) + b"\r\n"
        try:
            _, read = backend_fields(head)
        except Exception:  # noqa: BLE001 - llhttp refuses it: no exchange sees it either
            return
        plain, special = split_response_headers(read)
        body, length, chunk, _ = client_framing(status, special, head_request, True)
        route_edits = HeaderEdits(drop=edits[0], add=tuple(edits[1])) if edits is not None else None
        written = client_head(b"HTTP/1.1 %d X" % status, plain, special, body, length, chunk, keep_alive, True,
                              "0123abcd", edits=route_edits)
        self.assertEqual((status, response_fields(plain, special, body, length, "0123abcd", route_edits)),
                         reframed(written))

    def test_lines_read_once_within_a_bound(self) -> None:
        from edd_gateway.h2 import response_fields as module
        for n in range(3000):
            fields = response_fields([b"Server: s%d" % n, b"Content-Type:  text/plain"], [], BODY_NONE, 0, "1", None)
            self.assertEqual(fields, [(b"server", b"s%d" % n), (b"content-type", b"text/plain"), (b"x-request-id", b"1")])
        self.assertLessEqual(len(module._READ_LINES), module._READ_LINES_KEPT)
