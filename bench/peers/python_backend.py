"""
The fallback backend, used only when nginx is not installed (or with
``--backend python``): an asyncio HTTP/1.1 server on the standard library
serving the same three paths as the nginx backend -- ``/small`` (a short 200),
``/big`` (a file, sent with sendfile) and ``/upload`` (reads and discards any
body, then answers 200).

It is much slower than nginx, so with it every proxy looks closer to "direct"
and the ratios between peers shrink; prefer nginx for published figures.

Usage: python python_backend.py PORT BIG_FILE SMALL_BODY
"""

from __future__ import annotations

import asyncio
import sys

_READ_CHUNK = 1 << 20


class _Backend:
    def __init__(self, big_path: str, small_body: bytes) -> None:
        self.big_path = big_path
        self.small_body = small_body

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await self._discard_body(reader, headers)
        path = target.split("?", 1)[0]
        if path == "/big" and method in ("GET", "HEAD"):
            await self._send_file(writer, method == "HEAD")
        elif path in ("/small", "/upload"):
            self._send_small(writer, self.small_body if path == "/small" else b"ok\n")
        else:
            self._send_small(writer, b"not found\n", status=b"404 Not Found")
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _discard_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._skip_trailers(reader)
                    return
                await self._skip(reader, size + 2)
        else:
            await self._skip(reader, int(headers.get("content-length", "0")))

    @staticmethod
    async def _skip_trailers(reader: asyncio.StreamReader) -> None:
        while (await reader.readuntil(b"\r\n")) != b"\r\n":
            pass

    @staticmethod
    async def _skip(reader: asyncio.StreamReader, remaining: int) -> None:
        while remaining > 0:
            chunk = await reader.read(min(remaining, _READ_CHUNK))
            if not chunk:
                raise ConnectionError("body cut short")
            remaining -= len(chunk)

    def _send_small(self, writer: asyncio.StreamWriter, body: bytes, status: bytes = b"200 OK") -> None:
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    async def _send_file(self, writer: asyncio.StreamWriter, head_only: bool) -> None:
        with open(self.big_path, "rb") as big:
            size = big.seek(0, 2)
            big.seek(0)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
            )
            if not head_only:
                await writer.drain()
                await asyncio.get_running_loop().sendfile(writer.transport, big)


async def _main(port: int, big_path: str, small_body: bytes) -> None:
    backend = _Backend(big_path, small_body)
    server = await asyncio.start_server(backend.serve_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()))
