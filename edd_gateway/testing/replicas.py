"""
What a scale-out test needs beyond one gateway: L{ReplicaGateway}, a
gateway whose listener clients know as port 80 (so the container router
picks a container's port-80 ingress rule), L{KeepAliveProbe}, one keep-alive
HTTP/1.1 connection that asks for a host in a fraction of a millisecond (a
curl process per request costs ten times the propagation being measured),
and L{host_keys_seen}, the SSH host keys a real C{ssh-keyscan} is offered on
a port.
"""

from __future__ import annotations

from typing import Any, Sequence

from httptools import HttpResponseParser
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from ._gateway import GatewayProcess
from .tools import reactor_or_installed, require_tool, run_process

__all__ = ["KeepAliveProbe", "ProbeAnswer", "ReplicaGateway", "connect_probe", "host_keys_seen"]


class ReplicaGateway(GatewayProcess):
    """The gateway whose C{--listen} port (chosen at start) clients know as port 80."""

    def command(self, args: Sequence[str]) -> list[str]:
        return super().command([*args, "--port-map", f"{self.port}=80"])


class ProbeAnswer:
    """The status and body of one response."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


class KeepAliveProbe(protocol.Protocol):
    """One keep-alive HTTP/1.1 connection: L{get} sends a GET and answers with a L{ProbeAnswer}."""

    def __init__(self) -> None:
        self._parser = HttpResponseParser(self)
        self._waiting: Deferred[ProbeAnswer] | None = None
        self._body = bytearray()

    def get(self, host: str, path: str = "/") -> Deferred[ProbeAnswer]:
        if self._waiting is not None:
            raise RuntimeError("one request at a time on a probe")
        waiting = self._waiting = Deferred()
        self._body = bytearray()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # type: ignore[union-attr]  # connected
        return waiting

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(ProbeAnswer(self._parser.get_status_code(), bytes(self._body)))

    def connectionLost(self, reason: Any = None) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(ConnectionError("the gateway closed the probe's connection"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


async def connect_probe(port: int, reactor: Any = None) -> KeepAliveProbe:
    """A L{KeepAliveProbe} connected to 127.0.0.1:C{port}."""
    endpoint = TCP4ClientEndpoint(reactor_or_installed(reactor), "127.0.0.1", port, timeout=5)
    return await endpoint.connect(protocol.Factory.forProtocol(KeepAliveProbe))  # type: ignore[return-value]  # it built


async def host_keys_seen(port: int, key_type: str = "ed25519", timeout: float = 20.0) -> list[str]:
    """
    The host keys (C{"type base64"}) a real C{ssh-keyscan} is offered on
    127.0.0.1:C{port}; empty when it got none.
    """
    keyscan = require_tool("ssh-keyscan")
    done = await run_process([keyscan, "-T", str(int(timeout)), "-t", key_type, "-p", str(port), "127.0.0.1"],
                             timeout=timeout + 10).result()
    keys = []
    for line in bytes(done.out).decode("ascii", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            keys.append(" ".join(fields[1:3]))
    return keys
