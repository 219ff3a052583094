"""
Real clients the end-to-end tests talk to the gateway with: C{curl} run as a
bounded child process (L{curl}, its output parsed into L{CurlResponse}), and
L{RawConnection}, a loopback socket that writes exactly the bytes it is
given, for requests curl will not send; L{parse_responses} frames what comes
back with httptools into L{RawResponse}s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from httptools import HttpResponseParser
from twisted.internet import protocol
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from .tools import poll_until, reactor_or_installed, require_module, require_tool, run_process


class _ResponseAccessors:
    """What both response kinds answer from their C{headers} and C{body}."""

    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header C{name}, or C{None}."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CurlResponse(_ResponseAccessors):
    """The final response curl got (C{-D -} output), and its 1xx responses."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[int]
    exit_code: int
    stderr: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def describe(self, limit: int = 400) -> str:
        """Status, headers, the start of the body and curl's complaint: for failure messages."""
        head = "\n".join(f"  {name}: {value}" for name, value in self.headers)
        return (f"curl exit {self.exit_code}, status {self.status}\n{head}\n  body: {self.body[:limit]!r}"
                + (f"\n  curl: {self.stderr.strip()}" if self.stderr.strip() else ""))

    @classmethod
    def parse(cls, out: bytes, exit_code: int, stderr: str) -> "CurlResponse":
        informational: list[int] = []
        while out.startswith(b"HTTP/"):
            head, _, out = out.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = [(name.strip(), value.strip()) for name, _, value in
                       (line.partition(":") for line in lines[1:])]
            if 100 <= status < 200 and status != 101:
                informational.append(status)
                continue
            return cls(status, headers, out, informational, exit_code, stderr)
        return cls(0, [], out, informational, exit_code, stderr)


async def curl(url: str, *args: str, timeout: float = 30.0, reactor: Any = None) -> CurlResponse:
    """
    C{curl -sS -D - ARGS URL}: the final response, parsed.  The heads go to
    stdout even when C{-o FILE} sends the body elsewhere.
    """
    argv = [require_tool("curl"), "-sS", "-D", "-", "--max-time", str(timeout), *args, url]
    run = await run_process(argv, timeout=timeout + 5, reactor=reactor).result()
    exit_code = -1 if run.exit_code is None else run.exit_code
    return CurlResponse.parse(bytes(run.out), exit_code, run.err.decode("utf-8", "replace"))


@dataclass
class RawResponse(_ResponseAccessors):
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _ResponseCollector:
    """httptools callbacks: complete responses, in order."""

    def __init__(self) -> None:
        self.parser = HttpResponseParser(self)
        self.responses: list[RawResponse] = []
        self._current = RawResponse(0)

    def on_message_begin(self) -> None:
        self._current = RawResponse(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.status = self.parser.get_status_code()
        self.responses.append(self._current)


def parse_responses(data: bytes) -> list[RawResponse]:
    """The complete responses in C{data} (framed by length or chunks)."""
    collector = _ResponseCollector()
    collector.parser.feed_data(data)
    return collector.responses


class RawConnection(protocol.Protocol):
    """A client connection that writes exactly the bytes it is given."""

    transport: ITCPTransport  # from makeConnection on

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.received = bytearray()
        self.closed = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1", reactor: Any = None) -> "RawConnection":
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        clock = reactor_or_installed(reactor)
        connection = cls(clock)
        await connectProtocol(TCP4ClientEndpoint(clock, host, port, timeout=5), connection)
        return connection

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def read_until_closed(self, timeout: float = 10.0) -> bytes:
        await poll_until(lambda: self.closed, "the gateway to close the connection", timeout,
                         interval=0.01, reactor=self.clock)
        return bytes(self.received)

    async def read_responses(self, count: int, timeout: float = 10.0) -> list[RawResponse]:
        """Wait for C{count} complete responses on the connection so far."""
        def enough() -> list[RawResponse] | None:
            responses = parse_responses(bytes(self.received))
            if len(responses) >= count:
                return responses
            if self.closed:
                raise AssertionError(f"connection closed after {len(responses)} of {count} responses; "
                                     f"received {bytes(self.received)[:2000]!r}")
            return None
        return await poll_until(enough, f"{count} responses", timeout, interval=0.01, reactor=self.clock)

    def close(self) -> None:
        if not self.closed:
            self.transport.abortConnection()


class MetricsScrape:
    """One C{/metrics} answer, parsed by prometheus-client's parser."""

    def __init__(self, text: str, content_type: str = "") -> None:
        require_module("prometheus_client")
        from prometheus_client.parser import text_string_to_metric_families

        self.content_type = content_type
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called C{name} whose labels include C{labels} (0 when none)."""
        return sum(sample.value for sample in self.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
