"""
HTTP/2 clients for tests: the C{h2} library as a client, wired to an
L{H2ServerProtocol} over an in-memory transport on the proxy's memory
reactor (L{edd_gateway.http.testing.ProxyHarness}), so that a test sends
frames and reads the events they cause, with no socket and no sleep.

C{raw} sends bytes as given: the attack tests misuse the protocol on
purpose, which the C{h2} client would refuse to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, ResponseReceived
from hyperframe.frame import Frame
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred

from edd_gateway.h2.backend_connection import BackendStream, BackendStreamListener
from edd_gateway.h2.server import H2ServerProtocol
from edd_gateway.h2.settings import H2Settings
from edd_gateway.http.testing import FakeConnection, ProxyHarness
from edd_gateway.routes.model import Target

Headers = list[tuple[bytes, bytes]]

__all__ = ["FakeBackendStream", "FakeH2Pool", "H2TestClient", "connect_h2", "frames", "open_h2"]


class H2TestClient:
    """One client connection: C{conn} is its C{h2} state, C{events} what it has received so far."""

    def __init__(self, protocol: H2ServerProtocol, transport: FakeConnection, clock: Any = None) -> None:
        self.protocol = protocol
        self.clock = clock
        self.transport = transport
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events: list[Event] = []
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> list[Event]:
        """Send what the client has queued, then read what the gateway wrote; the new events."""
        new: list[Event] = []
        for _ in range(100):
            if self.clock is not None:
                # The gateway sends a turn's frames together, at the end of the turn.
                self.clock.advance(0)
            outgoing = self.conn.data_to_send()
            if outgoing and not self.transport.lost:
                self.protocol.dataReceived(outgoing)
            incoming = self.transport.value()
            self.transport.clear()
            if not incoming and not outgoing:
                break
            if incoming:
                new += self.conn.receive_data(incoming)
        self.events += new
        return new

    def raw(self, data: bytes) -> list[Event]:
        """Bytes straight to the gateway, past the client's own checks; then what came back."""
        self.protocol.dataReceived(data)
        incoming = self.transport.value()
        self.transport.clear()
        new = self.conn.receive_data(incoming) if incoming else []
        self.events += new
        return new

    def request(self, authority: str = "app.test", path: str = "/", method: str = "GET",
                end_stream: bool = True, headers: Sequence[tuple[bytes, bytes]] = ()) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
            (b":path", path.encode()), *headers,
        ], end_stream=end_stream)
        self.flush()
        return stream_id

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        """The events of C{kind} received (for C{stream_id})."""
        return [e for e in self.events if isinstance(e, kind)
                and (stream_id is None or getattr(e, "stream_id", None) == stream_id)]

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(DataReceived, stream_id))

    def headers(self, stream_id: int) -> dict[bytes, bytes]:
        received = self.of(ResponseReceived, stream_id)
        return dict(received[-1].headers) if received else {}


def open_h2(harness: ProxyHarness, settings: H2Settings | None = None, ip: str = "203.0.113.7",
            port: int = 40000) -> tuple[H2ServerProtocol, FakeConnection]:
    """The gateway's side of a new HTTP/2 connection to C{harness}'s proxy (as if ALPN said h2); nothing sent yet."""
    transport = FakeConnection(peer=IPv4Address("TCP", ip, port))
    protocol = H2ServerProtocol(harness.factory, settings or H2Settings())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def connect_h2(harness: ProxyHarness, settings: H2Settings | None = None, ip: str = "203.0.113.7",
               port: int = 40000) -> H2TestClient:
    """An HTTP/2 client connection to C{harness}'s proxy, the preface exchanged."""
    return H2TestClient(*open_h2(harness, settings, ip, port), clock=harness.clock)


def frames(data: bytes) -> list[Frame]:
    """The frames in C{data}, read without a connection's state (an h2 client stops at GOAWAY; a browser does not)."""
    found = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        found.append(frame)
        data = data[9 + length:]
    return found


class FakeBackendStream(BackendStream):
    """A backend stream that records what the relay did with it; C{listener} is the relay to drive."""

    def __init__(self, listener: BackendStreamListener, target: Target, headers: Headers,
                 end_stream: bool) -> None:  # no connection behind it: BackendStream's own state is unused
        self.listener = listener
        self.target = target
        self.headers = headers
        self.data: list[bytes] = []
        self.ended = end_stream
        self.request_trailers: Headers | None = None
        self.acknowledged = 0
        self.reset_code: int | None = None

    def send_data(self, data: bytes) -> None:
        self.data.append(data)

    def end_request(self, trailers: Headers | None = None) -> None:
        self.ended = True
        self.request_trailers = trailers

    def consumed(self, n: int) -> None:
        self.acknowledged += n

    def reset(self, error_code: int = 8) -> None:
        self.reset_code = error_code


class FakeH2Pool:
    """
    The h2c backend pool's C{open_stream}, answered by the test: each call
    waits in C{opening} until L{accept} (a L{FakeBackendStream}) or L{refuse}.
    """

    def __init__(self) -> None:
        self.opening: list[tuple[Deferred[BackendStream], FakeBackendStream]] = []
        self.timeouts: list[float] = []

    def open_stream(self, target: Target, headers: Headers, listener: BackendStreamListener, timeout: float,
                    end_stream: bool = False) -> Deferred[BackendStream]:
        waiting: Deferred[BackendStream] = Deferred()
        self.opening.append((waiting, FakeBackendStream(listener, target, headers, end_stream)))
        self.timeouts.append(timeout)
        return waiting

    def accept(self, index: int = -1) -> FakeBackendStream:
        waiting, stream = self.opening[index]
        waiting.callback(stream)
        return stream

    def refuse(self, problem: Exception, index: int = -1) -> None:
        self.opening[index][0].errback(problem)
