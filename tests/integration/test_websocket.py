"""
End-to-end tests of WebSocket through the gateway: the real
``twistd edd-gateway``, the real C{websockets} client library, and a
C{websockets} echo server, both on this process's asyncio loop.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, WebSocketEcho, as_deferred, poll_until, require_module

MEBIBYTE = 1024 * 1024


class WebSocketTests(EndToEndMixin, TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        require_module("websockets")
        self.echo: WebSocketEcho = await self.serve_websocket_echo()
        self.gateway = await self.start_gateway(routes=[
            {"host": "127.0.0.1", "path": "/ws", "target": self.echo.target},
        ])

    def uri(self, path: str = "/ws/chat") -> str:
        return f"ws://127.0.0.1:{self.gateway.port}{path}"

    async def talk(self, conversation: Any) -> Any:
        """Run C{conversation(connection)} on a client connected through the gateway."""
        from websockets.asyncio.client import connect

        async def session() -> Any:
            async with connect(self.uri(), max_size=4 * MEBIBYTE, open_timeout=10, close_timeout=10) as ws:
                return await conversation(ws)

        return await as_deferred(session())

    async def test_text_echo(self) -> None:
        messages = ["hello", "", "ünïcødé ✓", "x" * 70000]

        async def conversation(ws: Any) -> list[str]:
            replies = []
            for message in messages:
                await ws.send(message)
                replies.append(await ws.recv())
            return replies

        self.assertEqual(await self.talk(conversation), messages)
        self.assertEqual(self.echo.paths, ["/ws/chat"])

    async def test_binary_echo(self) -> None:
        payloads = [bytes(range(256)), b"\x00", os.urandom(5000)]

        async def conversation(ws: Any) -> list[bytes]:
            replies = []
            for payload in payloads:
                await ws.send(payload)
                replies.append(await ws.recv())
            return replies

        self.assertEqual(await self.talk(conversation), payloads)

    async def test_one_mebibyte_message(self) -> None:
        payload = os.urandom(MEBIBYTE)

        async def conversation(ws: Any) -> bytes:
            await ws.send(payload)
            return await ws.recv()

        reply = await self.talk(conversation)
        self.assertEqual((len(reply), reply == payload), (MEBIBYTE, True))

    async def test_many_messages_in_flight_keep_their_order(self) -> None:
        async def conversation(ws: Any) -> list[str]:
            for number in range(200):
                await ws.send(str(number))
            return [await ws.recv() for _ in range(200)]

        self.assertEqual(await self.talk(conversation), [str(n) for n in range(200)])

    async def test_client_close_handshake(self) -> None:
        async def conversation(ws: Any) -> tuple[Any, Any]:
            await ws.send("before close")
            await ws.recv()
            await ws.close(4001, "client leaving")
            return ws.close_code, ws.close_reason

        self.assertEqual(await self.talk(conversation), (4001, "client leaving"))
        await poll_until(lambda: self.echo.closes, "the backend to see the close")
        self.assertEqual(self.echo.closes, [(4001, "client leaving")])

    async def test_server_close_handshake(self) -> None:
        from websockets.exceptions import ConnectionClosed

        async def conversation(ws: Any) -> tuple[Any, Any]:
            await ws.send("close please")
            try:
                await ws.recv()
            except ConnectionClosed:
                return ws.close_code, ws.close_reason
            raise AssertionError("the server's close did not reach the client")

        self.assertEqual(await self.talk(conversation), (4002, "closing as asked"))

    async def test_plain_request_to_websocket_backend_is_refused_by_it(self) -> None:
        response = await self.curl(self.gateway.url("/ws/chat"))
        # websockets answers a non-upgrade request with 426; the gateway
        # passes the backend's answer through.
        self.assertEqual(response.status, 426, response.describe())
