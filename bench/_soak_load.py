"""
The soak's clients, all asyncio tasks in the soak's own process: keep-alive
HTTP clients (raw sockets, responses parsed with httptools), WebSocket echo
clients (the ``websockets`` package) and SSH sessions (the real OpenSSH
``ssh`` running ``cat`` in the container, fed and read back through pipes).

Every client loops until the round's deadline and no longer (each wait has a
bound), checks every answer byte for byte, spreads its source address over
several loopback addresses, and counts what it did and every error by kind
in a shared L{Tally}.  An error is anything that is not the exact answer
expected; the clients themselves cause none (they close only between
requests, messages and sessions).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import httptools

SMALL_BODY = b"edd-gateway soak: a small response of about one hundred bytes, served by the backend.........\n"
HOST = "soak.local"
#: Bound on every single wait: a connect, a response, an echo, an SSH line.
STEP_TIMEOUT = 15.0
#: The first line of an SSH session also waits for the login through the gateway.
SSH_LOGIN_TIMEOUT = 45.0


@dataclass
class Tally:
    """What one round's clients did, and every error by kind (with a few examples each)."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    #: Latencies before this moment (the clients' ramp-up and one more second) are kept apart.
    steady_from: float = 0.0

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 3:
            examples.append(detail[:300])

    def latency(self, kind: str, seconds: float) -> None:
        if time.monotonic() < self.steady_from:
            kind += " (ramp-up)"
        samples = self.latencies_ms.setdefault(kind, [])
        if len(samples) < 500_000:  # a bound on memory; far above a 60 s round's count
            samples.append(seconds * 1000)

    def percentiles(self) -> dict[str, dict[str, float]]:
        found = {}
        for kind, samples in self.latencies_ms.items():
            ordered = sorted(samples)

            def at(share: float) -> float:
                return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

            found[kind] = {"p50": at(0.5), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)}
        return found


@dataclass
class Target:
    http_port: int
    ssh_port: int
    sources: Sequence[str]
    ssh_argv: Sequence[str]  # ssh and its options, without -b, -p and the destination
    ssh_destination: str


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


async def _pause(seconds: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(seconds, _left(deadline))))


def _kind(problem: BaseException) -> str:
    if isinstance(problem, asyncio.TimeoutError):
        return "timeout"
    if isinstance(problem, asyncio.IncompleteReadError):
        return "closed-early"
    return type(problem).__name__


# -- HTTP --------------------------------------------------------------------------------------------------------


class _Response:
    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        # Asked here: llhttp forgets the message's flags once it is complete.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class HTTPError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                    expected: bytes) -> int:
    """Send one request, read its whole response, check it; the bytes read."""
    writer.write(request)
    response = _Response()
    parser = response.parser = httptools.HttpResponseParser(response)
    read = 0
    while not response.complete:
        data = await reader.read(65536)
        if not data:
            raise HTTPError("closed-early", f"connection closed after {read} bytes of the response")
        read += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as problem:
            raise HTTPError("bad-response", f"{problem}: {data[:200]!r}") from None
    status = parser.get_status_code()
    if status != 200:
        raise HTTPError(f"status-{status}", bytes(response.body[:200]).decode("latin-1"))
    if response.body != expected:
        raise HTTPError("body-mismatch", f"{len(response.body)} bytes instead of {len(expected)}")
    if not response.keep_alive:
        raise HTTPError("not-kept-alive", "the response closes the connection")
    return read


async def http_client(index: int, target: Target, tally: Tally, deadline: float, interval: float,
                      ramp: float, echo_every: int) -> None:
    """One keep-alive client: a request every ~C{interval} s, a new connection every 50-150 requests."""
    source = target.sources[index % len(target.sources)]
    rng = random.Random(index)
    await _pause(ramp * rng.random(), deadline)
    sent = 0
    while _left(deadline) > 0:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", target.http_port, local_addr=(source, 0), limit=1 << 20),
                STEP_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as problem:
            tally.error(f"http-connect-{_kind(problem)}", f"{source}: {problem!r}")
            await _pause(1.0, deadline)
            continue
        tally.counts["http_connections"] += 1
        budget = rng.randint(50, 150)
        try:
            while budget and _left(deadline) > 0:
                sent += 1
                if echo_every and sent % echo_every == 0:
                    body = os.urandom(rng.randint(1, 16384))
                    request = (f"POST /echo?c={index}&n={sent} HTTP/1.1\r\nHost: {HOST}\r\n"
                               f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
                               f"\r\n").encode() + body
                    expected = body
                    tally.counts["http_echo_requests"] += 1
                    tally.counts["http_bytes_up"] += len(body)
                else:
                    request = f"GET /small?c={index}&n={sent} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
                    expected = SMALL_BODY
                started = time.monotonic()
                read = await asyncio.wait_for(_exchange(reader, writer, request, expected), STEP_TIMEOUT)
                tally.latency("http", time.monotonic() - started)
                tally.counts["http_requests"] += 1
                tally.counts["http_bytes_down"] += read
                budget -= 1
                await _pause(interval * rng.uniform(0.5, 1.5), deadline)
        except HTTPError as problem:
            tally.error(f"http-{problem.kind}", f"{source} request {sent}: {problem}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as problem:
            tally.error(f"http-{_kind(problem)}", f"{source} request {sent}: {problem!r}")
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, asyncio.TimeoutError):
                pass


# -- WebSocket ---------------------------------------------------------------------------------------------------


async def websocket_client(index: int, target: Target, tally: Tally, deadline: float, interval: float,
                           ramp: float) -> None:
    """One WebSocket: echo a message every ~C{interval} s, close cleanly after 15-30 s and open another."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    source = target.sources[index % len(target.sources)]
    rng = random.Random(10_000 + index)
    await _pause(ramp * rng.random(), deadline)
    while _left(deadline) > 0:
        lifetime_end = min(deadline, time.monotonic() + rng.uniform(15, 30))
        try:
            connection = await connect(f"ws://{HOST}/ws/echo?c={index}", host="127.0.0.1", port=target.http_port,
                                       local_addr=(source, 0), proxy=None, compression=None,
                                       open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT,
                                       ping_interval=None, max_size=1 << 20)
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as problem:
            tally.error(f"ws-connect-{_kind(problem)}", f"{source}: {problem!r}")
            await _pause(1.0, deadline)
            continue
        tally.counts["ws_connections"] += 1
        failed = False
        try:
            while _left(lifetime_end) > 0:
                size = rng.randint(1, 8192)
                message: str | bytes = (os.urandom(size) if rng.random() < 0.5
                                        else rng.randbytes(size // 2 + 1).hex())
                started = time.monotonic()
                await asyncio.wait_for(connection.send(message), STEP_TIMEOUT)
                echoed = await asyncio.wait_for(connection.recv(), STEP_TIMEOUT)
                if echoed != message:
                    tally.error("ws-mismatch", f"{source}: {len(echoed)} instead of {len(message)}")
                    failed = True
                    break
                tally.latency("websocket", time.monotonic() - started)
                tally.counts["ws_messages"] += 1
                tally.counts["ws_bytes"] += len(message)
                await _pause(interval * rng.uniform(0.5, 1.5), lifetime_end)
        except ConnectionClosed as problem:
            failed = True
            tally.error(f"ws-closed-{problem.rcvd.code if problem.rcvd else 'abnormal'}", f"{source}: {problem!r}")
        except (OSError, asyncio.TimeoutError) as problem:
            failed = True
            tally.error(f"ws-{_kind(problem)}", f"{source}: {problem!r}")
        finally:
            try:
                await asyncio.wait_for(connection.close(), STEP_TIMEOUT + 1)
            except (OSError, asyncio.TimeoutError) as problem:
                failed = True
                tally.error(f"ws-close-{_kind(problem)}", f"{source}: {problem!r}")
            if not failed:
                if connection.close_code == 1000:
                    tally.counts["ws_closed_cleanly"] += 1
                else:
                    tally.error(f"ws-close-code-{connection.close_code}", f"{source}: {connection.close_reason}")


# -- SSH ---------------------------------------------------------------------------------------------------------


async def ssh_session(index: int, target: Target, tally: Tally, deadline: float, interval: float,
                      ramp: float) -> None:
    """One slot of SSH sessions: ``ssh ... cat`` for 15-25 s echoing 4 KiB lines, then another session."""
    source = target.sources[index % len(target.sources)]
    rng = random.Random(20_000 + index)
    await _pause(ramp * rng.random(), deadline)
    while _left(deadline) > 0:
        session_end = min(deadline, time.monotonic() + rng.uniform(15, 25))
        argv = [*target.ssh_argv, "-b", source, "-p", str(target.ssh_port), target.ssh_destination, "cat"]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        stderr_task = asyncio.ensure_future(process.stderr.read())
        tally.counts["ssh_sessions"] += 1
        lines = 0
        try:
            while lines == 0 or _left(session_end) > 0:
                line = rng.randbytes(2047).hex().encode() + b"\n"
                started = time.monotonic()
                process.stdin.write(line)
                await asyncio.wait_for(process.stdin.drain(), STEP_TIMEOUT)
                echoed = await asyncio.wait_for(process.stdout.readexactly(len(line)),
                                                SSH_LOGIN_TIMEOUT if lines == 0 else STEP_TIMEOUT)
                if echoed != line:
                    tally.error("ssh-mismatch", f"{source}: line {lines} came back different")
                    break
                if lines:
                    tally.latency("ssh", time.monotonic() - started)
                else:
                    tally.latency("ssh_login_and_first_line", time.monotonic() - started)
                lines += 1
                tally.counts["ssh_lines"] += 1
                tally.counts["ssh_bytes"] += len(line)
                await _pause(interval * rng.uniform(0.5, 1.5), session_end)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as problem:
            tally.error(f"ssh-{_kind(problem)}", f"{source} after {lines} lines: {problem!r}")
        finally:
            # End the session the way a user does: end of input, cat exits, ssh exits 0.
            try:
                process.stdin.close()
                code = await asyncio.wait_for(process.wait(), STEP_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                process.kill()
                code = await process.wait()
                tally.error("ssh-exit-hung", f"{source}: ssh did not exit after end of input")
            stderr = (await stderr_task).decode(errors="replace").strip()
            if code != 0:
                tally.error(f"ssh-exit-{code}", f"{source}: {stderr}")
            elif stderr:
                tally.error("ssh-stderr", f"{source}: {stderr}")
            else:
                tally.counts["ssh_sessions_clean"] += 1


async def run_round(target: Target, duration: float, http_clients: int, websockets: int, ssh_sessions: int,
                    http_interval: float, ws_interval: float, ssh_interval: float, echo_every: int,
                    ramp: float) -> tuple[Tally, float]:
    """All clients for one round; returns once every one of them has finished (bounded), and the wall time."""
    started = time.monotonic()
    tally = Tally(steady_from=started + ramp + 1.0)
    deadline = started + duration
    tasks: list[asyncio.Task[Any]] = []
    tasks += [asyncio.ensure_future(http_client(i, target, tally, deadline, http_interval, ramp, echo_every))
              for i in range(http_clients)]
    tasks += [asyncio.ensure_future(websocket_client(i, target, tally, deadline, ws_interval, ramp))
              for i in range(websockets)]
    tasks += [asyncio.ensure_future(ssh_session(i, target, tally, deadline, ssh_interval, ramp))
              for i in range(ssh_sessions)]
    # Each client stops at the deadline after at most one bounded step, and its close is bounded too.
    done, pending = await asyncio.wait(tasks, timeout=duration + 2 * STEP_TIMEOUT + SSH_LOGIN_TIMEOUT)
    for task in pending:
        task.cancel()
        tally.error("client-hung", "a client task did not finish within its bounds")
    if pending:
        await asyncio.wait(pending, timeout=5)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            problem = task.exception()
            tally.error(f"client-crash-{type(problem).__name__}", repr(problem))
    return tally, time.monotonic() - started
