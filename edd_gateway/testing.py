"""
What end-to-end tests share: the real gateway as a subprocess
(L{GatewayProcess}), throwaway backends listening on loopback in the test
process (echo, event stream, large download, silent, closing, garbage,
WebSocket echo), bounded runners for real clients (curl, raw sockets), and
the rule that a missing tool skips a test unless integration is required
(C{EDD_GATEWAY_REQUIRE_INTEGRATION=1}, as in CI).

Everything waits with a bound and fails with the gateway's log attached:
an end-to-end failure is only useful when it says what the gateway saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable
from typing import Any, Callable, Sequence
from unittest import SkipTest

import yaml
from httptools import HttpResponseParser
from twisted.internet import protocol
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.itrial import IReporter
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

import edd_gateway

__all__ = [
    "BackendServer", "CurlResponse", "DownloadResource", "EchoResource", "EndToEndMixin", "EventStream",
    "EventStreamResource", "GatewayProcess", "ProcessRun", "RawConnection", "RawResponse", "WebSocketEcho",
    "as_deferred", "behaviour_factory", "download_data", "download_sha256", "echo_header", "free_port",
    "integration_required", "parse_responses", "poll_until", "require_module", "require_tool", "routes_yaml",
    "run_process", "start_backend", "start_websocket_echo", "web_factory",
]

REQUIRE_INTEGRATION = "EDD_GATEWAY_REQUIRE_INTEGRATION"


def _reactor(reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor as installed

        return installed
    return reactor


# Tools and the integration switch


def integration_required() -> bool:
    """Whether a missing tool must fail the test instead of skipping it."""
    return os.environ.get(REQUIRE_INTEGRATION, "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str, hint: str) -> Exception:
    if integration_required():
        return AssertionError(f"{what}, and {REQUIRE_INTEGRATION} is set so this test may not skip; {hint}")
    return SkipTest(f"{what}; {hint}, or set {REQUIRE_INTEGRATION}=1 to make this a failure")


def require_tool(name: str) -> str:
    """The path of the program C{name}; skip (or fail, when required) without it."""
    path = shutil.which(name)
    if path is None:
        raise _missing(f"{name} is not installed", f"install it (Debian: apt-get install {name})")
    return path


def require_module(name: str) -> None:
    """Skip (or fail, when required) unless the Python module C{name} imports."""
    try:
        __import__(name)
    except ImportError:
        raise _missing(f"the Python module {name} is not installed", "pip install '.[test]'") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def routes_yaml(routes: Sequence[dict[str, Any]]) -> str:
    """A routes file holding C{routes}."""
    return yaml.safe_dump({"routes": list(routes)}, sort_keys=False)


def as_deferred(awaitable: Awaitable[Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (websockets) on the asyncio reactor's loop."""
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


async def poll_until(
    check: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.05, reactor: Any = None
) -> Any:
    """
    Call C{check} (which may return an awaitable) until it is truthy and
    return that value; fail naming C{what} after C{timeout} seconds.
    """
    clock = _reactor(reactor)
    deadline = clock.seconds() + timeout
    while True:
        result = check()
        if isinstance(result, (Deferred, Awaitable)):
            result = await result
        if result:
            return result
        if clock.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(clock, interval, lambda: None)


# Processes


class ProcessRun(protocol.ProcessProtocol):
    """A child process whose output is collected; killed at its deadline."""

    def __init__(self, clock: Any, timeout: float) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.exit_code: int | None = None
        self.timed_out = False
        self._ended: Deferred[ProcessRun] = Deferred()
        self._timer = clock.callLater(timeout, self._expire)

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.exit_code = getattr(reason.value, "exitCode", None)
        self._ended.callback(self)

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    async def stop(self) -> None:
        """Kill it if it still runs, and wait until the reactor has reaped it."""
        self.kill()
        await self.result()

    def result(self) -> Deferred[ProcessRun]:
        """Fires with this run once the process has exited."""
        done: Deferred[ProcessRun] = Deferred()
        self._ended.addBoth(lambda outcome: (done.callback(outcome), outcome)[1])
        return done

    async def wait_for_output(self, needle: bytes, timeout: float = 10.0) -> None:
        await poll_until(lambda: needle in self.out or self._ended.called,
                         f"{needle!r} on the output of a process", timeout, interval=0.01)
        if needle not in self.out:
            raise AssertionError(f"process ended without printing {needle!r}: out={bytes(self.out)!r} "
                                 f"err={bytes(self.err)!r}")


def run_process(argv: Sequence[str], timeout: float = 60.0, env: dict[str, str] | None = None,
                path: str | None = None, reactor: Any = None) -> ProcessRun:
    """Start C{argv} without blocking the reactor (the backends keep serving)."""
    clock = _reactor(reactor)
    run = ProcessRun(clock, timeout)
    clock.spawnProcess(run, argv[0], list(argv), env=os.environ.copy() if env is None else env, path=path)
    return run


@dataclass
class CurlResponse:
    """The final response curl got (C{-D -} output), and its 1xx responses."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[int]
    exit_code: int
    stderr: str

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[-1] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def describe(self, limit: int = 400) -> str:
        """Status, headers, the start of the body and curl's complaint: for failure messages."""
        head = "\n".join(f"  {name}: {value}" for name, value in self.headers)
        return (f"curl exit {self.exit_code}, status {self.status}\n{head}\n  body: {self.body[:limit]!r}"
                + (f"\n  curl: {self.stderr.strip()}" if self.stderr.strip() else ""))

    def json(self) -> Any:
        return json.loads(self.body)

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


# Raw HTTP over a socket, for what curl will not send


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


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

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.received = bytearray()
        self.closed = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1", reactor: Any = None) -> "RawConnection":
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        clock = _reactor(reactor)
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


# The gateway


class GatewayProcess:
    """
    ``twistd -n edd-gateway`` in a subprocess, listening on a free loopback
    port, its stdout and stderr in C{gateway.log} of C{workdir}.
    """

    def __init__(self, workdir: str, reactor: Any = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "gateway.log"
        self.clock = _reactor(reactor)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def project_root() -> str:
        """The directory holding C{edd_gateway/} and C{twisted/plugins/}."""
        return str(Path(edd_gateway.__file__).resolve().parent.parent)

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.project_root(), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile=-", "edd-gateway", *args]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    async def start(self, args: Sequence[str] = (), timeout: float = 15.0, attempts: int = 3) -> None:
        """Start with C{args} plus a C{--listen} on a free port; wait until it accepts."""
        for attempt in range(attempts):
            self.port = free_port()
            argv = self.command([*args, "--listen", f"tcp:{self.port}:interface=127.0.0.1"])
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(argv, cwd=self.workdir, env=self.environment(),
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                await poll_until(self._accepting, f"the gateway to listen on port {self.port}", timeout,
                                 reactor=self.clock)
                return
            except AssertionError:
                # Another process may take the free port before the gateway
                # binds it; only that is worth another try.
                if attempt + 1 == attempts or "Address already in use" not in self.log_text():
                    raise

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.process.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout}; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await poll_until(lambda: process.poll() is not None, "the gateway to exit on SIGTERM",
                                 timeout, reactor=self.clock)
            except AssertionError:
                process.kill()
                process.wait(5)
                raise AssertionError(f"the gateway did not exit within {timeout} s of SIGTERM: killed") from None
        return process.returncode


# Backends


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


def start_backend(factory: protocol.Factory, app: Any = None, reactor: Any = None) -> BackendServer:
    tracker = _TrackingFactory(factory)
    listening = _reactor(reactor).listenTCP(0, tracker, interface="127.0.0.1")
    return BackendServer(listening, tracker, app)


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
        content.seek(0)
        for chunk in iter(lambda: content.read(1 << 16), b""):
            digest.update(chunk)
            length += len(chunk)
            if len(small) < 65536:
                small += chunk
        report = {
            "backend": self.name,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "headers": [[name.decode("latin-1").lower(), value.decode("latin-1")]
                        for name, values in request.requestHeaders.getAllRawHeaders() for value in values],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "body": bytes(small).decode("latin-1") if length <= 65536 else None,
        }
        self.requests.append(report)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", self.name.encode())
        return json.dumps(report).encode()


def echo_header(report: dict[str, Any], name: str) -> list[str]:
    """The values of header C{name} an echo backend received."""
    return [value for key, value in report["headers"] if key == name.lower()]


def _download_chunk(index: int) -> bytes:
    # Every 64 KiB chunk differs, so a lost or repeated chunk changes the digest.
    return hashlib.sha256(index.to_bytes(8, "big")).digest() * 2048


def download_data(size: int) -> bytes:
    """The C{size} bytes L{DownloadResource} serves (keep C{size} small)."""
    return b"".join(_download_chunk(index) for index in range((size + 65535) // 65536))[:size]


def download_sha256(size: int) -> str:
    """The digest of the C{size} bytes L{DownloadResource} serves."""
    digest = hashlib.sha256()
    for index in range((size + 65535) // 65536):
        digest.update(_download_chunk(index)[: size - index * 65536])
    return digest.hexdigest()


class DownloadResource(Resource):
    """C{GET /SIZE}: SIZE deterministic bytes, produced as the client reads."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes | int:
        size = int(request.postpath[0] or 0)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(size).encode())
        if request.method == b"HEAD":
            return b""
        request.registerProducer(_DownloadProducer(request, size), False)
        return NOT_DONE_YET

    render_HEAD = render_GET


class _DownloadProducer:
    def __init__(self, request: Request, size: int) -> None:
        self.request, self.size, self.index, self.stopped = request, size, 0, False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        start = self.index * 65536
        self.request.write(_download_chunk(self.index)[: self.size - start])
        self.index += 1
        if self.index * 65536 >= self.size:
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


def web_factory(resource: Resource) -> Site:
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


class _Silent(protocol.Protocol):
    """Accepts, reads, never answers."""


class _Hangup(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _Garbage(protocol.Protocol):
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


# The trial mixin


class _AnnotatedError(Exception):
    def __init__(self, original: BaseException, logs: str) -> None:
        super().__init__(original, logs)
        self.original, self.logs = original, logs

    def __str__(self) -> str:
        return f"{self.original}\n{self.logs}"


@implementer(IReporter)
class _AnnotatingResult:
    """Passes everything to the reporter; failures get the gateways' logs."""

    def __init__(self, result: Any, test: "EndToEndMixin") -> None:
        self._result, self._test = result, test

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    def _annotate(self, failure: Any) -> Any:
        logs = self._test.gateway_logs()
        if logs and isinstance(failure, Failure) and not isinstance(failure.value, _AnnotatedError):
            # The type stays, so the reporter still names the original
            # exception; only its message gains the logs.
            failure.value = _AnnotatedError(failure.value, logs)
        return failure

    def addFailure(self, test: Any, failure: Any) -> None:
        self._result.addFailure(test, self._annotate(failure))

    def addError(self, test: Any, failure: Any) -> None:
        self._result.addError(test, self._annotate(failure))


class EndToEndMixin:
    """
    For trial C{TestCase}s: start gateways and backends that are stopped at
    cleanup, and attach the gateways' logs to every failure or error.
    """

    log_lines = 120

    def run(self, result: Any) -> Any:
        self._gateways: list[GatewayProcess] = []
        return super().run(_AnnotatingResult(result, self))  # type: ignore[misc]

    def gateway_logs(self) -> str:
        parts = []
        for gateway in getattr(self, "_gateways", []):
            lines = gateway.log_text().splitlines()[-self.log_lines:]
            parts.append(f"--- gateway log ({gateway.log_path}, last {len(lines)} lines) ---\n"
                         + "\n".join(lines))
        return "\n".join(parts)

    async def start_gateway(self, args: Sequence[str] = (), routes: Sequence[dict[str, Any]] | None = None,
                            routes_path: str | None = None) -> GatewayProcess:
        """A gateway with C{args}; C{routes} are written to a routes file first."""
        gateway = GatewayProcess(self.mktemp())  # type: ignore[attr-defined]
        args = list(args)
        if routes is not None:
            path = routes_path or str(gateway.workdir / "routes.yaml")
            Path(path).write_text(routes_yaml(routes))
            args = ["--routes", path, *args]
        self._gateways.append(gateway)
        self.addCleanup(lambda: ensureDeferred(gateway.stop()))  # type: ignore[attr-defined]
        await gateway.start(args)
        return gateway

    def serve(self, factory: protocol.Factory, app: Any = None) -> BackendServer:
        backend = start_backend(factory, app)
        self.addCleanup(lambda: ensureDeferred(backend.stop()))  # type: ignore[attr-defined]
        return backend

    def serve_echo(self, name: str = "echo") -> tuple[BackendServer, EchoResource]:
        resource = EchoResource(name)
        return self.serve(web_factory(resource), resource), resource

    async def serve_websocket_echo(self) -> WebSocketEcho:
        require_module("websockets")
        echo = await start_websocket_echo()
        self.addCleanup(lambda: ensureDeferred(echo.stop()))  # type: ignore[attr-defined]
        return echo

    async def curl(self, url: str, *args: str, timeout: float = 30.0) -> CurlResponse:
        """
        C{curl -sS -D - ARGS URL}: the final response, parsed.  The heads go
        to stdout even when C{-o FILE} sends the body elsewhere.
        """
        argv = [require_tool("curl"), "-sS", "-D", "-", "--max-time", str(timeout), *args, url]
        run = await run_process(argv, timeout=timeout + 5).result()
        exit_code = -1 if run.exit_code is None else run.exit_code
        return CurlResponse.parse(bytes(run.out), exit_code, run.err.decode("utf-8", "replace"))

    async def raw(self, port: int) -> RawConnection:
        connection = await RawConnection.open(port)
        self.addCleanup(connection.close)  # type: ignore[attr-defined]
        return connection
