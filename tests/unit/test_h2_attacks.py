"""
The HTTP/2 attacks of the last years against L{edd_gateway.h2}, each with
frames written by hand (hyperframe and hpack, which the C{h2} client would
refuse to misuse): every one ends in a GOAWAY or RST_STREAM with the code
RFC 9113 gives, a log line naming the client, and, where it is abuse, a
strike with admission.
"""

from __future__ import annotations

from collections import Counter

from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.guard import FrameGuard, GuardLimits
from edd_gateway.h2.settings import H2Settings
from edd_gateway.h2.testing import frames, open_h2
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness, backend_route

CLIENT_IP = "198.51.100.23"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"), (b":path", b"/")]


class Strikes:
    """Admission as the connection sees it: what was counted against whom."""

    def __init__(self) -> None:
        self.hits: Counter[tuple[str, str | None]] = Counter()
        self.garbage: list[str] = []

    def hit(self, limit: str, host: str | None = None) -> None:
        self.hits[(limit, host)] += 1

    def garbage_from(self, host: str) -> None:
        self.garbage.append(host)


class Attacker:
    """A raw HTTP/2 client: the preface and SETTINGS, then whatever frames a test writes."""

    def __init__(self, test: SynchronousTestCase, settings: H2Settings | None = None,
                 proxy_settings: ProxySettings | None = None) -> None:
        self.proxy = ProxyHarness([backend_route("app.test", "/")], proxy_settings, scheme="https")
        self.strikes = Strikes()
        self.proxy.factory.admission = _Admission(self.strikes)
        self.protocol, self.transport = open_h2(self.proxy, settings, ip=CLIENT_IP)
        self.encoder = Encoder()
        self.received: list[Frame] = []
        self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> list[Frame]:
        if data and not self.closed:
            self.protocol.dataReceived(data)
        new = frames(self.transport.value())
        self.transport.clear()
        self.received += new
        return new

    def headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = True) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(headers)
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def goaway(self) -> int | None:
        codes = [f.error_code for f in self.received if isinstance(f, GoAwayFrame)]
        return codes[-1] if codes else None

    def resets(self) -> list[tuple[int, int]]:
        return [(f.stream_id, f.error_code) for f in self.received if isinstance(f, RstStreamFrame)]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class _Admission:
    def __init__(self, strikes: Strikes) -> None:
        self.strikes = strikes

    def hit(self, limit: str, host: str | None = None) -> None:
        self.strikes.hit(limit, host)

    def garbage(self, host: str) -> None:
        self.strikes.garbage_from(host)


def _logged(events: list[dict[str, object]]) -> str:
    return "\n".join(formatEvent(event) for event in events)


class FloodTests(SynchronousTestCase):
    def assertCalmedDown(self, attacker: Attacker, limit: str, logs: list[dict[str, object]]) -> None:
        self.assertEqual(attacker.goaway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(attacker.closed)
        self.assertEqual(attacker.strikes.hits[(limit, CLIENT_IP)], 1)
        self.assertIn(CLIENT_IP, _logged(logs))

    def test_rapid_reset(self) -> None:
        """CVE-2023-44487: streams opened and reset at once, never answered, never counted as open."""
        attacker = Attacker(self, H2Settings(guard=GuardLimits(resets=50)))
        with capturedLogs() as logs:
            for stream in range(1, 2 * 60, 2):
                frame = RstStreamFrame(stream)
                frame.error_code = ErrorCodes.CANCEL
                attacker.send(attacker.headers(stream, REQUEST, end_stream=False) + frame.serialize())
                if attacker.closed:
                    break
        self.assertCalmedDown(attacker, "h2-rapid-reset", logs)
        self.assertLessEqual(attacker.proxy.connect_attempts, 51)

    def test_ping_flood(self) -> None:
        attacker = Attacker(self, H2Settings(guard=GuardLimits(pings=20)))
        with capturedLogs() as logs:
            attacker.send(b"".join(PingFrame(0, opaque_data=b"%08d" % n).serialize() for n in range(30)))
        self.assertCalmedDown(attacker, "h2-ping-flood", logs)

    def test_settings_flood(self) -> None:
        attacker = Attacker(self, H2Settings(guard=GuardLimits(settings=20)))
        with capturedLogs() as logs:
            attacker.send(SettingsFrame(0).serialize() * 30)
        self.assertCalmedDown(attacker, "h2-settings-flood", logs)

    def test_window_update_flood(self) -> None:
        attacker = Attacker(self, H2Settings(guard=GuardLimits(window_updates=100)))
        update = WindowUpdateFrame(0, window_increment=1).serialize()
        with capturedLogs() as logs:
            attacker.send(update * 150)
        self.assertCalmedDown(attacker, "h2-window-update-flood", logs)

    def test_empty_data_frames(self) -> None:
        attacker = Attacker(self, H2Settings(guard=GuardLimits(empty_frames=50)))
        with capturedLogs() as logs:
            attacker.send(attacker.headers(1, [(b":method", b"POST"), *REQUEST[1:]], end_stream=False))
            attacker.send(DataFrame(1).serialize() * 60)
        self.assertCalmedDown(attacker, "h2-empty-frames", logs)

    def test_continuation_flood(self) -> None:
        """CVE-2024-27316: a header block that never ends, CONTINUATION after CONTINUATION."""
        attacker = Attacker(self, H2Settings(guard=GuardLimits(header_block=16384)))
        start = HeadersFrame(1)
        start.data = attacker.encoder.encode(REQUEST)
        more = ContinuationFrame(1)
        more.data = b"\x00" * 4000
        with capturedLogs() as logs:
            attacker.send(start.serialize())
            for _ in range(10):
                attacker.send(more.serialize())
        self.assertCalmedDown(attacker, "header-size", logs)
        self.assertEqual(attacker.proxy.connect_attempts, 0)


class MalformedTests(SynchronousTestCase):
    """RFC 9113 8.1.1 and 8.2: a malformed request never reaches a backend."""

    def assertRefused(self, headers: list[tuple[bytes, bytes]], end_stream: bool = True) -> Attacker:
        attacker = Attacker(self)
        with capturedLogs() as logs:
            attacker.send(attacker.headers(1, headers, end_stream))
        refused = attacker.goaway() == ErrorCodes.PROTOCOL_ERROR or (1, ErrorCodes.PROTOCOL_ERROR) in attacker.resets()
        self.assertTrue(refused, attacker.received)
        self.assertEqual(attacker.proxy.connect_attempts, 0)
        self.assertIn(CLIENT_IP, _logged(logs))
        return attacker

    def test_uppercase_name(self) -> None:
        self.assertRefused([*REQUEST, (b"X-Upper", b"1")])

    def test_connection_specific_header(self) -> None:
        self.assertRefused([*REQUEST, (b"connection", b"keep-alive")])
        self.assertRefused([*REQUEST, (b"transfer-encoding", b"chunked")])
        self.assertRefused([*REQUEST, (b"te", b"gzip")])

    def test_invalid_pseudo_headers(self) -> None:
        self.assertRefused([(b":method", b"GET"), (b":path", b"/")])  # no :scheme
        self.assertRefused([*REQUEST, (b":status", b"200")])  # a response's
        self.assertRefused([(b"x-a", b"1"), *REQUEST])  # a pseudo-header after a regular one
        self.assertRefused([*REQUEST, (b":path", b"/again")])  # twice

    def test_content_length_disagrees_with_data(self) -> None:
        attacker = Attacker(self)
        post = [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"3")]
        with capturedLogs() as logs:
            attacker.send(attacker.headers(1, post, end_stream=False))
            data = DataFrame(1, data=b"abcdef")
            data.flags.add("END_STREAM")
            attacker.send(data.serialize())
        self.assertEqual(attacker.goaway(), ErrorCodes.PROTOCOL_ERROR)
        self.assertIn(CLIENT_IP, _logged(logs))
        self.assertEqual(attacker.strikes.garbage, [CLIENT_IP])

    def test_hpack_bomb(self) -> None:
        """A small header block that decodes to far more than SETTINGS_MAX_HEADER_LIST_SIZE."""
        attacker = Attacker(self, proxy_settings=ProxySettings(max_header_bytes=8192))
        big = b"x" * 4000
        # The encoder puts the field in its dynamic table once and refers to
        # it by index after: a 4 KB block that decodes to 20 KB.
        attacker.send(attacker.headers(1, [*REQUEST, *[(b"x-bomb", big)] * 5]))
        self.assertIn(attacker.goaway(), (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.COMPRESSION_ERROR,
                                           ErrorCodes.ENHANCE_YOUR_CALM))
        self.assertEqual(attacker.proxy.connect_attempts, 0)


class StreamLimitTests(SynchronousTestCase):
    def test_more_streams_than_advertised(self) -> None:
        attacker = Attacker(self, H2Settings(max_concurrent_streams=3))
        advertised = [f.settings for f in attacker.received if isinstance(f, SettingsFrame) and f.settings]
        self.assertEqual(advertised[0][SettingsFrame.MAX_CONCURRENT_STREAMS], 3)
        for stream in (1, 3, 5, 7):
            attacker.send(attacker.headers(stream, REQUEST))
        self.assertTrue(attacker.goaway() is not None or any(s == 7 for s, _ in attacker.resets()))
        self.assertEqual(attacker.proxy.connect_attempts, 3)

    def test_zero_window_stall_resets_the_stream(self) -> None:
        """A client that never opens its window holds a backend no longer than the stream idle limit."""
        attacker = Attacker(self, proxy_settings=ProxySettings(websocket_idle_timeout=30))
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        with capturedLogs() as logs:
            attacker.send(settings.serialize() + attacker.headers(1, REQUEST))
            backend = attacker.proxy.accept()
            backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            attacker.proxy.clock.advance(31)
            attacker.send(b"")
        self.assertIn((1, ErrorCodes.CANCEL), attacker.resets())
        self.assertTrue(backend.transport.disconnecting or backend.transport.lost)
        self.assertEqual(attacker.strikes.hits[("stream-idle", CLIENT_IP)], 1)
        self.assertIn(CLIENT_IP, _logged(logs))


class GuardTests(SynchronousTestCase):
    def test_split_anywhere_same_verdict(self) -> None:
        """The guard reads frame headers split across reads as whole ones."""
        stream = PREFACE + b"".join(PingFrame(0).serialize() for _ in range(12))
        whole = FrameGuard(GuardLimits(pings=10), lambda: 0.0).feed(stream)
        guard = FrameGuard(GuardLimits(pings=10), lambda: 0.0)
        verdicts = [guard.feed(stream[i:i + 1]) for i in range(len(stream))]
        self.assertIsNotNone(whole)
        first = next(index for index, verdict in enumerate(verdicts) if verdict is not None)
        # The 11th PING's header is where the bound breaks, whatever the reads.
        self.assertEqual((first, verdicts[first]), (len(PREFACE) + 10 * 17 + 8, whole))

    def test_counts_start_again_each_interval(self) -> None:
        now = [0.0]
        guard = FrameGuard(GuardLimits(pings=10, interval=10), lambda: now[0])
        guard.feed(PREFACE)
        ping = PingFrame(0).serialize()
        for _ in range(3):
            self.assertIsNone(guard.feed(ping * 10))
            now[0] += 10
        self.assertIsNotNone(guard.feed(ping * 11))
