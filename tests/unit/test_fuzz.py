"""
Property tests (hypothesis) over the gateway's five parsers of untrusted
input, in one place: the sniffer, the TLS ClientHello parser, the HTTP head
handling (through the real L{HTTPServerProtocol} on the in-memory harness),
the routes file loader and the SSH user name parser.

Each parser answers whatever it is fed with a result or its own typed error,
nothing else; where a reference exists the parser must agree with it: the
ClientHello parser with the SNI and ALPN values real pyOpenSSL clients send,
the HTTP side with llhttp framing the client's bytes (the gateway never
forwards more requests than the client sent), the user name parser with a
regular expression written from docs/ssh.md.

The budget is a hypothesis profile: C{ci} (the default, a few seconds) or
C{long}, chosen with C{EDD_GATEWAY_FUZZ=long}; C{bench/fuzz.sh} runs the long
one.  See docs/hardening.md for the figures.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.tls.clienthello import ClientHelloParser
from edd_gateway.tls.clienthello_body import ClientHello, ClientHelloError
from edd_gateway.http.requestline import HTTP2_REFUSAL
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import BackendConnection, ClientConnection, ProxyHarness, backend_route
from edd_gateway.routes.loader import RoutesFileError, load_routes_text
from edd_gateway.routes.route_reader import ROUTE_KEYS
from edd_gateway.routes.model import Route
from edd_gateway.front.classify import SNIFF_MAX_BYTES, Verdict, classify
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.ssh.username import DEFAULT_USER, InvalidUsername, SSHTarget, parse_ssh_username
from edd_gateway.testing.transports import HandoverTransport, RecordingFactory
from edd_gateway.tls.testing import captured_client_hello, handshake_bytes, records

# The budget.  "ci" keeps the whole module within a few seconds on two cores;
# "long" is for bench/fuzz.sh.  Every test below scales its own weight from
# the profile's max_examples (see _examples).
# EDD_GATEWAY_FUZZ_EXAMPLES overrides the profile's base count.
FUZZ_PROFILE_VARIABLE = "EDD_GATEWAY_FUZZ"
FUZZ_EXAMPLES_VARIABLE = "EDD_GATEWAY_FUZZ_EXAMPLES"
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PROFILE = os.environ.get(FUZZ_PROFILE_VARIABLE, "ci").strip() or "ci"
_BASE = settings(settings.get_profile(_PROFILE),
                 max_examples=int(os.environ.get(FUZZ_EXAMPLES_VARIABLE) or settings.get_profile(_PROFILE).max_examples))


def budget(weight: float) -> settings:
    """The loaded profile's settings with C{weight} times its example count."""
    return settings(_BASE, max_examples=max(10, int(_BASE.max_examples * weight)))


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} split at the positions C{cuts} name (modulo its length), as TCP may segment it."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


_cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


# The sniffer


class SnifferProperties(SynchronousTestCase):
    """Any bytes, cut anywhere: the verdict of the whole prefix, replayed exactly, or a close."""

    @budget(3)
    @given(st.one_of(st.binary(max_size=40),
                     st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-x\r\n", b"\x16\x03\x01\x00\x05hello",
                                      b"PROPPATCH /", b"CONNECT x:1 HTTP/1.1\r\n"]).flatmap(
                         lambda opening: st.binary(max_size=20).map(lambda tail: opening + tail))),
           _cuts)
    def test_protocol_agrees_with_classify(self, data: bytes, cuts: list[int]) -> None:
        handlers = {kind: RecordingFactory() for kind in (Verdict.HTTP, Verdict.SSH, Verdict.TLS)}
        factory = SniffingFactory(handlers, clock=Clock(), listener_name="fuzz", timeout=5.0)
        peer = IPv4Address("TCP", "203.0.113.9", 40000)
        transport = HandoverTransport(peerAddress=peer)
        transport.protocol = factory.buildProtocol(peer)
        transport.protocol.makeConnection(transport)
        for piece in cut(data, cuts):
            transport.protocol.dataReceived(piece)
        # A listener without raw TCP (no container port) takes any method-shaped word as HTTP.
        verdict = classify(data[:SNIFF_MAX_BYTES], request_lines=True)
        built = {kind: handler.built for kind, handler in handlers.items()}
        if verdict in handlers:
            [protocol] = built.pop(verdict)
            self.assertEqual(protocol.received(), data, "the replay is exact")
            self.assertIs(transport.protocol, protocol)
        elif verdict is Verdict.UNKNOWN:
            self.assertTrue(transport.disconnected, "an unknown opening is closed")
            self.assertEqual(factory.stats.unknown, 1)
        else:
            self.assertIs(verdict, Verdict.NEED_MORE)
            self.assertFalse(transport.disconnected or transport.disconnecting)
        self.assertEqual([b for b in built.values() if b], [], "no other handler was built")


# The ClientHello parser against real pyOpenSSL clients

_LDH = "abcdefghijklmnopqrstuvwxyz0123456789"


def _ldh_label() -> st.SearchStrategy[str]:
    inner = st.text(_LDH + "-", max_size=61)
    edge = st.sampled_from(_LDH)
    return st.one_of(edge, st.tuples(edge, inner, edge).map("".join))


def _a_label() -> st.SearchStrategy[str]:
    """An IDNA A-label (xn--...), from a label of non-ASCII letters."""
    letters = st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, categories=["Ll", "Lo"])
    return (st.text(letters, min_size=1, max_size=12)
            .map(lambda text: "xn--" + text.encode("punycode").decode("ascii"))
            .filter(lambda label: len(label) <= 63))


def _fit(labels: list[str]) -> str:
    """The labels joined, dropping from the front until the name fits 253 characters."""
    while len(".".join(labels)) > 253:
        labels = labels[1:]
    return ".".join(labels)


def _mixed_case(draw: Any, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips))


@st.composite
def sni_names(draw: Any) -> str:
    """Valid DNS names as clients send them: LDH and A-labels, up to 253 characters and 127 labels."""
    shape = draw(st.sampled_from(["few", "many", "long"]))
    if shape == "many":
        labels = draw(st.lists(st.sampled_from(_LDH), min_size=2, max_size=127))
    elif shape == "long":
        labels = draw(st.lists(st.text(_LDH, min_size=50, max_size=63), min_size=4, max_size=5))
    else:
        labels = draw(st.lists(st.one_of(_ldh_label(), _a_label()), min_size=1, max_size=8))
    name = _fit(labels) or "a"
    name = _mixed_case(draw, name) if draw(st.booleans()) else name
    return name + "." if draw(st.booleans()) and len(name) <= 253 else name


def client_hello(server_name: str | None, alpn: list[bytes], max_version: int | None) -> bytes:
    """The first flight of a pyOpenSSL client (L{captured_client_hello}) for a drawn name and ALPN list."""
    return captured_client_hello(None if server_name is None else server_name.encode("ascii"), alpn or None, max_version)


_REAL_HELLO = client_hello("app.cloud.example", [b"h2", b"http/1.1"], None)


def _mutated_hello(mutation: tuple[int, bytes]) -> bytes:
    position, value = mutation
    position %= len(_REAL_HELLO)
    return _REAL_HELLO[:position] + value + _REAL_HELLO[position + len(value):]


class ClientHelloProperties(SynchronousTestCase):
    @budget(1)
    @given(st.one_of(st.none(), sni_names()),
           st.lists(st.binary(min_size=1, max_size=40), max_size=6),
           st.sampled_from([None, SSL.TLS1_2_VERSION]),
           _cuts)
    def test_agrees_with_pyopenssl_clients(self, name: str | None, alpn: list[bytes], max_version: int | None,
                                           cuts: list[int]) -> None:
        hello = client_hello(name, alpn, max_version)
        parser = ClientHelloParser()
        results = [parser.feed(piece) for piece in cut(hello, cuts)]
        self.assertEqual(results[:-1], [None] * (len(results) - 1), "nothing is parsed before the last byte")
        result = results[-1]
        assert result is not None
        expected = None if name is None else name.lower().removesuffix(".")
        self.assertEqual(result.server_name, expected)
        self.assertEqual(result.alpn, tuple(protocol.decode("latin-1") for protocol in alpn))
        self.assertEqual(parser.buffered, hello)

    @budget(0.5)
    @given(sni_names(), st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=5), _cuts)
    def test_reassembled_from_any_record_sizes(self, name: str, sizes: list[int], cuts: list[int]) -> None:
        """The same hello re-framed into records of arbitrary sizes (RFC 8446 5.1 allows it)."""
        stream = records(handshake_bytes(client_hello(name, [b"http/1.1"], None)), sizes)
        parser = ClientHelloParser()
        result = None
        for piece in cut(stream, cuts):
            result = parser.feed(piece)
        assert result is not None
        self.assertEqual((result.server_name, result.alpn), (name.lower().removesuffix("."), ("http/1.1",)))

    @budget(3)
    @given(st.one_of(st.binary(max_size=600),
                     st.binary(max_size=600).map(lambda tail: b"\x16\x03\x01" + tail),
                     st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=8)).map(_mutated_hello)),
           _cuts)
    def test_only_hellos_or_its_error(self, data: bytes, cuts: list[int]) -> None:
        parser = ClientHelloParser(max_bytes=4096)
        try:
            for piece in cut(data, cuts):
                self.assertIn(type(parser.feed(piece)), (type(None), ClientHello))
        except ClientHelloError as problem:
            self.assertIsInstance(problem.reason, str)
            with self.assertRaises(ClientHelloError):
                parser.feed(b"")
        self.assertEqual(parser.buffered, data[: len(parser.buffered)])


# The HTTP head handling, through the real protocol

_BACKEND_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Fuzz: backend\r\n\r\n"
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"


class _Frames:
    """llhttp's framing of a byte stream: heads and their targets, until it errs or upgrades."""

    def __init__(self) -> None:
        self.parser = HttpRequestParser(self)
        self.targets: list[bytes] = []
        self.completed = 0
        self.error: str | None = None
        self.stopped = False
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self.targets.append(self._url)
        self._url = b""

    def on_message_complete(self) -> None:
        self.completed += 1

    def feed(self, data: bytes) -> None:
        if self.stopped or not data:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.stopped = True
        except HttpParserError as problem:
            self.stopped = True
            self.error = str(problem)


def _tokens(*values: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from(values)


_methods = st.one_of(_tokens(b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"CONNECT", b"TRACE",
                             b"PATCH", b"get", b"G ET", b"", b"PRI"),
                     st.binary(min_size=1, max_size=6))
_targets = st.one_of(_tokens(b"/", b"/a?b=c", b"*", b"http://app.test/x", b"https://app.test:443/y",
                             b"http://user@app.test/", b"ftp://app.test/", b"//app.test/", b"/%2e%2e/etc",
                             b"/a/../../b", b"/a b", b"app.test:443", b"/\x00", b"/\xff", b"/%", b"/a#frag"),
                     st.binary(max_size=12).map(lambda tail: b"/" + tail))
_versions = _tokens(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/0.9", b"", b"HTTP/1.1 ")
_header_names = st.one_of(_tokens(b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                  b"Expect", b"Upgrade", b"X-Forwarded-For", b"Forwarded", b"X-Request-ID",
                                  b"Transfer-Encoding ", b"Content-Length\t", b" Host", b"X[1]", b"TE",
                                  b"Trailer", b"Keep-Alive", b"Proxy-Connection"),
                          st.binary(min_size=1, max_size=8))
_header_values = st.one_of(_tokens(b"app.test", b"APP.TEST.:80", b"app.test:x", b"other.test", b"5", b"0", b"-1",
                                   b"+5", b"5, 5", b"0x5", b"99999999999999999999", b"chunked", b"gzip, chunked",
                                   b"chunked, identity", b"CHUNKED", b"close", b"keep-alive, upgrade", b"upgrade",
                                   b"100-continue", b"websocket", b"h2c", b"", b"a\r\n b", b"a\rb", b"a\x00b"),
                           st.binary(max_size=10))
_separators = _tokens(b": ", b":", b" : ", b":\t", b"::")
_line_ends = _tokens(b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r")
_bodies = st.one_of(_tokens(b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n" + _SMUGGLED,
                            b"hello" + _SMUGGLED, _SMUGGLED, b"5\r\nhelloXX\r\n0\r\n\r\n", b"zz\r\n",
                            b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"),
                    st.binary(max_size=40))


_TRAPS = ("method", "target", "version", "space", "end", "header", "separator", "body", "host", "framing")
_benign_headers = _tokens(b"X-A: b", b"Connection: keep-alive", b"Connection: close", b"Expect: 100-continue",
                          b"X-Forwarded-For: 6.6.6.6", b"Accept: */*", b"Connection: upgrade\r\nUpgrade: websocket",
                          b"Cookie: a=b", b"X-Request-ID: fuzz-1", b"TE: trailers")


@st.composite
def near_valid_requests(draw: Any) -> bytes:
    """
    One request as a client might write it: well-formed but for up to two
    traps (a wild method, target, version, separator, line end, header,
    body, Host or framing), so that both the forwarding and the refusing
    paths are exercised.
    """
    traps = draw(st.sets(st.sampled_from(_TRAPS), max_size=2))

    def pick(trap: str, valid: st.SearchStrategy[bytes], wild: st.SearchStrategy[bytes]) -> bytes:
        return draw(wild if trap in traps else valid)

    end = pick("end", st.just(b"\r\n"), _line_ends)
    method = pick("method", _tokens(b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"), _methods)
    target = pick("target", _tokens(b"/", b"/a?b=c", b"/x/y", b"/%41"), _targets)
    space = pick("space", st.just(b" "), _tokens(b"  ", b"\t", b" \t"))
    version = pick("version", _tokens(b"HTTP/1.1", b"HTTP/1.0"), _versions)
    body = pick("body", _tokens(b"", b"hello", b"x" * 40), _bodies)
    lines = [] if "host" in traps else [b"Host: app.test"]
    lines += draw(st.lists(_benign_headers, max_size=3))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if "framing" in traps:
        lines += draw(st.lists(st.tuples(_tokens(b"Content-Length", b"Transfer-Encoding"), _header_values)
                               .map(lambda pair: pair[0] + b": " + pair[1]), min_size=1, max_size=2))
    elif framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        body = b""
    if "header" in traps:
        lines.append(draw(_header_names) + draw(_separators) + draw(_header_values))
    if "separator" in traps:
        lines = [line.replace(b": ", draw(_separators), 1) for line in lines]
    lines = draw(st.permutations(lines))
    head = method + space + target + b" " + version + end + b"".join(line + end for line in lines) + end
    return head + body


class _Run:
    """One client connection through the proxy, with backends that answer every request they frame."""

    def __init__(self, settings: ProxySettings) -> None:
        self.harness = ProxyHarness([backend_route("app.test", "/", "10.0.0.5:8080")], settings)
        self.client: ClientConnection = self.harness.connect_client()
        self.frames: dict[int, _Frames] = {}
        self.fed: dict[int, int] = {}

    def serve_backends(self) -> bool:
        progressed = False
        for _ in self.harness.pending_attempts():
            self.harness.accept()
            progressed = True
        for backend in self.harness.backends:
            progressed |= self._serve(backend)
        return progressed

    def _serve(self, backend: BackendConnection) -> bool:
        key = id(backend)
        frames = self.frames.setdefault(key, _Frames())
        data = backend.received()
        new = data[self.fed.get(key, 0):]
        if not new or backend.transport.lost:
            return False
        self.fed[key] = len(data)
        answered = len(frames.targets)
        frames.feed(new)
        for _ in range(len(frames.targets) - answered):
            if not backend.transport.lost and not backend.transport.disconnecting:
                backend.send(_BACKEND_ANSWER)
        return True

    def drive(self, pieces: list[bytes]) -> None:
        pending = list(pieces)
        for _ in range(4 * len(pending) + 20):
            if self.serve_backends():
                continue
            transport = self.client.transport
            if pending and not (transport.paused or transport.disconnecting or transport.lost):
                self.client.send(pending.pop(0))
                continue
            break
        self.harness.flush()
        self.serve_backends()


_STATUS = re.compile(rb"(?:\A|\r\n)HTTP/1\.[01] (\d{3}) ")


class HTTPHeadProperties(SynchronousTestCase):
    """
    Whatever a client sends: a 4xx (or 501/505) from the gateway or a
    well-formed request to the backend, never a 500, never more requests
    forwarded than llhttp frames in the client's bytes.
    """

    proxy_settings = ProxySettings(max_header_bytes=2048, max_body_size=1000)

    def check(self, data: bytes, cuts: list[int]) -> None:
        run = _Run(self.proxy_settings)
        run.drive(cut(data, cuts))
        sent = _Frames()
        sent.feed(data)

        received = run.client.received()
        statuses = [int(s) for s in _STATUS.findall(received)]
        # The HTTP/2 preface is answered in HTTP/2 (a GOAWAY), alone.
        self.assertTrue(received in (b"", HTTP2_REFUSAL) or received.startswith(b"HTTP/1.1 "), received[:200])
        self.assertNotIn(500, statuses, f"an exception inside the proxy: {received[:300]!r}")
        for status in statuses:
            self.assertTrue(status < 300 or 400 <= status < 500 or status in (501, 505), (status, received[:300]))
        backend_frames = list(run.frames.values())
        for frames in backend_frames:
            self.assertIsNone(frames.error, "the gateway wrote a malformed request to a backend")
        forwarded = [target for frames in backend_frames for target in frames.targets]
        self.assertLessEqual(len(forwarded), len(sent.targets), (forwarded, sent.targets))
        self.assertLessEqual(forwarded.count(b"/smuggled"), sent.targets.count(b"/smuggled"), forwarded)

    @budget(3)
    @given(near_valid_requests(), _cuts)
    def test_near_valid_request(self, data: bytes, cuts: list[int]) -> None:
        self.check(data, cuts)

    @budget(1)
    @given(st.lists(near_valid_requests(), min_size=2, max_size=3).map(b"".join), _cuts)
    def test_pipelined_near_valid_requests(self, data: bytes, cuts: list[int]) -> None:
        self.check(data, cuts)

    @budget(1)
    @given(st.one_of(st.binary(max_size=300),
                     st.binary(max_size=300).map(lambda tail: b"GET / HTTP/1.1\r\nHost: app.test\r\n" + tail)),
           _cuts)
    def test_arbitrary_bytes(self, data: bytes, cuts: list[int]) -> None:
        self.check(data, cuts)

    @budget(1)
    @given(st.sampled_from([b"Content-Length: 5", b"Transfer-Encoding: chunked"]),
           st.sampled_from([b"Content-Length: 40", b"Transfer-Encoding: chunked", b"Content-Length: 0",
                            b"Transfer-Encoding: identity", b"Content-Length: 5"]),
           _bodies, _cuts)
    def test_two_framings_forward_at_most_one_request(self, first: bytes, second: bytes, body: bytes,
                                                      cuts: list[int]) -> None:
        """The classic CL.TE / TE.CL / CL.CL shapes with a request hidden in the body."""
        data = b"POST / HTTP/1.1\r\nHost: app.test\r\n" + first + b"\r\n" + second + b"\r\n\r\n" + body
        run = _Run(self.proxy_settings)
        run.drive(cut(data, cuts))
        forwarded = [target for frames in run.frames.values() for target in frames.targets]
        if first.split(b":")[0] != second.split(b":")[0]:
            self.assertEqual(forwarded, [], "two framings must be refused before any backend")
        self.assertNotIn(b"/smuggled", forwarded)


# The routes file loader

_route_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=True),
    st.sampled_from(["app.test", "*.app.test", "APP.test.", "/", "/api", "/api/", "api", "10.0.0.5:8080",
                     "127.0.0.1:0", "[::1]:80", "internal:welcome", "passthrough", "exact", "prefix", "v1", "v2",
                     "5s", "1.5", "-1", "", "a..b", "/a/../b", "/%2e%2e", "\u00e9.test", "x" * 300]),
    st.text(max_size=12),
    st.lists(st.text(max_size=4), max_size=2),
)
_route_mappings = st.dictionaries(st.one_of(st.sampled_from(ROUTE_KEYS), st.text(max_size=6)), _route_values,
                                  max_size=len(ROUTE_KEYS) + 1)
_documents = st.one_of(
    st.fixed_dictionaries({"routes": st.lists(_route_mappings, max_size=4)},
                          optional={"defaults": st.dictionaries(st.sampled_from(["connect_timeout",
                                                                                  "response_timeout", "x"]),
                                                                _route_values, max_size=2)}),
    st.lists(_route_mappings, max_size=2), _route_values,
).map(lambda document: yaml.safe_dump(document, allow_unicode=True))


_FILE_LINE_BREAK = re.compile("\r\n|[\n\r]")


class RoutesLoaderProperties(SynchronousTestCase):
    def check(self, text: str) -> None:
        try:
            routes = load_routes_text(text, "routes.yaml")
        except RoutesFileError as problem:
            self.assertTrue(problem.errors)
            # Lines as editors count them (not NEL, LS and PS, which YAML
            # 1.1 also counts: see RoutesLoaderLineTests).
            lines = len(_FILE_LINE_BREAK.findall(text)) + 2
            for error in problem.errors:
                self.assertTrue(0 <= error.line <= lines, f"{error} in {text!r}")
                self.assertTrue(str(error).startswith("routes.yaml:"), error)
            return
        for route in routes:
            self.assertIsInstance(route, Route)
            self.assertTrue(route.path.startswith("/"), route)

    @budget(2)
    @given(_documents)
    def test_structured_documents(self, text: str) -> None:
        self.check(text)

    @budget(1)
    @given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
    def test_any_text(self, text: str) -> None:
        self.check(text)


class RoutesLoaderLineTests(SynchronousTestCase):
    """Found by test_structured_documents: PyYAML counts NEL, LS and PS as line breaks; editors do not."""

    def test_nel_in_a_comment_does_not_shift_lines(self) -> None:
        text = "routes:\n- host: a.test  # note\x85\x85\x85\n  path: /\n  target: 10.0.0.5:80\n- {}\n"
        with self.assertRaises(RoutesFileError) as raised:
            load_routes_text(text, "routes.yaml")
        self.assertEqual([problem.line for problem in raised.exception.errors], [5],
                         "the route without keys is on line 5 as editors and `wc -l` count")
    def test_line_separators_in_a_configmap_block(self) -> None:
        text = ("apiVersion: v1\nkind: ConfigMap  # \u2028\u2029\nmetadata: {name: gateway-routes}\ndata:\n"
                "  routes.yaml: |\n    routes:\n    - host: a.test  # \x85\n      path: /\n"
                "      target: 10.0.0.5:80\n    - {}\n")
        with self.assertRaises(RoutesFileError) as raised:
            load_routes_text(text, "configmap.yaml")
        self.assertEqual([problem.line for problem in raised.exception.errors], [10])


# The SSH user name parser against a reference grammar

# docs/ssh.md: <container-id> or <user>.<container-id>, split at the last dot;
# a container id is a DNS label (any case), a user is POSIX-portable, at most
# 32 characters, not starting with '-' or '.'; the whole name at most 96.
_REFERENCE = re.compile(
    r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})\.)?"
    r"(?P<cid>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
)


def reference_parse(name: str) -> SSHTarget | None:
    if len(name) > 96 or not name.isascii():
        return None
    match = _REFERENCE.fullmatch(name)
    if match is None:
        return None
    return SSHTarget(match["cid"].lower(), match["user"] or DEFAULT_USER)


_name_alphabet = st.sampled_from(list("abcXYZ019._-") + ["\u00e9", "@", " ", "\x00", "\n", "/", ":"])


class SSHUsernameProperties(SynchronousTestCase):
    @budget(3)
    @given(st.one_of(st.text(_name_alphabet, max_size=110), st.text(max_size=40)))
    def test_agrees_with_the_reference_grammar(self, name: str) -> None:
        expected = reference_parse(name)
        try:
            target = parse_ssh_username(name)
        except InvalidUsername as problem:
            self.assertIsNone(expected, f"{name!r} refused: {problem}")
            self.assertTrue(str(problem).isprintable())
            return
        self.assertEqual(target, expected)

    @budget(1)
    @given(st.binary(max_size=110))
    def test_any_bytes(self, name: bytes) -> None:
        try:
            target = parse_ssh_username(name)
        except InvalidUsername as problem:
            self.assertTrue(str(problem).isprintable())
            return
        self.assertEqual(target, reference_parse(name.decode("ascii")))
