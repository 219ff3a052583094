"""
Tests for L{edd_gateway.routes.normalize}: Host and request-target
normalisation, the security-critical step before routing.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.normalize import (
    BadRequestTarget,
    _normalize_slowly,
    normalize_host,
    normalize_hostname,
    normalize_request_target,
    split_absolute_form,
)

# Pieces that exercise every rule: dots and their encodings, slashes, escapes
# of reserved and unreserved characters, bad escapes, bytes to refuse or encode.
_TOKENS = st.sampled_from([
    b"/", b"//", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"%41", b"%7e", b"%3a",
    b"%", b"%4", b"%zz", b"%00", b"a", b"B", b"~", b"-", b";", b"?", b"#", b" ",
    b"\x00", b"\x7f", b"\xc3\xa9", b"\\", b"[", b"|", b"x=1&y",
])
_TARGETS = st.lists(_TOKENS, max_size=12).map(lambda parts: b"/" + b"".join(parts))
_NORMAL_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2}|/)*")
_UNRESERVED_ESCAPE = re.compile(r"%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)")


class RequestTargetExamplesTests(SynchronousTestCase):
    """The rules, one example each."""

    def assertPath(self, raw: bytes, expected: str) -> None:
        self.assertEqual(normalize_request_target(raw)[0], expected, raw)

    def assertRefused(self, raw: bytes, reason_part: str) -> None:
        error = self.assertRaises(BadRequestTarget, normalize_request_target, raw)
        self.assertIn(reason_part, str(error))

    def test_simplePathUnchanged(self) -> None:
        self.assertEqual(normalize_request_target(b"/a/b?x=1"), ("/a/b", "x=1"))
        self.assertEqual(normalize_request_target(b"/"), ("/", ""))

    def test_dotSegmentsRemoved(self) -> None:
        self.assertPath(b"/public/../admin", "/admin")
        self.assertPath(b"/a/./b/", "/a/b/")
        self.assertPath(b"/a/b/..", "/a/")
        self.assertPath(b"/a/b/.", "/a/b/")

    def test_dotDotAboveRootStaysAtRoot(self) -> None:
        self.assertPath(b"/..", "/")
        self.assertPath(b"/../../etc/passwd", "/etc/passwd")

    def test_encodedDotsAreDotSegments(self) -> None:
        self.assertPath(b"/%2e%2e/admin", "/admin")
        self.assertPath(b"/public/%2E%2e/admin", "/admin")
        self.assertPath(b"/public/.%2e/admin", "/admin")

    def test_encodedSlashStaysInItsSegment(self) -> None:
        self.assertPath(b"/%2E%2e%2fadmin", "/..%2Fadmin")
        self.assertPath(b"/a%2fb", "/a%2Fb")

    def test_unreservedEscapesDecodedOthersUpperCased(self) -> None:
        self.assertPath(b"/%7euser/%41%2d%5f", "/~user/A-_")
        self.assertPath(b"/a%3ab%c3%a9", "/a%3Ab%C3%A9")

    def test_repeatedSlashesMerged(self) -> None:
        self.assertPath(b"//admin", "/admin")
        self.assertPath(b"/a//b///c/", "/a/b/c/")

    def test_trailingSlashKept(self) -> None:
        self.assertPath(b"/compute/", "/compute/")

    def test_dotFilesKept(self) -> None:
        self.assertPath(b"/.well-known/acme-challenge/x", "/.well-known/acme-challenge/x")
        self.assertPath(b"/a/...", "/a/...")

    def test_nonAsciiAndUnsafeBytesPercentEncoded(self) -> None:
        self.assertEqual(normalize_request_target(b"/caf\xc3\xa9?q=\xc3\xa9"), ("/caf%C3%A9", "q=%C3%A9"))
        self.assertPath(b"/a\\..\\b", "/a%5C..%5Cb")
        self.assertPath(b"/{x}|[y]", "/%7Bx%7D%7C%5By%5D")

    def test_queryKeptAsSent(self) -> None:
        self.assertEqual(normalize_request_target(b"/a/../b?x=/../%zz&y[]=1?"), ("/b", "x=/../%zz&y[]=1?"))
        self.assertEqual(normalize_request_target(b"/a?"), ("/a", ""))

    def test_refusals(self) -> None:
        self.assertRefused(b"", "must start with '/'")
        self.assertRefused(b"*", "must start with '/'")
        self.assertRefused(b"example.com:443", "must start with '/'")
        self.assertRefused(b"/a b", "space")
        self.assertRefused(b"/a\x00", "NUL")
        self.assertRefused(b"/a\x1b", "control character 0x1B")
        self.assertRefused(b"/a?x=\x7f", "control character 0x7F")
        self.assertRefused(b"/a%zz", "percent-escape")
        self.assertRefused(b"/a%4", "percent-escape")
        self.assertRefused(b"/a%", "percent-escape")
        self.assertRefused(b"/a%00b", "encoded NUL")
        self.assertRefused(b"/a#frag", "fragment")
        self.assertRefused(b"/a?x#frag", "fragment")

    def test_absoluteForm(self) -> None:
        self.assertEqual(normalize_request_target(b"http://Example.com:80/a/../b?x=1"), ("/b", "x=1"))
        self.assertEqual(normalize_request_target(b"HTTPS://example.com"), ("/", ""))
        self.assertRefused(b"ftp://example.com/", "unsupported scheme")


class SplitAbsoluteFormTests(SynchronousTestCase):
    """L{split_absolute_form} separates authority from path and query."""

    def test_split(self) -> None:
        self.assertEqual(split_absolute_form(b"http://a.com:8080/x?y"), (b"a.com:8080", b"/x?y"))
        self.assertEqual(split_absolute_form(b"http://a.com?y"), (b"a.com", b"/?y"))
        self.assertEqual(split_absolute_form(b"http://[::1]"), (b"[::1]", b"/"))

    def test_notAbsolute(self) -> None:
        self.assertIsNone(split_absolute_form(b"/x"))
        self.assertIsNone(split_absolute_form(b"a.com:443"))

    def test_refused(self) -> None:
        self.assertRaises(BadRequestTarget, split_absolute_form, b"http:///x")
        self.assertRaises(BadRequestTarget, split_absolute_form, b"http://user@a.com/x")
        self.assertRaises(BadRequestTarget, split_absolute_form, b"gopher://a.com/")


class RequestTargetPropertyTests(SynchronousTestCase):
    """Properties that hold for any target, well-formed or not."""

    @settings(max_examples=400, deadline=None)
    @given(_TARGETS)
    def test_resultIsNormal(self, raw: bytes) -> None:
        """
        Either the target is refused, or its path is in normal form: no dot
        segments, no empty segments, no escapes of unreserved characters.
        """
        try:
            path, query = normalize_request_target(raw)
        except BadRequestTarget:
            return
        self.assertIsNotNone(_NORMAL_PATH.fullmatch(path), path)
        segments = path.split("/")[1:-1]
        self.assertNotIn(".", segments)
        self.assertNotIn("..", segments)
        self.assertNotIn("", segments)
        self.assertNotIn(path.rpartition("/")[2], (".", ".."))
        self.assertIsNone(_UNRESERVED_ESCAPE.search(path), path)
        self.assertNotIn("#", query)

    @settings(max_examples=400, deadline=None)
    @given(_TARGETS)
    def test_idempotent(self, raw: bytes) -> None:
        """A normalised path normalises to itself: what is routed is forwarded."""
        try:
            path, _ = normalize_request_target(raw)
        except BadRequestTarget:
            return
        self.assertEqual(normalize_request_target(path.encode("ascii")), (path, ""))

    @settings(max_examples=400, deadline=None)
    @given(_TARGETS)
    def test_fastPathAgreesWithSlowPath(self, raw: bytes) -> None:
        """The shortcut for common paths never changes an answer."""
        try:
            expected: object = _normalize_slowly(raw)
        except BadRequestTarget:
            expected = BadRequestTarget
        try:
            actual: object = normalize_request_target(raw)
        except BadRequestTarget:
            actual = BadRequestTarget
        self.assertEqual(actual, expected)


class HostTests(SynchronousTestCase):
    """L{normalize_host} and L{normalize_hostname}."""

    def test_names(self) -> None:
        self.assertEqual(normalize_host("Cloud-API.EddisonSo.com"), "cloud-api.eddisonso.com")
        self.assertEqual(normalize_host(b"example.com."), "example.com")
        self.assertEqual(normalize_host(b"localhost"), "localhost")

    def test_portStripped(self) -> None:
        self.assertEqual(normalize_host(b"example.com:8080"), "example.com")
        self.assertEqual(normalize_host(b"example.com.:443"), "example.com")
        self.assertEqual(normalize_host(b"example.com:"), "example.com")
        self.assertEqual(normalize_host(b"[::1]:80"), "::1")
        self.assertEqual(normalize_host(b"127.0.0.1:80"), "127.0.0.1")

    def test_ipAddresses(self) -> None:
        self.assertEqual(normalize_host(b"[2001:DB8:0::1]"), "2001:db8::1")
        self.assertEqual(normalize_host(b"10.0.0.1"), "10.0.0.1")

    def test_invalid(self) -> None:
        for raw in [b"", b"example..com", b"example.com..", b"-a.com", b"a-.com", b"a_b.com",
                    b"a b.com", b"a.com:99999", b"a.com:x", b"::1", b"[::1", b"[fe80::1%eth0]",
                    b"999.1.1.1", b"1.2.3", b"01.2.3.4", b"caf\xc3\xa9.com", b"*.a.com",
                    b"a" * 64 + b".com", (b"a" * 60 + b".") * 5 + b"com"]:
            self.assertIsNone(normalize_host(raw), raw)

    def test_labelLimits(self) -> None:
        label = "a" * 63
        self.assertEqual(normalize_host(label + ".com"), label + ".com")
        name = ".".join(["a" * 49] * 5) + ".com"  # 253 characters
        self.assertEqual(len(name), 253)
        self.assertEqual(normalize_host(name), name)
        self.assertIsNone(normalize_host("a" + name))

    def test_strAndBytesAgree(self) -> None:
        for raw in ["Example.com:80", "[::1]", "bad host"]:
            self.assertEqual(normalize_host(raw), normalize_host(raw.encode("ascii")))

    def test_hostnameWithoutPort(self) -> None:
        self.assertEqual(normalize_hostname("[::1]"), "::1")
        self.assertEqual(normalize_hostname("::1"), "::1")
        self.assertEqual(normalize_hostname("Edd-Compute"), "edd-compute")
        self.assertIsNone(normalize_hostname("example.com:80"))
