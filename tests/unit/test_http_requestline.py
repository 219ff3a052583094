"""
Tests for what the gateway answers request lines llhttp refuses
(L{edd_gateway.http.requestline}) and the other issue-14 item-4 request
checks, through the server protocol on in-memory connections: unknown
methods (501/400), the HTTP/2 preface (GOAWAY), underscore field names,
non-token field names and the h2c upgrade.
"""

from __future__ import annotations

import struct

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.requestline import H2_PREFACE, HTTP2_REFUSAL, is_h2_preface, is_token, method_refusal
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness, backend_route

ROUTES = [backend_route("app.test", "/", "10.0.0.5:8080")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class PureTests(SynchronousTestCase):
    def test_token_methods_are_501(self) -> None:
        for start in (b"FOO /a HTTP/1.1\r\n", b"get /a HTTP/1.1\r\n", b"\r\nM-SEARCH2 * HTTP/1.1\r\n"):
            self.assertEqual(method_refusal(start).status, 501, start)

    def test_other_starts_are_400(self) -> None:
        for start in (b"G@T /a HTTP/1.1\r\n", b"G(T /a", b"FOO\r\n", b"FOO", b" /a HTTP/1.1"):
            self.assertEqual(method_refusal(start).status, 400, start)

    def test_detail_names_the_method(self) -> None:
        self.assertIn("'get'", method_refusal(b"get / HTTP/1.1").detail)

    def test_tokens(self) -> None:
        self.assertTrue(is_token(b"Transfer_Encoding"))
        self.assertFalse(is_token(b"A b"))
        self.assertFalse(is_token(b""))

    def test_preface(self) -> None:
        self.assertTrue(is_h2_preface(b"PRI", b"*"))
        self.assertFalse(is_h2_preface(b"PRI", b"/"))
        self.assertFalse(is_h2_preface(b"GET", b"*"))

    def test_refusal_frames(self) -> None:
        """An empty SETTINGS (the server preface), then GOAWAY(last stream 0, HTTP_1_1_REQUIRED)."""
        settings, goaway = HTTP2_REFUSAL[:9], HTTP2_REFUSAL[9:]
        self.assertEqual(settings, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        self.assertEqual(len(goaway), 17)
        length, kind, flags, stream = (int.from_bytes(goaway[:3], "big"), goaway[3], goaway[4],
                                       int.from_bytes(goaway[5:9], "big"))
        self.assertEqual((length, kind, flags, stream), (8, 0x7, 0, 0))
        last_stream, code = struct.unpack("!II", goaway[9:])
        self.assertEqual((last_stream, code), (0, 0xD))


class ServerTestCase(SynchronousTestCase):
    scheme = "http"
    settings = ProxySettings()

    def setUp(self) -> None:
        self.harness = ProxyHarness(ROUTES, self.settings, scheme=self.scheme)
        self.client = self.harness.connect_client("203.0.113.7")

    def refused(self, status: int) -> bytes:
        [response] = self.client.responses()
        self.assertEqual(response.status, status, self.client.received())
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)
        self.assertEqual(self.harness.connect_attempts, 0)
        return response.body


class MethodTests(ServerTestCase):
    def test_unknown_method_501(self) -> None:
        self.client.send(b"FOO /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertIn(b"FOO", self.refused(501))

    def test_lower_case_method_501(self) -> None:
        self.client.send(b"get /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.refused(501)

    def test_non_token_method_400(self) -> None:
        self.client.send(b"G@T /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.refused(400)

    def test_unknown_method_after_a_keep_alive_request(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.harness.accept().send(OK)
        self.client.send(b"FOO / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual([r.status for r in self.client.responses()], [200, 501])

    def test_pipelined_unknown_method_still_refused(self) -> None:
        """Behind another request in one read its start is not known: llhttp's 400."""
        self.client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\nFOO / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.harness.accept().send(OK)
        self.assertEqual([r.status for r in self.client.responses()], [200, 400])

    def test_llhttp_methods_beyond_the_sniffers_pass(self) -> None:
        """Methods llhttp parses (PURGE) are proxied, over plain HTTP as over TLS."""
        self.client.send(b"PURGE /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertTrue(self.harness.accept().received().startswith(b"PURGE /a HTTP/1.1\r\n"))


class PrefaceTests(ServerTestCase):
    def test_goaway_then_close(self) -> None:
        with capturedLogs() as events:
            self.client.send(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        self.assertEqual(self.client.received(), HTTP2_REFUSAL)
        self.assertTrue(self.client.closing)
        self.assertEqual(self.harness.connect_attempts, 0)
        lines = [formatEvent(e) for e in events]
        self.assertIn("http: 203.0.113.7 sent the HTTP/2 connection preface on an HTTP/1.1 (http) listener; "
                      "answered GOAWAY HTTP_1_1_REQUIRED and closing", lines)

    def test_preface_in_pieces(self) -> None:
        self.client.send(H2_PREFACE[:16])
        self.assertEqual(self.client.received(), b"")
        self.client.send(H2_PREFACE[16:])
        self.assertEqual(self.client.received(), HTTP2_REFUSAL)

    def test_pri_with_another_target_is_400(self) -> None:
        self.client.send(b"PRI / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.refused(400)


class TlsPrefaceTests(PrefaceTests):
    """Over terminated TLS (no sniffer in front) the same answer."""

    scheme = "https"

    def test_goaway_then_close(self) -> None:
        self.client.send(H2_PREFACE)
        self.assertEqual(self.client.received(), HTTP2_REFUSAL)


class FieldNameTests(ServerTestCase):
    def test_underscore_dropped_with_a_log_line(self) -> None:
        with capturedLogs() as events:
            self.client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer_Encoding: chunked\r\n"
                             b"Content-Length: 2\r\n\r\nhi")
        sent = self.harness.accept().received()
        self.assertNotIn(b"Transfer_Encoding", sent)
        self.assertNotIn(b"chunked", sent)
        self.assertTrue(sent.endswith(b"Content-Length: 2\r\n\r\nhi"), sent)
        self.assertIn("http: dropped header Transfer_Encoding from 203.0.113.7: a name with an underscore "
                      "(--allow-underscore-headers passes them)", [formatEvent(e) for e in events])

    def test_non_token_names_are_400(self) -> None:
        """RFC 9112 5: not a token, or space before the colon: llhttp refuses, never dropped silently."""
        for head in (b"GET / HTTP/1.1\r\nHost: app.test\r\nA(b: c\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost : app.test\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: app.test\r\nX\x80: c\r\n\r\n"):
            self.setUp()
            self.client.send(head)
            self.refused(400)

    def test_http2_settings_not_forwarded(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nHTTP2-Settings: AAMA\r\n\r\n")
        self.assertNotIn(b"HTTP2-Settings", self.harness.accept().received())

    def test_h2c_upgrade_answered_in_http11_then_closed(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n")
        backend = self.harness.accept()
        sent = backend.received().lower()
        for name in (b"upgrade", b"http2-settings"):
            self.assertNotIn(name, sent)
        backend.send(OK)
        [response] = self.client.responses()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("connection"), b"close")
        self.assertTrue(self.client.closing)


class AllowUnderscoreTests(ServerTestCase):
    settings = ProxySettings(allow_underscore_headers=True)

    def test_passed(self) -> None:
        self.client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX_Custom: 1\r\n\r\n")
        self.assertIn(b"\r\nX_Custom: 1\r\n", self.harness.accept().received())
