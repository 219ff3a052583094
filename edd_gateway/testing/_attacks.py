"""
The slow attacks of slowhttptest, from several client addresses.

slowhttptest always connects from 127.0.0.1, which the gateway allow-lists
from its limits, and cannot bind another source address: these clients do
what its modes do, each connection bound to one of C{addresses} (127.0.0.2,
127.0.0.3, ...), in the test's (or the benchmark's) reactor:

 - C{slow-body} (slowhttptest C{-B}): a POST head announcing C{body_size}
   bytes, C{first} of them at once, then C{chunk} bytes every C{interval}
   seconds;
 - C{slowloris} (C{-H}): a request head never finished, one more header
   line every C{interval};
 - C{slow-read} (C{-X}): C{pipelined} GETs at once, the answers read one
   socket read every C{interval} (reading paused in between).

Connections are opened at C{rate} a second per address (under the
gateway's default connection rate) up to C{per_address} each, and opened
again when the gateway closes one, as slowhttptest keeps its count, until
L{SlowAttack.stop}.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet import protocol, tcp
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall

KINDS = ("slow-body", "slowloris", "slow-read")


@dataclass
class AttackSettings:
    kind: str
    addresses: Sequence[str]
    per_address: int = 250
    body_size: int = 8192
    #: Body bytes sent at once after the head (past the gateway's buffer, the rest streams).
    first: int = 0
    chunk: int = 10
    interval: float = 1.0
    rate: float = 45.0
    host: str = "app.test"
    path: str = "/"
    #: GETs each slow-read connection sends at once.
    pipelined: int = 32


class _SlowClient(protocol.Protocol):
    transport: tcp.Client  # connectTCP's, from makeConnection on

    def __init__(self, attack: "SlowAttack", address: str) -> None:
        self.attack = attack
        self.address = address
        self.sent = 0
        self.received = 0

    def connectionMade(self) -> None:
        settings = self.attack.settings
        self.attack.opened[self.address] += 1
        self.attack.live.add(self)
        if settings.kind == "slow-body":
            self.transport.write(b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (settings.path.encode(), settings.host.encode(),
                                                                 settings.body_size))
            if settings.first:
                self.transport.write(b"x" * settings.first)
                self.sent = settings.first
        elif settings.kind == "slowloris":
            self.transport.write(b"GET %b HTTP/1.1\r\nHost: %b\r\n" % (settings.path.encode(),
                                                                        settings.host.encode()))
        else:
            request = b"GET %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (settings.path.encode(), settings.host.encode())
            self.transport.write(request * settings.pipelined)
            self.transport.pauseProducing()

    def tick(self) -> None:
        settings = self.attack.settings
        if settings.kind == "slow-body":
            if self.sent < settings.body_size:
                piece = min(settings.chunk, settings.body_size - self.sent)
                self.transport.write(b"x" * piece)
                self.sent += piece
        elif settings.kind == "slowloris":
            self.transport.write(b"X-Slow-%d: %d\r\n" % (self.sent, self.sent))
            self.sent += 1
        else:
            # Read once, then stop reading again.
            self.transport.resumeProducing()
            self.attack.reactor.callLater(0, self._pause)

    def _pause(self) -> None:
        if self.transport.connected:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.attack.answers[_status(data)] += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.attack.live.discard(self)
        self.attack.closed[self.address] += 1


def _status(data: bytes) -> str:
    """The status code when C{data} starts an answer, else C{"data"}."""
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode("latin-1")
    return "data"


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, attack: "SlowAttack", address: str) -> None:
        self.attack = attack
        self.address = address

    def buildProtocol(self, addr: Any) -> _SlowClient:
        return _SlowClient(self.attack, self.address)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.attack.failed[self.address] += 1


@dataclass
class SlowAttack:
    """One running attack on the gateway at C{port} on 127.0.0.1."""

    reactor: Any
    port: int
    settings: AttackSettings
    live: set[_SlowClient] = field(default_factory=set)
    opened: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)

    def start(self) -> None:
        self._opener = LoopingCall(self._open_some)
        self._opener.clock = self.reactor
        self._opener.start(1.0 / self.settings.rate, now=True)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(self.settings.interval, now=False)

    def _open_some(self) -> None:
        reactor: IReactorTCP = self.reactor
        for address in self.settings.addresses:
            attempts = self.opened[address] + self.failed[address]
            holding = self.opened[address] - self.closed[address]
            if holding < self.settings.per_address and attempts < self.settings.per_address * 20:
                reactor.connectTCP("127.0.0.1", self.port, _Factory(self, address), timeout=10,
                                   bindAddress=(address, 0))

    def _tick(self) -> None:
        for client in list(self.live):
            if client.transport is not None and client.transport.connected:
                client.tick()

    def holding(self) -> int:
        return len(self.live)

    def stop(self) -> None:
        for loop in (self._opener, self._ticker):
            if loop.running:
                loop.stop()
        for client in list(self.live):
            client.transport.abortConnection()


def start_attack(reactor: IReactorTime, port: int, settings: AttackSettings) -> SlowAttack:
    """A started attack; C{stop} it (tests: at cleanup)."""
    if settings.kind not in KINDS:
        raise ValueError(f"unknown attack {settings.kind!r}; one of {', '.join(KINDS)}")
    attack = SlowAttack(reactor, port, settings)
    attack.start()
    return attack


__all__ = ["KINDS", "AttackSettings", "SlowAttack", "start_attack"]
