"""
The keep-alive race against the real ``twistd edd-gateway``: backends close
idle keep-alive connections when they like (Node.js after 5 s by default,
Go's IdleTimeout), and a request can leave on a connection the backend is
closing.  A backend closing each idle connection after 50 ms, under
requests 40-60 ms apart on 20 connections for 30 s: no GET fails, every
POST is answered 200 or 502.  And the request sequence that once handed a
dead pooled connection to the next client (issue 14, item 2).
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from typing import Any

from httptools import HttpResponseParser
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EchoResource, EndToEndMixin, poll_until, web_factory

HOST = "app.test"
DURATION = 30.0


class _KeepAliveClient(protocol.Protocol):
    """One client connection: a request every 40-60 ms, GET or POST at random, answers counted."""

    def __init__(self, results: Counter[str], until: float) -> None:
        self.results = results
        self.until = until
        self.method = b""
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.parser = HttpResponseParser(self)
        self.send()

    def send(self) -> None:
        if reactor.seconds() >= self.until:  # type: ignore[attr-defined]
            self.transport.loseConnection()
            return
        self.method = random.choice((b"GET", b"POST"))
        body = b"x" * 100 if self.method == b"POST" else b""
        self.transport.write(b"%b /r HTTP/1.1\r\nHost: %b\r\nContent-Length: %d\r\n\r\n%b"
                             % (self.method, HOST.encode(), len(body), body))

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.results[f"{self.method.decode()} {self.parser.get_status_code()}"] += 1
        reactor.callLater(random.uniform(0.04, 0.06), self.send)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        if reactor.seconds() < self.until:  # type: ignore[attr-defined]
            self.results["closed early"] += 1
        self.done.callback(None)


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, results: Counter[str], until: float) -> None:
        self.results, self.until = results, until
        self.clients: list[_KeepAliveClient] = []

    def buildProtocol(self, addr: Any) -> _KeepAliveClient:
        client = _KeepAliveClient(self.results, self.until)
        self.clients.append(client)
        return client


class _AnswersEarlyThenCloses(protocol.Protocol):
    """A backend that answers each request as soon as its head is in, without reading the body, then closes."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data or getattr(self, "_head", b"") and b"\r\n\r\n" in self._head + data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.transport.loseConnection()
        self._head = getattr(self, "_head", b"") + data


class KeepAliveRaceTests(EndToEndMixin, TestCase):
    timeout = 120

    async def _gateway(self, backend: Any) -> None:
        self.gateway = await self.start_gateway(routes=[{"host": HOST, "path": "/", "target": backend.target}])

    def test_a_backend_closing_idle_connections_after_50_ms(self) -> Any:
        return ensureDeferred(self._closing_after_50_ms())

    async def _closing_after_50_ms(self) -> None:
        site = web_factory(EchoResource())
        site.timeOut = 0.05  # twisted.web's idle timeout: the backend closes idle connections
        backend = self.serve(site, None)
        await self._gateway(backend)
        results: Counter[str] = Counter()
        factory = _ClientFactory(results, reactor.seconds() + DURATION)  # type: ignore[attr-defined]
        for _ in range(20):
            reactor.connectTCP("127.0.0.1", self.gateway.port, factory)  # type: ignore[attr-defined]
        await poll_until(lambda: len(factory.clients) == 20, "20 connections")
        for client in factory.clients:
            await client.done
        print(f"after {DURATION:g} s: {dict(results)}")
        self.assertEqual(set(results) - {"GET 200", "POST 200", "POST 502"}, set(), self.gateway.log_text()[-3000:])
        self.assertGreater(results["GET 200"], 20 * DURATION / 0.06 / 2 * 0.8)
        self.assertGreater(results["POST 200"], 0)
        log = self.gateway.log_text()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("unexpected error", log)

    def test_the_sequence_that_handed_out_a_dead_connection(self) -> Any:
        return ensureDeferred(self._sequence())

    async def _sequence(self) -> None:
        backend = self.serve(protocol.Factory.forProtocol(_AnswersEarlyThenCloses), None)
        await self._gateway(backend)
        port = self.gateway.port
        answers = await deferToThread(_item_2_sequence, port)
        print(f"answers: {answers}")
        self.assertEqual(answers[-1], b"HTTP/1.1 200 OK", answers)
        self.assertNotIn(b"HTTP/1.1 500", b"\n".join(answers))
        log = self.gateway.log_text()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("unexpected error", log)
        self.assertNotIn(" 500 ", log)


def _status_lines(connection: socket.socket, wait: float) -> list[bytes]:
    """The status lines that arrive on C{connection} within C{wait} seconds."""
    connection.settimeout(wait)
    data = b""
    try:
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def _item_2_sequence(port: int) -> list[bytes]:
    """Issue 14, item 2, step by step (in a thread: it pauses as the report did)."""
    answers: list[bytes] = []
    head = b"POST %b HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(head % (b"/a", 5))
        time.sleep(1.0)
        c.sendall(b"hello")
        answers += _status_lines(c, 1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(head % (b"/b", 42))
        time.sleep(0.8)
        c.sendall(b"x" * 42)
        answers += _status_lines(c, 1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"POST /c HTTP/1.1\r\nHost: app.test\r\nContent-Length: 42\r\n\r\n")
        time.sleep(1.2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET /d HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        answers += _status_lines(c, 5.0)
    return answers
