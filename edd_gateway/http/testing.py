"""
In-memory doubles for the HTTP proxy's unit tests: a proxy built on a
L{MemoryReactorClock} (L{ProxyHarness}), client and backend connections on
in-memory transports that behave like Twisted's TCP transport where the proxy
depends on it (L{FakeConnection}), and a reader for the bytes a client got
(L{read_responses}).

Nothing here touches the network or the global reactor; time moves only when
a test advances C{harness.clock}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edd_gateway.http.factory import HTTPProxyFactory
from edd_gateway.http.server import HTTPServerProtocol
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.pool import UpstreamPool
from edd_gateway.http.upstream import UpstreamProtocol
from edd_gateway.routes.model import Route, Target
from edd_gateway.routes.table import LiveRouteTable, RouteTable

__all__ = [
    "BackendConnection", "ClientConnection", "FakeConnection", "ParsedResponse", "ProxyHarness",
    "backend_route", "read_responses",
]


class FakeConnection(StringTransport):
    """
    One end of a TCP connection, in memory.

    Unlike a bare L{StringTransport} it behaves as Twisted's TCP transport
    does in the ways the proxy relies on:
      - pausing or resuming after C{loseConnection} is allowed (and ignored);
      - C{stopProducing} closes the connection (C{FileDescriptor});
      - when the connection is lost (L{lose}) a registered producer is
        stopped I{before} the protocol hears of it, as
        C{tcp.Connection.connectionLost} does;
      - it names its protocol (C{protocol}), so an upgrade can hand it over;
      - writes after the connection is lost are dropped.
    Closing is never immediate: C{loseConnection} and C{abortConnection}
    only record the wish; L{lose} (or L{ProxyHarness.flush}) delivers it.
    """

    def __init__(self, peer: Any = None, host: Any = None) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.protocol: Any = None
        self.aborted = False
        self.lost = False

    def write(self, data: bytes) -> None:
        # Like TCP: writes after the connection ended go nowhere.
        if not self.lost:
            super().write(data)

    def writeSequence(self, data: Any) -> None:
        if not self.lost:
            super().writeSequence(data)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def stopProducing(self) -> None:
        self.loseConnection()

    def pauseProducing(self) -> None:
        if not self.lost:
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if not self.lost:
            self.producerState = "producing"

    @property
    def paused(self) -> bool:
        return self.producerState == "paused"

    def lose(self, reason: BaseException | None = None) -> None:
        """Deliver the end of the connection, the way the reactor would."""
        if self.lost:
            return
        self.lost = True
        self.connected = False
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        if reason is None:
            reason = error.ConnectionAborted() if self.aborted else error.ConnectionDone()
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(reason))


@dataclass
class ClientConnection:
    """A client connected to the proxy."""

    protocol: HTTPServerProtocol
    transport: FakeConnection

    def send(self, data: bytes) -> None:
        """Bytes from the client, delivered to whoever reads this connection now."""
        self.transport.protocol.dataReceived(data)

    def send_bytewise(self, data: bytes) -> None:
        for index in range(len(data)):
            if self.transport.lost or self.transport.disconnecting:
                return
            self.send(data[index:index + 1])

    def received(self) -> bytes:
        return self.transport.value()

    def responses(self, head_requests: Sequence[int] = ()) -> list["ParsedResponse"]:
        return read_responses(self.received(), head_requests)

    @property
    def closing(self) -> bool:
        """The proxy asked to close (gracefully or not) this connection."""
        return bool(self.transport.disconnecting)


@dataclass
class BackendConnection:
    """One connection the proxy opened to a backend, completed by the test."""

    host: str
    port: int
    timeout: float
    transport: FakeConnection

    @property
    def upstream(self) -> UpstreamProtocol:
        wrapper = self.transport.protocol
        return getattr(wrapper, "_wrappedProtocol", wrapper)

    def received(self) -> bytes:
        return self.transport.value()

    def clear(self) -> None:
        self.transport.clear()

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)

    def close(self, reason: BaseException | None = None) -> None:
        self.transport.lose(reason)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


class ProxyHarness:
    """
    The proxy with its routes, pool and settings, on a memory reactor.

    Backend connection attempts appear in C{reactor.tcpClients}; the test
    completes them with L{accept} or fails them with L{refuse}, oldest first.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        settings: ProxySettings | None = None,
        scheme: str = "http",
        http2_relay: Any = None,
    ) -> None:
        self.settings = settings or ProxySettings()
        self.reactor = MemoryReactorClock()
        self.clock = self.reactor
        self.pool = UpstreamPool(
            self.reactor, self.reactor,
            max_idle=self.settings.pool_max_idle,
            max_per_backend=self.settings.pool_max_per_backend,
            idle_timeout=self.settings.pool_idle_timeout,
            max_streams_per_client=self.settings.body_streams_per_client,
        )
        self.routes = LiveRouteTable(RouteTable(routes))
        self.factory = HTTPProxyFactory(self.routes, self.pool, self.settings, self.reactor, scheme,
                                        http2_relay=http2_relay)
        self.clients: list[ClientConnection] = []
        self.backends: list[BackendConnection] = []
        self._handled: set[int] = set()

    # Clients

    def connect_client(self, ip: str = "203.0.113.7", port: int = 40000) -> ClientConnection:
        address_type = IPv6Address if ":" in ip else IPv4Address
        transport = FakeConnection(peer=address_type("TCP", ip, port))
        protocol = self.factory.buildProtocol(transport.getPeer())
        transport.protocol = protocol
        protocol.makeConnection(transport)
        client = ClientConnection(protocol, transport)
        self.clients.append(client)
        return client

    # Backends

    @property
    def connect_attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def pending_attempts(self) -> list[int]:
        return [i for i in range(self.connect_attempts) if i not in self._handled]

    def _next(self, index: int | None) -> int:
        if index is None:
            pending = self.pending_attempts()
            if not pending:
                raise AssertionError("the proxy has not tried to connect to a backend")
            index = pending[0]
        if index in self._handled:
            raise AssertionError(f"connection attempt {index} was already completed")
        self._handled.add(index)
        return index

    def accept(self, index: int | None = None) -> BackendConnection:
        """Complete a backend connection attempt."""
        index = self._next(index)
        host, port, factory, timeout, _ = self.reactor.tcpClients[index]
        address = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        transport = FakeConnection(peer=address, host=IPv4Address("TCP", "10.0.0.1", 50000 + index))
        protocol = factory.buildProtocol(address)
        assert protocol is not None  # the pool's factories build one for every attempt
        transport.protocol = protocol
        protocol.makeConnection(transport)
        backend = BackendConnection(host, port, timeout, transport)
        self.backends.append(backend)
        return backend

    def refuse(self, index: int | None = None, reason: BaseException | None = None) -> None:
        """Fail a backend connection attempt (refused, unless C{reason} says otherwise)."""
        index = self._next(index)
        factory = self.reactor.tcpClients[index][2]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(reason or error.ConnectionRefusedError()))

    # Time and closes

    def flush(self) -> None:
        """Finish every close the proxy asked for, as the reactor's next turns would."""
        while True:
            connections: list[ClientConnection | BackendConnection] = [*self.clients, *self.backends]
            closing = [
                connection.transport
                for connection in connections
                if connection.transport.disconnecting and not connection.transport.lost
            ]
            if not closing:
                return
            for transport in closing:
                transport.lose()


def backend_route(
    host: str = "app.test", path: str = "/", target: str = "10.0.0.5:8080", **options: Any
) -> Route:
    """A route to a backend, for tests."""
    name, _, port = target.rpartition(":")
    return Route(host=host, path=path, target=Target(name.strip("[]"), int(port)), **options)


# Reading what a client received


@dataclass
class ParsedResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    complete: bool = True

    def header(self, name: str) -> bytes | None:
        values = self.headers_named(name)
        return values[-1] if values else None

    def headers_named(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]


def read_responses(data: bytes, head_requests: Sequence[int] = ()) -> list[ParsedResponse]:
    """
    The responses in C{data}, in order.  1xx responses are listed too.
    C{head_requests} gives the indexes (among final responses) that answer
    HEAD.  A response framed by neither length nor chunks takes the rest.

    Hand-written rather than httptools: llhttp cannot be told that a
    response answers HEAD, nor that the connection ended.
    """
    responses: list[ParsedResponse] = []
    final = 0
    position = 0
    while position < len(data):
        end = data.find(b"\r\n\r\n", position)
        if end < 0:
            raise AssertionError(f"an incomplete response head: {data[position:]!r}")
        lines = data[position:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status_text, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not status_text.isdigit():
            raise AssertionError(f"not a status line: {lines[0]!r}")
        response = ParsedResponse(int(status_text), reason)
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise AssertionError(f"not a header line: {line!r}")
            response.headers.append((name, value.strip()))
        position = end + 4
        responses.append(response)
        if response.status < 200 and response.status != 101:
            continue
        if response.status == 101:
            response.body = data[position:]
            return responses
        is_head = final in head_requests
        final += 1
        if is_head or response.status in (204, 304):
            continue
        length = response.header("content-length")
        if response.header("transfer-encoding") is not None:
            response.chunked = True
            position = _read_chunks(data, position, response)
        elif length is not None:
            size = int(length)
            response.body = data[position:position + size]
            response.complete = len(response.body) == size
            position += size
        else:
            response.body = data[position:]
            position = len(data)
    return responses


def _read_chunks(data: bytes, position: int, response: ParsedResponse) -> int:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            response.complete = False
            break
        size = int(data[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            if data[position:position + 2] != b"\r\n":
                response.complete = False
                break
            position += 2
            break
        body += data[position:position + size]
        if data[position + size:position + size + 2] != b"\r\n":
            response.complete = False
            position = len(data)
            break
        position += size + 2
    response.body = bytes(body)
    return position
