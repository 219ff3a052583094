"""
Throwaway backends the gateway proxies to, listening on 127.0.0.1 inside the
test process: a JSON echo (L{EchoResource}), a large deterministic download
produced as the client reads (L{DownloadResource}), an event stream the test
advances (L{EventStreamResource}), misbehaving servers (L{behaviour_factory})
and a C{websockets} echo (L{start_websocket_echo}).  L{start_backend} tracks
connections so a stop closes them and waits for the close.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .tools import as_deferred, reactor_or_installed

_DOWNLOAD_CHUNK = 1 << 16
_ECHOED_BODY_LIMIT = 1 << 16


class _TrackingFactory(WrappingFactory):
    """Knows its connections, so a stop can close them and wait for the close."""

    def __init__(self, wrapped: protocol.Factory) -> None:
        super().__init__(wrapped)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for waiter in waiting:
                waiter.callback(None)

    def close_all(self) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        if not self.protocols:
            done.callback(None)
            return done
        self._idle.append(done)
        for wrapper in list(self.protocols):
            wrapper.transport.abortConnection()
        return done


@dataclass
class BackendServer:
    """A backend listening on 127.0.0.1 in the test process."""

    listening: Any
    tracker: _TrackingFactory
    app: Any = None

    @property
    def port(self) -> int:
        return int(self.listening.getHost().port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.listening.stopListening()
        await self.tracker.close_all()


def start_backend(factory: protocol.Factory[Any], app: Any = None, reactor: Any = None) -> BackendServer:
    tracker = _TrackingFactory(factory)
    listening = reactor_or_installed(reactor).listenTCP(0, tracker, interface="127.0.0.1")
    return BackendServer(listening, tracker, app)


def web_factory(resource: Resource) -> Site:
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log for it
    return site


class EchoResource(Resource):
    """Answers every request with JSON describing it; keeps the list."""

    isLeaf = True

    def __init__(self, name: str = "echo") -> None:
        super().__init__()
        self.name = name
        self.requests: list[dict[str, Any]] = []

    def render(self, request: Request) -> bytes:
        digest, length, small = hashlib.sha256(), 0, bytearray()
        content = request.content
        assert content is not None  # a Request has its body file once it is rendered
        content.seek(0)
        for chunk in iter(lambda: content.read(1 << 16), b""):
            digest.update(chunk)
            length += len(chunk)
            if len(small) < _ECHOED_BODY_LIMIT:
                small += chunk
        report = {
            "backend": self.name,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "headers": [[name.decode("latin-1").lower(), value.decode("latin-1")]
                        for name, values in request.requestHeaders.getAllRawHeaders() for value in values],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "body": bytes(small).decode("latin-1") if length <= _ECHOED_BODY_LIMIT else None,
        }
        self.requests.append(report)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", self.name.encode())
        return json.dumps(report).encode()


def echo_header(report: dict[str, Any], name: str) -> list[str]:
    """The values of header C{name} an echo backend received."""
    return [value for key, value in report["headers"] if key == name.lower()]


def _download_piece(index: int, size: int) -> bytes:
    """Chunk C{index} of a C{size}-byte download, cut short at the end."""
    # Every chunk differs, so a lost or repeated chunk changes the digest.
    chunk = hashlib.sha256(index.to_bytes(8, "big")).digest() * (_DOWNLOAD_CHUNK // 32)
    return chunk[: size - index * _DOWNLOAD_CHUNK]


def _download_pieces(size: int) -> Iterator[bytes]:
    return (_download_piece(index, size) for index in range(-(-size // _DOWNLOAD_CHUNK)))


def download_data(size: int) -> bytes:
    """The C{size} bytes L{DownloadResource} serves (keep C{size} small)."""
    return b"".join(_download_pieces(size))


def download_sha256(size: int) -> str:
    """The digest of the C{size} bytes L{DownloadResource} serves."""
    digest = hashlib.sha256()
    for piece in _download_pieces(size):
        digest.update(piece)
    return digest.hexdigest()


class DownloadResource(Resource):
    """C{GET /SIZE}: SIZE deterministic bytes, produced as the client reads."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes | int:
        size = int(request.postpath[0] or 0)  # type: ignore[index]  # set by traversal
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(size).encode())
        if request.method == b"HEAD":
            return b""
        request.registerProducer(_DownloadProducer(request, size), False)
        return NOT_DONE_YET

    render_HEAD = render_GET


class _DownloadProducer:
    """Writes one chunk per C{resumeProducing}: memory stays flat however large the download."""

    def __init__(self, request: Request, size: int) -> None:
        self.request, self.size, self.index, self.stopped = request, size, 0, False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        self.request.write(_download_piece(self.index, self.size))
        self.index += 1
        if self.index * _DOWNLOAD_CHUNK >= self.size:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class EventStream:
    """One open C{text/event-stream} response; the test says when to send."""

    def __init__(self, request: Request, total: int) -> None:
        self.request, self.total, self.sent = request, total, 0

    def send_next(self) -> None:
        self.sent += 1
        self.request.write(f"data: {self.sent}\n\n".encode())
        if self.sent == self.total:
            self.request.finish()


class EventStreamResource(Resource):
    """Sends event 1 at once, every later one when the test calls C{send_next}."""

    isLeaf = True

    def __init__(self, total: int = 3) -> None:
        super().__init__()
        self.total = total
        self.streams: list[EventStream] = []

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        stream = EventStream(request, self.total)
        self.streams.append(stream)
        stream.send_next()
        return NOT_DONE_YET


class _Silent(protocol.Protocol):
    """Accepts, reads, never answers."""


class _Hangup(protocol.Protocol):
    transport: ITCPTransport  # from makeConnection on

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _Garbage(protocol.Protocol):
    transport: ITCPTransport  # from makeConnection on

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"\x00\xffSSH-2.0-this is not HTTP\r\n\x01\x02\r\n\r\n")
        self.transport.loseConnection()


def behaviour_factory(kind: str) -> protocol.Factory:
    """A backend that misbehaves: C{silent}, C{hangup} or C{garbage}."""
    return protocol.Factory.forProtocol({"silent": _Silent, "hangup": _Hangup, "garbage": _Garbage}[kind])


@dataclass
class WebSocketEcho:
    """
    A C{websockets} echo server; the text C{close please} makes it close
    with code 4002.  C{closes} lists (code, reason) of ended sessions.
    """

    server: Any
    closes: list[tuple[int | None, str | None]]
    paths: list[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()
        await as_deferred(self.server.wait_closed())


async def start_websocket_echo(max_size: int = 1 << 22) -> WebSocketEcho:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    closes: list[tuple[int | None, str | None]] = []
    paths: list[str] = []

    async def echo(connection: Any) -> None:
        paths.append(connection.request.path)
        try:
            async for message in connection:
                if message == "close please":
                    await connection.close(4002, "closing as asked")
                    break
                await connection.send(message)
        except ConnectionClosed:
            pass
        closes.append((connection.close_code, connection.close_reason))

    async def listen() -> Any:
        return await serve(echo, "127.0.0.1", 0, max_size=max_size)

    return WebSocketEcho(await as_deferred(listen()), closes, paths)
