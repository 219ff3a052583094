"""
Faults around the real ``twistd edd-gateway`` (issue 7, item 4) that the
other end-to-end modules do not already cover: a backend process killed
with SIGKILL in the middle of a response (the client sees the connection
end without a complete response, and the gateway's open file descriptors
return to what they were), a backend whose response turns to garbage after
a valid head, and the routes file and a certificate pair overwritten with
garbage (the last good version keeps being served, and a good version after
that is picked up).

The other faults of the issue live beside the features they break:
tests/integration/test_http.py (silent backend 504, garbage 502, hang-up 502),
tests/integration/test_containers.py and tests/integration/test_state_live.py (PostgreSQL and
nats-server restarted), tests/integration/test_reload.py and tests/integration/test_tls.py
(a broken routes file, a mismatched key).  docs/hardening.md maps them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.tls.devcert import write_secret_directory
from edd_gateway.testing import (
    EndToEndMixin,
    ProcessRun,
    integration_required,
    poll_until,
    require_tool,
    routes_yaml,
    run_process,
)
from edd_gateway.testing.tls import make_pair, write_pair, write_pem

HOST = "app.test"
WELCOME = "welcome.test"

# A backend in its own process, so that it can really be killed: it answers
# every request with a head and the first 5000 bytes of a longer body, says
# "sent", and holds the connection until it dies.
_KILLABLE_BACKEND = r"""
import socket, sys
heads = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 5000,
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + b"x" * 5000 + b"\r\n",
}
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
print(server.getsockname()[1], flush=True)
held = []
while True:
    connection, _ = server.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        piece = connection.recv(65536)
        if not piece:
            break
        request += piece
    connection.sendall(heads[sys.argv[1]])
    held.append(connection)
    print("sent", flush=True)
"""


def open_fds(pid: int) -> dict[str, str]:
    """The process's open file descriptors and what each points at."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return found


def require_proc() -> None:
    if not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        message = "counting a process's file descriptors needs Linux /proc"
        if integration_required():
            raise AssertionError(message)
        from unittest import SkipTest

        raise SkipTest(message)


class _BadChunk(protocol.Protocol):
    """A valid head and chunk, then a chunk size that is not hexadecimal; the connection stays open."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n")


class _TwoLengths(protocol.Protocol):
    """A response two parsers could frame differently."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_tool("curl")

    async def gateway_for(self, target: str, *args: str) -> Any:
        self.gateway = await self.start_gateway(args, routes=[
            {"host": HOST, "path": "/", "target": target},
            {"host": WELCOME, "path": "/", "target": "internal:welcome"},
        ])
        return self.gateway

    async def assert_still_serving(self) -> None:
        response = await self.curl(self.gateway.url("/"), "-H", f"Host: {WELCOME}")
        self.assertEqual(response.status, 200, f"the gateway stopped serving: {response.describe()}")


class BackendKilledTests(_Case):
    """SIGKILL to the backend process while the client reads its response."""

    async def start_killable(self, mode: str) -> ProcessRun:
        require_proc()
        backend = run_process([sys.executable, "-c", _KILLABLE_BACKEND, mode], timeout=self.timeout)
        self.addCleanup(backend.stop)
        await backend.wait_for_output(b"\n")
        await self.gateway_for(f"127.0.0.1:{int(bytes(backend.out).split()[0])}")
        # One request first, so that whatever the gateway opens once and
        # keeps (nothing, today) is in the baseline rather than counted as a leak.
        await self.assert_still_serving()
        return backend

    async def settled_fds(self) -> dict[str, str]:
        """The gateway's descriptors once two reads 100 ms apart agree (the warm-up connection closing)."""
        pid = self.gateway.process.pid
        last: list[dict[str, str]] = [open_fds(pid)]

        def settled() -> dict[str, str] | None:
            now = open_fds(pid)
            same = sorted(now) == sorted(last[0])
            last[0] = now
            return now if same else None

        return await poll_until(settled, "the gateway's descriptors to settle", timeout=10, interval=0.1)

    async def assert_fds_back_to(self, before: dict[str, str]) -> None:
        pid = self.gateway.process.pid
        try:
            await poll_until(lambda: len(open_fds(pid)) <= len(before),
                             f"the gateway's {len(before)} descriptors to return", timeout=10, interval=0.05)
        except AssertionError:
            now = open_fds(pid)
            extra = {fd: target for fd, target in now.items() if before.get(fd) != target}
            raise AssertionError(f"the gateway holds {len(now)} descriptors, {len(before)} before the request; "
                                 f"new or changed: {extra}") from None

    async def test_killed_mid_length_body(self) -> None:
        backend = await self.start_killable("length")
        before = await self.settled_fds()
        connection = await self.raw(self.gateway.port)
        connection.send(f"GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await poll_until(lambda: b"x" * 100 in connection.received, "the first body bytes to reach the client")
        await backend.wait_for_output(b"sent")
        await backend.stop()
        data = await connection.read_until_closed(timeout=10)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), data[:300])
        self.assertIn(b"content-length: 1000000", head.lower())
        self.assertEqual(body, b"x" * 5000, "the client got what the backend sent, and nothing else")
        await self.assert_fds_back_to(before)
        await self.assert_still_serving()

    async def test_killed_mid_chunked_body(self) -> None:
        backend = await self.start_killable("chunked")
        before = await self.settled_fds()
        fetch = ensureDeferred(self.curl(self.gateway.url("/stream"), "-H", f"Host: {HOST}", timeout=20))
        await backend.wait_for_output(b"sent")
        await backend.stop()
        response = await fetch
        self.assertEqual(response.status, 200, response.describe())
        # curl 18 (transfer closed with outstanding data) or 56 (receive
        # failure): either way it knows the body is incomplete.  A terminating
        # chunk from the gateway would make it exit 0 with a short body.
        self.assertIn(response.exit_code, (18, 56), response.describe())
        self.assertLessEqual(len(response.body), 5000)
        await self.assert_fds_back_to(before)
        await self.assert_still_serving()


class BackendGarbageTests(_Case):
    """Garbage from a backend that the other modules' 502 tests do not send."""

    async def test_garbage_after_a_valid_head_cuts_the_response(self) -> None:
        backend = self.serve(protocol.Factory.forProtocol(_BadChunk))
        await self.gateway_for(backend.target)
        response = await self.curl(self.gateway.url("/"), "-H", f"Host: {HOST}", timeout=20)
        # The head and the first chunk may reach curl before the gateway
        # aborts, or the reset may overtake them: either way no clean end.
        self.assertIn(response.status, (0, 200), response.describe())
        self.assertNotEqual(response.exit_code, 0, f"a cut response looked complete: {response.describe()}")
        self.assertNotIn(b"more", response.body, "bytes after the garbage reached the client")
        await self.assert_still_serving()

    async def test_ambiguous_response_framing_is_502(self) -> None:
        backend = self.serve(protocol.Factory.forProtocol(_TwoLengths))
        await self.gateway_for(backend.target)
        response = await self.curl(self.gateway.url("/"), "-H", f"Host: {HOST}")
        self.assertEqual(response.status, 502, response.describe())
        self.assertNotIn(b"hello", response.body)


# Garbage: not UTF-8, not YAML, and a file truncated to nothing (a writer
# caught halfway), each in turn.
_ROUTES_GARBAGE = [b"\x00\xff\xfe\x89PNG\r\n\x1a\nnot a routes file", b"routes: [[{{ ::: \t- ]]\n", b""]
_PEM_GARBAGE = [(b"\x00\xff garbage", b"\x89\x00 more garbage"),
                (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                (b"", b"")]


class GarbageFilesTests(_Case):
    """The routes file and a certificate pair overwritten in place with garbage."""

    async def test_routes_file_garbage_keeps_the_last_good_table(self) -> None:
        old, _ = self.serve_echo("old")
        new, _ = self.serve_echo("new")
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        path = directory / "routes.yaml"
        path.write_text(routes_yaml([{"host": HOST, "path": "/", "target": old.target}]))
        self.gateway = await self.start_gateway(["--routes", str(path), "--reload-interval", "0.2"])
        for number, garbage in enumerate(_ROUTES_GARBAGE, 1):
            path.write_bytes(garbage)
            await poll_until(lambda: self.gateway.log_text().count("keeping the last good table") >= number,
                             f"the refusal of garbage {garbage[:20]!r}")
            response = await self.curl(self.gateway.url("/"), "-H", f"Host: {HOST}")
            self.assertEqual((response.status, response.header("X-Backend")), (200, "old"),
                             f"after {garbage[:20]!r}: {response.describe()}")
        path.write_text(routes_yaml([{"host": HOST, "path": "/", "target": new.target}]))

        async def new_backend() -> bool:
            return (await self.curl(self.gateway.url("/"), "-H", f"Host: {HOST}")).header("X-Backend") == "new"

        await poll_until(new_backend, "a good version after the garbage to be picked up")

    async def test_certificate_garbage_keeps_the_last_good_pair(self) -> None:
        require_tool("openssl")
        backend, _ = self.serve_echo("tls")
        secrets = Path(self.mktemp()).absolute() / "secrets"
        certificate = write_pair(secrets / "app", HOST)
        trust = write_pem(secrets.parent / "trust.pem", certificate)
        self.gateway = await self.start_gateway(
            ["--tls-dir", str(secrets), "--cert-check-interval", "0.2"],
            routes=[{"host": HOST, "path": "/", "target": backend.target}])
        port = self.gateway.port

        async def https(cafile: str) -> Any:
            return await self.curl(f"https://{HOST}:{port}/", "--resolve", f"{HOST}:{port}:127.0.0.1",
                                   "--cacert", cafile)

        self.assertEqual((await https(trust)).status, 200)
        for number, (crt, key) in enumerate(_PEM_GARBAGE, 1):
            (secrets / "app" / "tls.crt").write_bytes(crt)
            (secrets / "app" / "tls.key").write_bytes(key)
            await poll_until(lambda: self.gateway.log_text().count("Keeping the previous TLS certificate") >= number,
                             f"the refusal of garbage pair {number}")
            response = await https(trust)
            self.assertEqual(response.status, 200, f"garbage pair {number}: {response.describe()}")

        renewed, renewed_key = make_pair(HOST)
        write_secret_directory(str(secrets / "app"), [renewed], renewed_key)
        renewed_trust = write_pem(secrets.parent / "renewed.pem", renewed)

        async def renewed_served() -> bool:
            return (await https(renewed_trust)).status == 200

        await poll_until(renewed_served, "a good pair after the garbage to be served", timeout=15)
