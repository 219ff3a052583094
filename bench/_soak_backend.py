"""
The soak's backend, one process on loopback: an HTTP/1.1 keep-alive server
(asyncio, parsed with httptools) answering ``GET /small`` with a fixed
~100-byte body and ``POST /echo`` with the request body it read, and a
WebSocket echo server (the ``websockets`` package) on a second port that
sends every message back unchanged.

Usage: python _soak_backend.py HTTP_PORT WS_PORT

It runs until SIGTERM.  Anything it did not expect (a parse error, a path
it does not serve) is answered 400/404 and printed, so the soak counts it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import httptools

SMALL_BODY = b"edd-gateway soak: a small response of about one hundred bytes, served by the backend.........\n"


class _Request:
    """httptools callbacks for one request at a time on a connection."""

    def __init__(self) -> None:
        self.url = b""
        self.body = bytearray()
        self.complete = False
        self.keep_alive = True
        self.parser: object = None

    def on_headers_complete(self) -> None:
        # Asked here: llhttp forgets the message's flags once it is complete.
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[attr-defined]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class HTTPBackend(asyncio.Protocol):
    """Keep-alive HTTP/1.1: /small and /echo; one request at a time, as the gateway sends them."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._start()

    def _start(self) -> None:
        self.request = _Request()
        self.parser = self.request.parser = httptools.HttpRequestParser(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(b"400 Bad Request", b"no upgrades here\n", close=True)
            return
        except httptools.HttpParserError as problem:
            print(f"backend: bad request: {problem}", flush=True)
            self._answer(b"400 Bad Request", b"bad request\n", close=True)
            return
        if self.request.complete:
            request, keep_alive = self.request, self.request.keep_alive
            method = self.parser.get_method()
            path = request.url.split(b"?", 1)[0]
            if path == b"/small" and method == b"GET":
                self._answer(b"200 OK", SMALL_BODY, close=not keep_alive)
            elif path == b"/echo" and method == b"POST":
                self._answer(b"200 OK", bytes(request.body), close=not keep_alive)
            else:
                print(f"backend: unexpected {method!r} {request.url!r}", flush=True)
                self._answer(b"404 Not Found", b"not found\n", close=not keep_alive)
            self._start()

    def _answer(self, status: bytes, body: bytes, close: bool) -> None:
        head = (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: "
                + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n")
        self.transport.write(head + body)  # type: ignore[attr-defined]
        if close:
            self.transport.close()


async def websocket_echo(connection: object) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in connection:  # type: ignore[attr-defined]
            await connection.send(message)  # type: ignore[attr-defined]
    except ConnectionClosed:
        pass


async def serve(http_port: int, ws_port: int) -> None:
    from websockets.asyncio.server import serve as ws_serve

    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stopping.done() or stopping.set_result(None))
    http = await loop.create_server(HTTPBackend, "127.0.0.1", http_port, backlog=1024)
    async with ws_serve(websocket_echo, "127.0.0.1", ws_port, compression=None, max_size=1 << 20, backlog=1024):
        print(f"backend: HTTP on {http_port}, WebSocket echo on {ws_port}", flush=True)
        await stopping
    http.close()


def main(argv: list[str]) -> None:
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run  # type: ignore[assignment]
    runner(serve(int(argv[0]), int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
