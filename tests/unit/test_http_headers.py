"""
Tests for the pure header work of the proxy, L{edd_gateway.http.headers} and
L{edd_gateway.http.response_head}:
what a request head means, the head sent to the backend, how a response
body is framed and the head sent back to the client.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.errors import GatewayError
from edd_gateway.http.headers import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HOP_BY_HOP,
    Headers,
    RequestInfo,
    analyse_request,
    upstream_request_head,
)
from edd_gateway.http.response_head import client_response_head, response_body_kind
from edd_gateway.routes.model import HeaderEdits


def analyse(headers: Headers, method: bytes = b"GET", version: str = "1.1", target: bytes = b"/") -> RequestInfo:
    return analyse_request(method, target, version, headers)


def head_lines(head: bytes) -> list[bytes]:
    """The lines of a head, without the blank line that ends it."""
    if not head.endswith(b"\r\n\r\n"):
        raise AssertionError(f"a head must end with an empty line: {head!r}")
    return head[:-4].split(b"\r\n")


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value.strip()) for name, _, value in
            (line.partition(b":") for line in head_lines(head)[1:])]


def values(head: bytes, name: bytes) -> list[bytes]:
    return [value for key, value in fields(head) if key == name.lower()]


class AnalyseRequestTests(SynchronousTestCase):
    def assertRefused(self, headers: Headers, status: int = 400, **kwargs: object) -> GatewayError:
        try:
            info = analyse(headers, **kwargs)  # type: ignore[arg-type]
        except GatewayError as problem:
            self.assertEqual(problem.status, status, f"{headers!r} {kwargs!r}: {problem.detail}")
            return problem
        self.fail(f"accepted {headers!r} {kwargs!r} as {info!r}")

    # Framing

    def test_no_body(self) -> None:
        info = analyse([(b"Host", b"a")])
        self.assertEqual((info.body, info.content_length), (BODY_NONE, 0))

    def test_content_length(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Content-Length", b"12")], method=b"POST")
        self.assertEqual((info.body, info.content_length), (BODY_LENGTH, 12))

    def test_content_length_zero_is_no_body(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Content-Length", b"0")], method=b"POST")
        self.assertEqual((info.body, info.content_length), (BODY_NONE, 0))

    def test_chunked(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")], method=b"POST")
        self.assertEqual(info.body, BODY_CHUNKED)

    def test_identical_content_lengths_are_one(self) -> None:
        # llhttp refuses any duplicate Content-Length before this runs; this
        # function on its own accepts identical values (RFC 9110 8.6 allows it).
        info = analyse([(b"Host", b"a"), (b"Content-Length", b"5"), (b"content-length", b"5")])
        self.assertEqual(info.content_length, 5)

    def test_conflicting_content_lengths(self) -> None:
        self.assertRefused([(b"Host", b"a"), (b"Content-Length", b"5"), (b"Content-Length", b"6")])

    def test_content_length_not_a_number(self) -> None:
        for value in (b"+5", b"-1", b"5, 5", b" ", b"", b"0x10", b"1e3", "\u0665".encode()):
            with self.subTest(value=value):
                self.assertRefused([(b"Host", b"a"), (b"Content-Length", value)])

    def test_content_length_and_transfer_encoding(self) -> None:
        self.assertRefused(
            [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")]
        )
        self.assertRefused(
            [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")]
        )

    def test_transfer_codings_other_than_chunked(self) -> None:
        for codings in ([b"gzip"], [b"gzip, chunked"], [b"chunked, identity"], [b"identity"],
                        [b"chunked", b"chunked"], [b"gzip", b"chunked"], [b"chunked,"], [b""]):
            with self.subTest(codings=codings):
                self.assertRefused([(b"Host", b"a")] + [(b"Transfer-Encoding", c) for c in codings])

    # Versions and Host

    def test_http10_without_host(self) -> None:
        info = analyse([], version="1.0")
        self.assertIsNone(info.host)
        self.assertFalse(info.http11)

    def test_http11_needs_host(self) -> None:
        self.assertRefused([])

    def test_multiple_hosts(self) -> None:
        self.assertRefused([(b"Host", b"a"), (b"host", b"a")])
        self.assertRefused([(b"Host", b"a"), (b"Host", b"b")], version="1.0")

    def test_unserved_versions(self) -> None:
        self.assertRefused([(b"Host", b"a")], status=400, version="0.9")
        self.assertRefused([(b"Host", b"a")], status=505, version="2.0")

    # Control bytes

    def test_control_bytes_in_values(self) -> None:
        for value in (b"a\x00b", b"a\rb", b"a\nb", b"a\x7fb", b"\x1b[31m"):
            with self.subTest(value=value):
                self.assertRefused([(b"Host", b"a"), (b"X-Thing", value)])

    def test_tab_and_high_bytes_allowed_in_values(self) -> None:
        info = analyse([(b"Host", b"a"), (b"X-Thing", b"a\tb \xe9")])
        self.assertEqual(info.headers[1], (b"X-Thing", b"a\tb \xe9"))

    # Keep-alive

    def test_keep_alive_http11(self) -> None:
        self.assertTrue(analyse([(b"Host", b"a")]).keep_alive)
        self.assertFalse(analyse([(b"Host", b"a"), (b"Connection", b"Close")]).keep_alive)
        self.assertFalse(analyse([(b"Host", b"a"), (b"Connection", b"foo, close")]).keep_alive)

    def test_keep_alive_http10(self) -> None:
        self.assertFalse(analyse([], version="1.0").keep_alive)
        self.assertTrue(analyse([(b"Connection", b"Keep-Alive")], version="1.0").keep_alive)

    # Upgrade and Expect

    def test_upgrade_needs_both_headers(self) -> None:
        both = analyse([(b"Host", b"a"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"websocket")])
        self.assertTrue(both.upgrade)
        self.assertFalse(analyse([(b"Host", b"a"), (b"Upgrade", b"websocket")]).upgrade)
        self.assertFalse(analyse([(b"Host", b"a"), (b"Connection", b"upgrade")]).upgrade)

    def test_expect_continue(self) -> None:
        self.assertTrue(analyse([(b"Host", b"a"), (b"Expect", b"100-Continue")]).expect_continue)
        self.assertFalse(analyse([(b"Host", b"a"), (b"Expect", b"something")]).expect_continue)
        self.assertFalse(analyse([(b"Host", b"a")]).expect_continue)

    # Request ids

    def test_valid_request_id_kept(self) -> None:
        info = analyse([(b"Host", b"a"), (b"X-Request-ID", b"abc.DEF_123-x")])
        self.assertEqual(info.request_id, "abc.DEF_123-x")

    def test_invalid_request_ids_replaced(self) -> None:
        for value in (b"", b"has space", b"x" * 129, b"semi;colon", b"\xe9t\xe9"):
            with self.subTest(value=value):
                info = analyse([(b"Host", b"a"), (b"X-Request-ID", value)])
                self.assertRegex(info.request_id, r"^[0-9a-f]{24}$", f"kept {value!r}")

    def test_longest_valid_request_id(self) -> None:
        info = analyse([(b"Host", b"a"), (b"X-Request-ID", b"x" * 128)])
        self.assertEqual(info.request_id, "x" * 128)

    def test_minted_ids_differ(self) -> None:
        self.assertNotEqual(analyse([(b"Host", b"a")]).request_id, analyse([(b"Host", b"a")]).request_id)

    def test_connection_tokens(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Connection", b"X-Secret , keep-alive"), (b"Connection", b"Foo")])
        self.assertEqual(info.connection_tokens, frozenset({b"x-secret", b"keep-alive", b"foo"}))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                # Names as llhttp hands them over (it refuses any other);
                # values are anything: refusing control bytes is this
                # function's job.
                st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                 b"Upgrade", b"Expect", b"X-Request-ID", b"X-Other"])
                | st.from_regex(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,8}\Z"),
                st.sampled_from([b"5", b"chunked", b"close", b"0", b"gzip, chunked", b"100-continue"])
                | st.binary(max_size=12),
            ),
            max_size=8,
        ),
        st.sampled_from(["1.1", "1.0", "0.9", "2.0", "", "9"]),
        st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT"]),
    )
    def test_only_gateway_errors(self, headers: Headers, version: str, method: bytes) -> None:
        try:
            info = analyse_request(method, b"/", version, headers)
        except GatewayError as problem:
            self.assertIn(problem.status, (400, 505))
            return
        # Whatever it accepts has one unambiguous framing.
        self.assertIn(info.body, (BODY_NONE, BODY_LENGTH, BODY_CHUNKED))
        self.assertGreaterEqual(info.content_length, 0)
        head = upstream_request_head(info, b"/", "192.0.2.1", "http", False)
        framing = values(head, b"content-length") + values(head, b"transfer-encoding")
        self.assertLessEqual(len(framing), 1, head)
        for line in head_lines(head):
            self.assertNotIn(b"\r", line)
            self.assertNotIn(b"\n", line)


class UpstreamRequestHeadTests(SynchronousTestCase):
    def head(
        self,
        headers: Headers,
        method: bytes = b"GET",
        version: str = "1.1",
        client_ip: str = "203.0.113.7",
        scheme: str = "http",
        trusted: bool = False,
        path: bytes = b"/x?y=1",
    ) -> bytes:
        info = analyse_request(method, path, version, headers)
        return upstream_request_head(info, path, client_ip, scheme, trusted)

    def test_request_line_and_order(self) -> None:
        head = self.head([(b"Host", b"app.test"), (b"Accept", b"*/*"), (b"X-Request-ID", b"rid-1")])
        self.assertEqual(
            head_lines(head),
            [
                b"GET /x?y=1 HTTP/1.1",
                b"Host: app.test",
                b"Accept: */*",
                b"X-Forwarded-For: 203.0.113.7",
                b"X-Real-IP: 203.0.113.7",
                b"X-Forwarded-Proto: http",
                b"X-Forwarded-Host: app.test",
                b"X-Request-ID: rid-1",
            ],
        )

    def test_http10_forwarded_as_http11(self) -> None:
        head = self.head([(b"Host", b"a")], version="1.0")
        self.assertEqual(head_lines(head)[0], b"GET /x?y=1 HTTP/1.1")

    def test_hop_by_hop_removed(self) -> None:
        head = self.head(
            [(b"Host", b"a"), (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
             (b"Proxy-Connection", b"keep-alive"), (b"TE", b"trailers"), (b"Trailer", b"X-T"),
             (b"Upgrade", b"h2c"), (b"Accept", b"*/*")]
        )
        names = {name for name, _ in fields(head)}
        self.assertEqual(names & HOP_BY_HOP, set())
        self.assertIn(b"accept", names)

    def test_connection_named_headers_removed(self) -> None:
        head = self.head(
            [(b"Host", b"a"), (b"Connection", b"X-Secret, x-other"), (b"X-Secret", b"1"),
             (b"X-Other", b"2"), (b"X-Kept", b"3")]
        )
        names = [name for name, _ in fields(head)]
        self.assertNotIn(b"x-secret", names)
        self.assertNotIn(b"x-other", names)
        self.assertIn(b"x-kept", names)

    def test_forwarding_headers_replaced_for_untrusted_peer(self) -> None:
        head = self.head(
            [(b"Host", b"a"), (b"X-Forwarded-For", b"1.1.1.1"), (b"X-Real-IP", b"1.1.1.1"),
             (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.test"),
             (b"X-Forwarded-Port", b"1"), (b"Forwarded", b"for=1.1.1.1")]
        )
        self.assertEqual(values(head, b"x-forwarded-for"), [b"203.0.113.7"])
        self.assertEqual(values(head, b"x-real-ip"), [b"203.0.113.7"])
        self.assertEqual(values(head, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(head, b"x-forwarded-host"), [b"a"])
        self.assertEqual(values(head, b"x-forwarded-port"), [])
        self.assertEqual(values(head, b"forwarded"), [])

    def test_forwarding_headers_appended_for_trusted_peer(self) -> None:
        head = self.head(
            [(b"Host", b"a"), (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"), (b"X-Forwarded-For", b"3.3.3.3"),
             (b"X-Real-IP", b"1.1.1.1"), (b"X-Forwarded-Proto", b"https"),
             (b"X-Forwarded-Host", b"public.test")],
            client_ip="10.0.0.9", trusted=True,
        )
        self.assertEqual(values(head, b"x-forwarded-for"), [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"])
        self.assertEqual(values(head, b"x-real-ip"), [b"1.1.1.1"])
        self.assertEqual(values(head, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(head, b"x-forwarded-host"), [b"public.test"])

    def test_trusted_peer_without_forwarding_headers(self) -> None:
        head = self.head([(b"Host", b"a")], client_ip="10.0.0.9", trusted=True, scheme="https")
        self.assertEqual(values(head, b"x-forwarded-for"), [b"10.0.0.9"])
        self.assertEqual(values(head, b"x-real-ip"), [b"10.0.0.9"])
        self.assertEqual(values(head, b"x-forwarded-proto"), [b"https"])

    def test_ipv6_client(self) -> None:
        head = self.head([(b"Host", b"a")], client_ip="2001:db8::1")
        self.assertEqual(values(head, b"x-forwarded-for"), [b"2001:db8::1"])

    def test_request_id_replaced(self) -> None:
        head = self.head([(b"Host", b"a"), (b"X-Request-ID", b"bad id")])
        [rid] = values(head, b"x-request-id")
        self.assertRegex(rid.decode(), r"^[0-9a-f]{24}$")

    def test_no_forwarded_host_without_host(self) -> None:
        head = self.head([], version="1.0")
        self.assertEqual(values(head, b"x-forwarded-host"), [])

    def test_exactly_one_content_length(self) -> None:
        head = self.head([(b"Host", b"a"), (b"Content-Length", b"7")], method=b"POST")
        self.assertEqual(values(head, b"content-length"), [b"7"])
        self.assertEqual(values(head, b"transfer-encoding"), [])

    def test_chunked_stays_chunked(self) -> None:
        head = self.head([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], method=b"POST")
        self.assertEqual(values(head, b"transfer-encoding"), [b"chunked"])
        self.assertEqual(values(head, b"content-length"), [])

    def test_empty_post_states_its_length(self) -> None:
        for method in (b"POST", b"PUT", b"PATCH"):
            with self.subTest(method=method):
                self.assertEqual(
                    values(self.head([(b"Host", b"a")], method=method), b"content-length"), [b"0"], method
                )
        self.assertEqual(values(self.head([(b"Host", b"a")]), b"content-length"), [])
        self.assertEqual(
            values(self.head([(b"Host", b"a"), (b"Content-Length", b"0")], method=b"DELETE"), b"content-length"),
            [],
        )

    def test_upgrade_asked_again(self) -> None:
        head = self.head(
            [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
             (b"Sec-WebSocket-Key", b"k")]
        )
        self.assertEqual(values(head, b"connection"), [b"upgrade"])
        self.assertEqual(values(head, b"upgrade"), [b"websocket"])
        self.assertEqual(values(head, b"sec-websocket-key"), [b"k"])


class ResponseBodyKindTests(SynchronousTestCase):
    def test_content_length(self) -> None:
        self.assertEqual(response_body_kind(200, [(b"Content-Length", b"10")], False), (BODY_LENGTH, 10))

    def test_zero_length_is_length(self) -> None:
        self.assertEqual(response_body_kind(200, [(b"Content-Length", b"0")], False), (BODY_LENGTH, 0))

    def test_chunked(self) -> None:
        self.assertEqual(response_body_kind(200, [(b"Transfer-Encoding", b"chunked")], False), (BODY_CHUNKED, 0))
        self.assertEqual(
            response_body_kind(200, [(b"Transfer-Encoding", b"gzip, Chunked")], False), (BODY_CHUNKED, 0)
        )

    def test_chunked_wins_over_length(self) -> None:
        headers = [(b"Content-Length", b"10"), (b"Transfer-Encoding", b"chunked")]
        self.assertEqual(response_body_kind(200, headers, False), (BODY_CHUNKED, 0))

    def test_until_close(self) -> None:
        self.assertEqual(response_body_kind(200, [], False), (BODY_UNTIL_CLOSE, 0))
        self.assertEqual(
            response_body_kind(200, [(b"Transfer-Encoding", b"gzip")], False), (BODY_UNTIL_CLOSE, 0)
        )

    def test_no_body(self) -> None:
        for status, head in ((200, True), (204, False), (304, False), (100, False), (101, False)):
            with self.subTest(status=status, head=head):
                self.assertEqual(
                    response_body_kind(status, [(b"Content-Length", b"10")], head), (BODY_NONE, 0),
                    f"status {status}, HEAD {head}",
                )


class ClientResponseHeadTests(SynchronousTestCase):
    status = b"HTTP/1.1 200 OK"

    def head(self, headers: Headers, body: int, length: int = 0, chunk: bool = False,
             keep_alive: bool = True, http11: bool = True, upgrade: bool = False) -> bytes:
        return client_response_head(self.status, headers, body, length, chunk, keep_alive, http11, "rid", upgrade)

    def test_length(self) -> None:
        head = self.head([(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")], BODY_LENGTH, 5)
        self.assertEqual(
            head_lines(head),
            [b"HTTP/1.1 200 OK", b"Content-Type: text/plain", b"Content-Length: 5", b"X-Request-ID: rid"],
        )

    def test_head_keeps_backend_length(self) -> None:
        head = self.head([(b"Content-Length", b"1234")], BODY_NONE)
        self.assertEqual(values(head, b"content-length"), [b"1234"])
        self.assertEqual(values(head, b"transfer-encoding"), [])

    def test_chunked_reframed(self) -> None:
        head = self.head([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"9")], BODY_CHUNKED, chunk=True)
        self.assertEqual(values(head, b"transfer-encoding"), [b"chunked"])
        self.assertEqual(values(head, b"content-length"), [])

    def test_until_close_chunked_for_http11(self) -> None:
        head = self.head([], BODY_UNTIL_CLOSE, chunk=True)
        self.assertEqual(values(head, b"transfer-encoding"), [b"chunked"])

    def test_until_close_for_http10(self) -> None:
        head = self.head([], BODY_UNTIL_CLOSE, keep_alive=False, http11=False)
        self.assertEqual(values(head, b"transfer-encoding"), [])
        self.assertEqual(values(head, b"content-length"), [])
        self.assertEqual(values(head, b"connection"), [b"close"])

    def test_connection_close(self) -> None:
        head = self.head([(b"Connection", b"keep-alive")], BODY_LENGTH, 0, keep_alive=False)
        self.assertEqual(values(head, b"connection"), [b"close"])

    def test_http10_keep_alive(self) -> None:
        head = self.head([], BODY_LENGTH, 0, http11=False)
        self.assertEqual(values(head, b"connection"), [b"keep-alive"])

    def test_http11_keep_alive_says_nothing(self) -> None:
        head = self.head([(b"Connection", b"keep-alive")], BODY_LENGTH, 0)
        self.assertEqual(values(head, b"connection"), [])

    def test_hop_by_hop_and_connection_named_removed(self) -> None:
        head = self.head(
            [(b"Connection", b"X-Internal"), (b"X-Internal", b"1"), (b"Keep-Alive", b"timeout=5"),
             (b"Trailer", b"X-T"), (b"Proxy-Connection", b"x"), (b"Set-Cookie", b"a=1"),
             (b"Set-Cookie", b"b=2")],
            BODY_LENGTH, 0,
        )
        names = [name for name, _ in fields(head)]
        self.assertNotIn(b"x-internal", names)
        self.assertNotIn(b"keep-alive", names)
        self.assertNotIn(b"trailer", names)
        self.assertNotIn(b"proxy-connection", names)
        self.assertEqual(values(head, b"set-cookie"), [b"a=1", b"b=2"])

    def test_request_id_echoed_once(self) -> None:
        head = self.head([(b"X-Request-ID", b"backend-id")], BODY_LENGTH, 0)
        self.assertEqual(values(head, b"x-request-id"), [b"rid"])

    def test_upgrade(self) -> None:
        self.status = b"HTTP/1.1 101 Switching Protocols"
        head = self.head(
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", b"x")],
            BODY_NONE, upgrade=True,
        )
        self.assertEqual(values(head, b"connection"), [b"upgrade"])
        self.assertEqual(values(head, b"upgrade"), [b"websocket"])
        self.assertEqual(values(head, b"sec-websocket-accept"), [b"x"])


class UnderscoreNameTests(SynchronousTestCase):
    """Issue 14 item 4: CGI/WSGI stacks read C{_} as C{-}, so names with one are dropped."""

    def test_dropped_and_listed(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Transfer_Encoding", b"chunked"), (b"X_Real_IP", b"1.2.3.4"),
                        (b"Accept", b"*/*")])
        self.assertEqual(info.headers, [(b"Host", b"a"), (b"Accept", b"*/*")])
        self.assertEqual(info.dropped, (b"Transfer_Encoding", b"X_Real_IP"))
        # The dropped field is not read either: no chunked framing.
        self.assertEqual(info.body, BODY_NONE)
        head = upstream_request_head(info, b"/", "203.0.113.7", "http", False)
        self.assertNotIn(b"_", b"".join(name for name, _ in fields(head)))

    def test_allowed_when_asked(self) -> None:
        info = analyse_request(b"GET", b"/", "1.1", [(b"Host", b"a"), (b"X_Custom", b"1")], allow_underscores=True)
        self.assertEqual(info.headers, [(b"Host", b"a"), (b"X_Custom", b"1")])
        self.assertEqual(info.dropped, ())

    def test_none_dropped_keeps_the_list(self) -> None:
        headers = [(b"Host", b"a"), (b"X-Custom", b"1")]
        info = analyse(headers)
        self.assertIs(info.headers, headers)
        self.assertEqual(info.dropped, ())


class Http2UpgradeTests(SynchronousTestCase):
    """HTTP2-Settings is hop-by-hop; Upgrade: h2c is never passed on (h2c smuggling)."""

    CURL_H2C = [(b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
                (b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA")]

    def test_http2_settings_is_hop_by_hop(self) -> None:
        self.assertIn(b"http2-settings", HOP_BY_HOP)
        info = analyse([(b"Host", b"a"), (b"HTTP2-Settings", b"AAMA")])
        head = upstream_request_head(info, b"/", "203.0.113.7", "http", False)
        self.assertEqual(values(head, b"http2-settings"), [])

    def test_h2c_is_no_upgrade(self) -> None:
        info = analyse(self.CURL_H2C)
        self.assertFalse(info.upgrade)
        # llhttp stops after this head anyway: the connection ends with it.
        self.assertFalse(info.keep_alive)
        head = upstream_request_head(info, b"/", "203.0.113.7", "http", False)
        for name in (b"upgrade", b"connection", b"http2-settings"):
            self.assertEqual(values(head, name), [], name)

    def test_h2c_with_a_body_refused(self) -> None:
        error = self.assertRaises(GatewayError, analyse, [*self.CURL_H2C, (b"Content-Length", b"3")], b"POST")
        self.assertEqual(error.status, 400)
        self.assertIn("h2c", error.detail)

    def test_other_protocols_kept(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Connection", b"upgrade"), (b"Upgrade", b"h2c, websocket")])
        self.assertTrue(info.upgrade)
        self.assertTrue(info.keep_alive)
        head = upstream_request_head(info, b"/", "203.0.113.7", "http", False)
        self.assertEqual(values(head, b"upgrade"), [b"websocket"])

    def test_websocket_unchanged(self) -> None:
        info = analyse([(b"Host", b"a"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"websocket")])
        self.assertTrue(info.upgrade)
        self.assertEqual(info.upgrade_value, b"websocket")


class ResponseEditTests(SynchronousTestCase):
    """A route's response header edits (see routes.model.HeaderEdits), applied in client_head."""

    def head(self, headers: Headers, edits: HeaderEdits | None) -> bytes:
        return client_response_head(b"HTTP/1.1 200 OK", headers, BODY_LENGTH, 0, False, True, True, "rid",
                                    edits=edits)

    def test_removed_set_and_replaced(self) -> None:
        edits = HeaderEdits(drop=frozenset({b"server", b"x-frame-options"}),
                            add=(b"X-Frame-Options: DENY",))
        head = self.head([(b"Server", b"nginx/1.22"), (b"x-frame-options", b"ALLOW"), (b"Vary", b"Accept")], edits)
        self.assertEqual(values(head, b"server"), [])
        self.assertEqual(values(head, b"x-frame-options"), [b"DENY"])
        self.assertEqual(values(head, b"vary"), [b"Accept"])
        self.assertEqual(values(head, b"x-request-id"), [b"rid"])

    def test_backend_cannot_name_an_edge_field_away(self) -> None:
        edits = HeaderEdits(drop=frozenset({b"x-edge"}), add=(b"X-Edge: 1",))
        head = self.head([(b"Connection", b"X-Edge")], edits)
        self.assertEqual(values(head, b"x-edge"), [b"1"])

    def test_none_changes_nothing(self) -> None:
        headers = [(b"Server", b"s")]
        self.assertEqual(self.head(headers, None), client_response_head(
            b"HTTP/1.1 200 OK", headers, BODY_LENGTH, 0, False, True, True, "rid"))
