"""
Tests for L{edd_gateway.tls.clienthello} and
L{edd_gateway.tls.clienthello_body}: real ClientHellos from pyOpenSSL clients,
split over segments and records, and malformed input of every kind.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.tls.clienthello import ClientHelloParser
from edd_gateway.tls.clienthello_body import ClientHello, ClientHelloError, parse_client_hello_body
from edd_gateway.tls.testing import captured_client_hello, handshake_bytes, records


def hello_message(body: bytes) -> bytes:
    """A ClientHello handshake message in one record."""
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, [len(message)])


def vector(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!H", kind) + vector(data, 2)


def sni_extension(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + vector(n, 2) for n in names)
    return extension(0, vector(entries, 2))


def alpn_extension(*names: bytes) -> bytes:
    return extension(16, vector(b"".join(vector(n, 1) for n in names), 2))


def hello_body(
    extensions: bytes | None = b"",
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    version: bytes = b"\x03\x03",
) -> bytes:
    body = version + bytes(32) + vector(session_id, 1) + vector(suites, 2)
    body += vector(compression, 1)
    if extensions is not None:
        body += vector(extensions, 2)
    return body


def parse_all(data: bytes, max_bytes: int = 16384) -> ClientHello | None:
    return ClientHelloParser(max_bytes).feed(data)


class RealClientHelloTests(SynchronousTestCase):
    """ClientHellos as pyOpenSSL sends them."""

    def setUp(self) -> None:
        self.hello = captured_client_hello(b"a.cloud.example", [b"h2", b"http/1.1"])

    def test_sni_and_alpn(self) -> None:
        result = parse_all(self.hello)
        assert result is not None
        self.assertEqual(result.server_name, "a.cloud.example")
        self.assertEqual(result.alpn, ("h2", "http/1.1"))
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertIn(0x0304, result.supported_versions)
        self.assertIn(0, result.extension_types)
        self.assertTrue(result.cipher_suites)

    def test_no_sni(self) -> None:
        result = parse_all(captured_client_hello())
        assert result is not None
        self.assertIsNone(result.server_name)
        self.assertEqual(result.alpn, ())

    def test_tls12_only_client(self) -> None:
        hello = captured_client_hello(b"old.example", max_version=SSL.TLS1_2_VERSION)
        result = parse_all(hello)
        assert result is not None
        self.assertEqual(result.server_name, "old.example")
        self.assertNotIn(0x0304, result.supported_versions)

    def test_fed_a_few_bytes_at_a_time(self) -> None:
        for step in range(1, 8):
            parser = ClientHelloParser()
            results = [
                parser.feed(self.hello[i : i + step])
                for i in range(0, len(self.hello), step)
            ]
            self.assertEqual(results[:-1], [None] * (len(results) - 1), step)
            assert results[-1] is not None
            self.assertEqual(results[-1].server_name, "a.cloud.example")
            self.assertEqual(parser.buffered, self.hello)

    def test_reassembled_across_records(self) -> None:
        reframed = records(handshake_bytes(self.hello), [5, 17, 50, 8, 33])
        self.assertGreater(reframed.count(b"\x16\x03\x01"), 30)
        parser = ClientHelloParser()
        results = [parser.feed(reframed[i : i + 3]) for i in range(0, len(reframed), 3)]
        self.assertEqual(results.count(None), len(results) - 1)
        assert results[-1] is not None
        self.assertEqual(results[-1].server_name, "a.cloud.example")
        self.assertEqual(results[-1].alpn, ("h2", "http/1.1"))
        self.assertEqual(parser.buffered, reframed)

    def test_later_bytes_are_kept(self) -> None:
        parser = ClientHelloParser()
        first = parser.feed(self.hello + b"\x17\x03\x03early")
        self.assertIsNotNone(first)
        self.assertIs(parser.feed(b"more"), first)
        self.assertEqual(parser.buffered, self.hello + b"\x17\x03\x03earlymore")

    def test_every_truncation_waits(self) -> None:
        for cut in range(0, len(self.hello), 97):
            self.assertIsNone(parse_all(self.hello[:cut]))

    def test_oversized(self) -> None:
        parser = ClientHelloParser(max_bytes=512)
        self.assertEqual(parser.max_bytes, 512)
        with self.assertRaises(ClientHelloError) as caught:
            parser.feed(self.hello[:20])
        self.assertIn("512", caught.exception.reason)

    def test_oversized_over_small_records(self) -> None:
        # Each record fits, but the hello needs more stream than allowed.
        reframed = records(handshake_bytes(self.hello), [10])
        parser = ClientHelloParser(max_bytes=len(handshake_bytes(self.hello)) + 100)
        with self.assertRaises(ClientHelloError):
            for i in range(0, len(reframed), 64):
                parser.feed(reframed[i : i + 64])

    def test_hello_claiming_huge_length_fails_early(self) -> None:
        with self.assertRaises(ClientHelloError):
            parse_all(b"\x16\x03\x01\x00\x20\x01\x01\x00\x00")

    def test_error_is_sticky(self) -> None:
        parser = ClientHelloParser()
        with self.assertRaises(ClientHelloError):
            parser.feed(b"GET / HTTP/1.1\r\n")
        with self.assertRaises(ClientHelloError):
            parser.feed(self.hello)


class MalformedRecordTests(SynchronousTestCase):
    """The record and handshake framing is checked strictly."""

    def assertRejected(self, data: bytes, reason: str) -> None:
        with self.assertRaises(ClientHelloError) as caught:
            parse_all(data)
        self.assertIn(reason, caught.exception.reason)

    def test_garbage_after_0x16(self) -> None:
        self.assertRejected(b"\x16garbage!", "major")
        self.assertRejected(b"\x16\x03\x01\x00\x09garbage", "not ClientHello")

    def test_not_a_handshake_record(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1\r\n", "content type 71")
        self.assertRejected(b"\x17\x03\x03\x00\x05hello", "content type 23")

    def test_other_record_before_hello_is_complete(self) -> None:
        hello = captured_client_hello(b"a.example")
        message = handshake_bytes(hello)
        data = records(message[:40], [40]) + records(b"\x01", [1], content_type=20)
        self.assertRejected(data, "content type 20")

    def test_sslv2_compatible_hello(self) -> None:
        self.assertRejected(b"\x80\x2e\x01\x03\x01\x00\x15", "SSLv2")

    def test_record_lengths(self) -> None:
        self.assertRejected(b"\x16\x03\x01\x00\x00", "empty")
        self.assertRejected(b"\x16\x03\x01\x40\x01", "2^14")

    def test_other_handshake_type(self) -> None:
        self.assertRejected(records(b"\x02\x00\x00\x00", [4]), "type 2")


class MalformedBodyTests(SynchronousTestCase):
    """Every vector length must fit its parent exactly."""

    def assertRejected(self, body: bytes, reason: str) -> None:
        with self.assertRaises(ClientHelloError) as caught:
            parse_all(hello_message(body))
        self.assertIn(reason, caught.exception.reason)

    def test_minimal_hello_without_extensions(self) -> None:
        result = parse_all(hello_message(hello_body(extensions=None)))
        assert result is not None
        self.assertEqual((result.server_name, result.extension_types), (None, ()))

    def test_truncated_bodies(self) -> None:
        body = handshake_bytes(captured_client_hello(b"a.example", [b"http/1.1"]))[4:]
        self.assertIsNotNone(parse_client_hello_body(body))
        parsed = []
        for cut in range(0, len(body)):
            try:
                parse_client_hello_body(body[:cut])
            except ClientHelloError:
                continue
            parsed.append(cut)
        # Only the cut dropping the whole extensions block leaves a valid
        # (pre-TLS 1.3 style) hello.
        session_end = 35 + body[34]
        suites_end = session_end + 2 + int.from_bytes(body[session_end : session_end + 2], "big")
        extensions_start = suites_end + 1 + body[suites_end]
        self.assertEqual(parsed, [extensions_start])

    def test_stray_bytes(self) -> None:
        self.assertRejected(hello_body(sni_extension(b"a.example")) + b"x", "stray")

    def test_vector_longer_than_parent(self) -> None:
        sni = sni_extension(b"a.example")
        inflated = sni[:4] + b"\x00\x40" + sni[6:]
        self.assertRejected(hello_body(inflated), "server_name_list claims 64")
        alpn = alpn_extension(b"http/1.1")
        inflated = alpn[:6] + b"\x20" + alpn[7:]
        self.assertRejected(hello_body(inflated), "ALPN protocol name claims 32")

    def test_header_fields(self) -> None:
        self.assertRejected(hello_body(session_id=bytes(33)), "session_id")
        self.assertRejected(hello_body(suites=b"\x13"), "cipher_suites")
        self.assertRejected(hello_body(suites=b""), "cipher_suites")
        self.assertRejected(hello_body(compression=b""), "compression")
        self.assertRejected(hello_body(version=b"\x02\x00"), "not TLS")

    def test_duplicate_extension(self) -> None:
        twice = sni_extension(b"a.example") + sni_extension(b"b.example")
        self.assertRejected(hello_body(twice), "twice")

    def test_server_names(self) -> None:
        self.assertRejected(hello_body(sni_extension(b"a.example", b"b.example")), "more than one")
        self.assertRejected(hello_body(sni_extension(b"caf\xc3\xa9.example")), "ASCII")
        self.assertRejected(hello_body(sni_extension(b"a..example")), "label")
        self.assertRejected(hello_body(sni_extension(b"x" * 64 + b".example")), "label")
        self.assertRejected(hello_body(sni_extension(b"a b.example")), "not a DNS name")
        self.assertRejected(hello_body(sni_extension(b"")), "characters")
        self.assertRejected(hello_body(extension(0, vector(b"", 2))), "empty")

    def test_server_name_normalised(self) -> None:
        result = parse_all(hello_message(hello_body(sni_extension(b"A.Cloud.Example."))))
        assert result is not None
        self.assertEqual(result.server_name, "a.cloud.example")

    def test_unknown_name_type_is_skipped(self) -> None:
        body = hello_body(sni_extension(b"opaque", name_type=7))
        result = parse_all(hello_message(body))
        assert result is not None
        self.assertIsNone(result.server_name)

    def test_alpn(self) -> None:
        self.assertRejected(hello_body(alpn_extension()), "empty ALPN protocol_name_list")
        self.assertRejected(hello_body(alpn_extension(b"")), "empty ALPN protocol name")
        result = parse_all(hello_message(hello_body(alpn_extension(b"\xff\x00"))))
        assert result is not None
        self.assertEqual(result.alpn[0].encode("latin-1"), b"\xff\x00")

    def test_supported_versions(self) -> None:
        odd = extension(43, vector(b"\x03\x04\x03", 1))
        self.assertRejected(hello_body(odd), "supported_versions")
        good = extension(43, vector(b"\x0a\x0a\x03\x04", 1))
        result = parse_all(hello_message(hello_body(good)))
        assert result is not None
        self.assertEqual(result.supported_versions, (0x0A0A, 0x0304))


_host_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)
_host_name = st.lists(_host_label, min_size=1, max_size=5).map(".".join)


class PropertyTests(SynchronousTestCase):
    """Whatever arrives, the parser answers only in its own terms."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
    def test_random_bytes(self, data: bytes, step: int) -> None:
        self.assertOnlyParses(data, step)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=300), st.integers(min_value=1, max_value=50))
    def test_random_hello_records(self, body: bytes, step: int) -> None:
        self.assertOnlyParses(hello_message(body), step)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=600), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        )
    )
    def test_mutated_real_hello(self, mutations: list[tuple[int, int]]) -> None:
        hello = bytearray(captured_client_hello(b"a.cloud.example", [b"http/1.1"]))
        for position, value in mutations:
            hello[position % len(hello)] = value
        self.assertOnlyParses(bytes(hello), 7)

    @settings(max_examples=40, deadline=None)
    @given(_host_name.filter(lambda name: len(name) <= 253))
    def test_real_client_host_names(self, name: str) -> None:
        result = parse_all(captured_client_hello(name.encode("ascii")))
        assert result is not None
        self.assertEqual(result.server_name, name)

    def assertOnlyParses(self, data: bytes, step: int) -> None:
        parser = ClientHelloParser(max_bytes=2048)
        try:
            for i in range(0, len(data), step):
                result = parser.feed(data[i : i + step])
                self.assertIn(type(result), (type(None), ClientHello))
        except ClientHelloError as error:
            self.assertIsInstance(error.reason, str)
        self.assertEqual(parser.buffered, data[: len(parser.buffered)])
