"""
L{edd_gateway.h2.request.h1_view}: the one pass that both refuses a
malformed HTTP/2 request (RFC 9113 8.1.1; C{h2}'s own inbound checks are
off) and translates it for the HTTP/1.1 code.
"""

from __future__ import annotations

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2 import request
from edd_gateway.h2.request import H1View, H2RequestError, Malformed, h1_view, malformed_trailers

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"app.test")]
_AS_A_SERVER_READS_A_REQUEST = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                                     is_push_promise=False)
_AS_A_SERVER_READS_TRAILERS = _AS_A_SERVER_READS_A_REQUEST._replace(is_trailer=True)

_SOME_NAMES = [
    b":method", b":scheme", b":path", b":authority", b":protocol", b":status", b":", b"", b"x-a", b"X-Upper",
    b"a:b", b"sp ace", b"host", b"cookie", b"te", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
    b"proxy-connection", b"content-length", b"\x7fdel", b"caf\xc3\xa9",
]
_SOME_VALUES = [
    b"", b"GET", b"CONNECT", b"POST", b"https", b"/", b"/a b", b"app.test", b"other.test", b"websocket",
    b"trailers", b"Trailers", b"gzip", b" lead", b"trail\t", b"in\rside", b"nul\x00", b"l\nf", b"x", b"a=1",
]
_NAMES, _VALUES = st.sampled_from(_SOME_NAMES), st.sampled_from(_SOME_VALUES)
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), max_size=8)


def h2_refuses(headers: list[tuple[bytes, bytes]], flags: HeaderValidationFlags = _AS_A_SERVER_READS_A_REQUEST) -> bool:
    """Whether the h2 library's own inbound checks (what the gateway turned off) refuse C{headers}."""
    try:
        list(validate_headers(headers, flags))
    except ProtocolError:
        return True
    return False


def refuses(headers: list[tuple[bytes, bytes]]) -> bool:
    try:
        h1_view(headers, True)
    except Malformed:
        return True
    except H2RequestError:
        return False
    return False


class SameVerdictAsTheLibrary(SynchronousTestCase):
    """The checks that replaced h2's refuse exactly what h2 refuses."""

    @settings(max_examples=3000, deadline=None)
    @given(_FIELDS)
    def test_any_field_list(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.assertEqual(refuses(fields), h2_refuses(fields), fields)

    def test_a_valid_request_and_one_field_more(self) -> None:
        """Every sample field, after a valid request and first in it: random lists are almost never valid."""
        for name in _SOME_NAMES:
            for value in _SOME_VALUES:
                for fields in ([*REQUEST, (name, value)], [(name, value), *REQUEST]):
                    self.assertEqual(refuses(fields), h2_refuses(fields), fields)

    @settings(max_examples=2000, deadline=None)
    @given(st.sets(st.integers(0, len(REQUEST) - 1)), st.lists(st.tuples(_NAMES, _VALUES), max_size=3))
    def test_a_request_missing_fields_with_more(self, dropped: set[int], after: list[tuple[bytes, bytes]]) -> None:
        fields = [field for index, field in enumerate(REQUEST) if index not in dropped] + after
        self.assertEqual(refuses(fields), h2_refuses(fields), fields)


    @settings(max_examples=2000, deadline=None)
    @given(st.lists(st.tuples(_NAMES, _VALUES), max_size=4))
    def test_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.assertEqual(malformed_trailers(fields) is not None, h2_refuses(fields, _AS_A_SERVER_READS_TRAILERS),
                         fields)


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.assertRaises(Malformed, h1_view, fields, True)

    def test_each_rule(self) -> None:
        self.assertMalformed([*REQUEST, (b"X-Upper", b"1")])
        self.assertMalformed([*REQUEST, (b"x-a", b"in\r\nside")])
        self.assertMalformed([*REQUEST, (b"x-a", b" padded")])
        self.assertMalformed([*REQUEST, (b"connection", b"close")])
        self.assertMalformed([*REQUEST, (b"te", b"gzip")])
        self.assertMalformed([*REQUEST, (b":path", b"/again")])
        self.assertMalformed([(b"x-a", b"1"), *REQUEST])
        self.assertMalformed([*REQUEST[:2], (b":path", b""), REQUEST[3]])
        self.assertMalformed([*REQUEST, (b"host", b"other.test")])
        self.assertMalformed([*REQUEST[:3]])
        self.assertMalformed([(b":method", b"GET"), (b":protocol", b"websocket"), *REQUEST[1:]])

    def test_te_trailers_and_an_empty_value_pass(self) -> None:
        view = h1_view([*REQUEST, (b"te", b"trailers"), (b"x-empty", b"")], True)
        self.assertIn((b"x-empty", b""), view.headers)


class TranslationTests(SynchronousTestCase):
    def test_authority_becomes_host_first(self) -> None:
        view = h1_view([*REQUEST, (b"host", b"app.test"), (b"accept", b"*/*")], True)
        self.assertEqual((view.method, view.target, view.authority), (b"GET", b"/", b"app.test"))
        self.assertEqual(view.headers, [(b"host", b"app.test"), (b"accept", b"*/*")])

    def test_host_alone_is_the_authority(self) -> None:
        view = h1_view([*REQUEST[:3], (b"host", b"app.test")], True)
        self.assertEqual(view.authority, b"app.test")

    def test_cookie_crumbs_joined(self) -> None:
        view = h1_view([*REQUEST, (b"cookie", b"a=1"), (b"cookie", b"b=2")], True)
        self.assertIn((b"cookie", b"a=1; b=2"), view.headers)

    def test_a_body_of_unknown_length_is_chunked(self) -> None:
        post = [(b":method", b"POST"), *REQUEST[1:]]
        self.assertIn((b"transfer-encoding", b"chunked"), h1_view(post, False).headers)
        self.assertNotIn((b"transfer-encoding", b"chunked"), h1_view([*post, (b"content-length", b"3")],
                                                                     False).headers)

    def test_extended_connect_is_a_websocket_upgrade(self) -> None:
        view = h1_view([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *REQUEST[1:]], False)
        self.assertTrue(view.websocket)
        self.assertEqual(view.method, b"GET")
        self.assertIn((b"upgrade", b"websocket"), view.headers)

    def test_plain_connect_is_not_served(self) -> None:
        error = self.assertRaises(H2RequestError, h1_view, [(b":method", b"CONNECT"), (b":authority", b"a:443")],
                                  False)
        self.assertEqual(error.status, 405)


def _fields_of(view: H1View) -> tuple[object, ...]:
    return (view.method, view.target, view.headers, view.websocket, view.authority)


class KeptViewTests(SynchronousTestCase):
    """A repeated header list's view comes from the table of kept views, as if read again."""

    def setUp(self) -> None:
        request._VIEWS.clear()
        self.addCleanup(request._VIEWS.clear)

    def test_a_repeated_request_gets_its_own_header_list(self) -> None:
        fields = [*REQUEST, (b"accept", b"*/*")]
        first = h1_view(fields, True)
        self.assertEqual(len(request._VIEWS), 1)
        first.headers.append((b"x-added", b"by the first request"))
        second = h1_view(fields, True)
        self.assertEqual(_fields_of(second), _fields_of(request._read_view(fields, True)))
        self.assertIsNot(second.headers, first.headers)
        self.assertIsNot(second.headers, h1_view(fields, True).headers)

    def test_requests_that_differ_in_their_path_share_a_view(self) -> None:
        """A browser's requests: the same fields but :path; each view has its own target."""
        for path in (b"/", b"/app.js", b"/api/items?page=2"):
            fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"),
                      (b":path", path), (b"accept", b"*/*")]
            view = h1_view(fields, True)
            self.assertEqual(_fields_of(view), _fields_of(request._read_view(fields, True)))
            self.assertEqual(view.target, path)
        self.assertEqual(len(request._VIEWS), 1)

    def test_a_kept_view_does_not_pass_a_bad_path(self) -> None:
        h1_view(REQUEST, True)
        for path in (b"", b"/a\r\nb", b" /lead"):
            fields = [(name, path if name == b":path" else value) for name, value in REQUEST]
            self.assertRaises(Malformed, h1_view, fields, True)

    def test_the_end_of_the_stream_is_part_of_the_key(self) -> None:
        post = [(b":method", b"POST"), *REQUEST[1:]]
        self.assertIn((b"transfer-encoding", b"chunked"), h1_view(post, False).headers)
        self.assertNotIn((b"transfer-encoding", b"chunked"), h1_view(post, True).headers)
        self.assertIn((b"transfer-encoding", b"chunked"), h1_view(post, False).headers)

    def test_a_websocket_gets_a_new_key_each_time(self) -> None:
        fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *REQUEST[1:]]
        keys = {dict(h1_view(fields, False).headers)[b"sec-websocket-key"] for _ in range(3)}
        self.assertEqual(len(keys), 3)
        self.assertEqual(request._VIEWS, {})

    def test_a_malformed_request_is_refused_every_time(self) -> None:
        fields = [*REQUEST, (b"X-Upper", b"1")]
        for _ in range(3):
            self.assertRaises(Malformed, h1_view, fields, True)
        self.assertEqual(request._VIEWS, {})

    def test_large_header_lists_are_not_kept(self) -> None:
        h1_view([*REQUEST, (b"x-large", b"x" * request._BYTES_KEPT)], True)
        h1_view([*REQUEST, *[(b"x-%d" % n, b"1") for n in range(request._FIELDS_KEPT)]], True)
        self.assertEqual(request._VIEWS, {})

    def test_the_table_is_bounded(self) -> None:
        for n in range(request._VIEWS_KEPT * 3):
            h1_view([*REQUEST, (b"x-n", b"%d" % n)], True)
            self.assertLessEqual(len(request._VIEWS), request._VIEWS_KEPT)
        self.assertGreater(len(request._VIEWS), 0)

    @settings(max_examples=1500, deadline=None)
    @given(_FIELDS, st.booleans(), st.lists(_VALUES, max_size=3))
    def test_same_as_reading_again(self, fields: list[tuple[bytes, bytes]], end_stream: bool,
                                   paths: list[bytes]) -> None:
        """Any list, seen again, and again with each of some other :path values: the view (or refusal) of reading it."""
        fields = [*REQUEST, *fields] if fields and fields[0][0] != b":method" else fields
        variants = [fields, fields] + [[(name, path if name == b":path" else value) for name, value in fields]
                                       for path in paths]
        for variant in variants:
            try:
                read = _fields_of(request._read_view(variant, end_stream))
            except (Malformed, H2RequestError) as problem:
                self.assertRaises(type(problem), h1_view, variant, end_stream)
                continue
            view = h1_view(variant, end_stream)
            if not view.websocket:
                self.assertEqual(_fields_of(view), read)
