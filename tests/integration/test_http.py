"""
End-to-end tests of the HTTP reverse proxy: the real ``twistd edd-gateway``
in a subprocess, real curl (and a raw socket for what curl will not send)
in front of it, real backends listening on loopback in this process.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    DownloadResource,
    EndToEndMixin,
    EventStreamResource,
    behaviour_factory,
    download_data,
    download_sha256,
    echo_header,
    free_port,
    require_tool,
    run_process,
    web_factory,
)

HOST = "app.test"
REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")


def route(path: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"host": HOST, "path": path, "target": target, **extra}


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.curl_path = require_tool("curl")

    async def echo_gateway(self, *args: str, **route_extra: Any) -> Any:
        self.backend, self.echo = self.serve_echo()
        self.gateway = await self.start_gateway(args, routes=[route("/", self.backend.target, **route_extra)])
        return self.gateway

    async def fetch(self, path: str, *args: str, host: str = HOST) -> Any:
        return await self.curl(self.gateway.url(path), "-H", f"Host: {host}", *args)

    def file_of(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(data)
        return path


class DefaultRoutesTests(_Case):
    """Without --routes the embedded default serves the welcome page."""

    async def test_welcome_page_for_loopback_names(self) -> None:
        self.gateway = await self.start_gateway()
        for host in ("127.0.0.1", "localhost"):
            response = await self.fetch("/", host=host)
            self.assertEqual(response.status, 200, f"Host: {host}: {response.describe()}")
            self.assertIn("edd-gateway is running", response.text)
            self.assertTrue(REQUEST_ID.match(response.header("X-Request-ID") or ""))
        plain = await self.curl(self.gateway.url("/"))
        self.assertEqual(plain.status, 200, "Host 127.0.0.1:PORT (port ignored)")

    async def test_unknown_host_is_a_404_naming_it(self) -> None:
        self.gateway = await self.start_gateway()
        response = await self.fetch("/anything", host="nowhere.example")
        self.assertEqual(response.status, 404)
        self.assertIn("nowhere.example", response.text)


class ForwardingTests(_Case):
    """What reaches the backend: the request itself and the forwarding headers."""

    async def test_get_with_path_and_query(self) -> None:
        await self.echo_gateway()
        response = await self.fetch("/some/path?x=1&y=%20z")
        self.assertEqual(response.status, 200, response.describe())
        seen = response.json()
        self.assertEqual((seen["method"], seen["path"]), ("GET", "/some/path?x=1&y=%20z"))
        self.assertEqual(len(self.echo.requests), 1)

    async def test_post_body(self) -> None:
        await self.echo_gateway()
        response = await self.fetch("/submit", "--data-binary", "name=value&more=stuff")
        self.assertEqual(response.status, 200, response.describe())
        seen = response.json()
        self.assertEqual((seen["method"], seen["body"]), ("POST", "name=value&more=stuff"))
        for method in ("PUT", "DELETE", "PATCH"):
            response = await self.fetch("/m", "-X", method, "--data-binary", method)
            self.assertEqual(response.status, 200, f"{method}: {response.describe()}")
            seen = response.json()
            self.assertEqual((seen["method"], seen["body"]), (method, method))

    async def test_host_preserved_port_ignored_for_routing(self) -> None:
        await self.echo_gateway()
        port = self.gateway.port
        response = await self.curl(f"http://{HOST}:{port}/h", "--resolve", f"{HOST}:{port}:127.0.0.1")
        self.assertEqual(response.status, 200, response.describe())
        self.assertEqual(echo_header(response.json(), "host"), [f"{HOST}:{port}"])
        upper = await self.fetch("/h", host="APP.TEST.")
        self.assertEqual(upper.status, 200, "host case and trailing dot are ignored")

    async def test_forwarding_headers_set(self) -> None:
        await self.echo_gateway()
        seen = (await self.fetch("/")).json()
        self.assertEqual(echo_header(seen, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(echo_header(seen, "x-real-ip"), ["127.0.0.1"])
        self.assertEqual(echo_header(seen, "x-forwarded-proto"), ["http"])
        self.assertEqual(echo_header(seen, "x-forwarded-host"), [HOST])

    async def test_request_id_minted_and_echoed(self) -> None:
        await self.echo_gateway()
        first, second = await self.fetch("/"), await self.fetch("/")
        minted = first.header("X-Request-ID") or ""
        self.assertTrue(REQUEST_ID.match(minted), minted)
        self.assertEqual(echo_header(first.json(), "x-request-id"), [minted])
        self.assertNotEqual(minted, second.header("X-Request-ID"))

    async def test_valid_request_id_kept(self) -> None:
        await self.echo_gateway()
        response = await self.fetch("/", "-H", "X-Request-ID: client.id_42-A")
        self.assertEqual(response.header("X-Request-ID"), "client.id_42-A")
        self.assertEqual(echo_header(response.json(), "x-request-id"), ["client.id_42-A"])

    async def test_invalid_request_id_replaced(self) -> None:
        await self.echo_gateway()
        for bad in ("has space", "semi;colon", "x" * 129):
            response = await self.fetch("/", "-H", f"X-Request-ID: {bad}")
            kept = response.header("X-Request-ID") or ""
            self.assertNotEqual(kept, bad)
            self.assertTrue(REQUEST_ID.match(kept), kept)
            self.assertEqual(echo_header(response.json(), "x-request-id"), [kept])

    async def test_spoofed_forwarding_headers_replaced_for_untrusted_client(self) -> None:
        await self.echo_gateway()
        seen = (await self.fetch(
            "/", "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6",
            "-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-Host: evil.example",
        )).json()
        self.assertEqual(echo_header(seen, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(echo_header(seen, "x-real-ip"), ["127.0.0.1"])
        self.assertEqual(echo_header(seen, "x-forwarded-proto"), ["http"])
        self.assertEqual(echo_header(seen, "x-forwarded-host"), [HOST])

    async def test_trusted_proxy_forwarded_for_appended(self) -> None:
        await self.echo_gateway("--trusted-proxy", "127.0.0.1")
        seen = (await self.fetch("/", "-H", "X-Forwarded-For: 6.6.6.6")).json()
        self.assertEqual(echo_header(seen, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"])

    async def test_hop_by_hop_headers_removed(self) -> None:
        await self.echo_gateway()
        seen = (await self.fetch("/", "-H", "Connection: X-Secret", "-H", "X-Secret: 1",
                                 "-H", "Keep-Alive: timeout=5", "-H", "X-Kept: yes")).json()
        self.assertEqual(echo_header(seen, "x-secret"), [])
        self.assertEqual(echo_header(seen, "keep-alive"), [])
        self.assertEqual(echo_header(seen, "x-kept"), ["yes"])


class RoutingTests(_Case):
    """Priority, segment boundaries, strip_prefix and normalisation, through the proxy."""

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        names = ("root", "compute", "exact", "api", "admin", "public")
        backends = {name: self.serve_echo(name)[0].target for name in names}
        self.gateway = await self.start_gateway(routes=[
            route("/", backends["root"]),
            route("/compute", backends["compute"]),
            route("/compute/status", backends["exact"], match="exact"),
            route("/api", backends["api"], strip_prefix=True),
            route("/admin", backends["admin"]),
            route("/public", backends["public"]),
        ])

    async def assertRouted(self, path: str, backend: str, upstream_path: str | None = None) -> None:
        response = await self.fetch(path, "--path-as-is")
        self.assertEqual(response.status, 200, f"GET {path}: {response.describe()}")
        self.assertEqual(response.header("X-Backend"), backend, f"GET {path}")
        if upstream_path is not None:
            self.assertEqual(response.json()["path"], upstream_path, f"GET {path}")

    async def test_exact_before_prefix(self) -> None:
        await self.assertRouted("/compute/status", "exact")
        await self.assertRouted("/compute/status/more", "compute")
        await self.assertRouted("/compute/statusx", "compute")

    async def test_longest_prefix_then_root(self) -> None:
        await self.assertRouted("/compute", "compute", "/compute")
        await self.assertRouted("/compute/", "compute")
        await self.assertRouted("/compute/x/y?q=1", "compute", "/compute/x/y?q=1")
        await self.assertRouted("/other", "root")

    async def test_prefix_matches_whole_segments_only(self) -> None:
        await self.assertRouted("/computex", "root", "/computex")
        await self.assertRouted("/apix", "root", "/apix")

    async def test_strip_prefix(self) -> None:
        await self.assertRouted("/api/users?id=3", "api", "/users?id=3")
        await self.assertRouted("/api", "api", "/")
        await self.assertRouted("/api/", "api", "/")

    async def test_dot_segments_resolved_before_matching(self) -> None:
        await self.assertRouted("/public/../admin", "admin", "/admin")
        await self.assertRouted("/public/x/../../admin/panel", "admin", "/admin/panel")
        await self.assertRouted("/admin/../public/file", "public", "/public/file")
        await self.assertRouted("/public/./file", "public", "/public/file")

    async def test_encoded_dot_segments_resolved_before_matching(self) -> None:
        await self.assertRouted("/%2e%2e/admin", "admin", "/admin")
        await self.assertRouted("/public/%2E%2E/admin", "admin", "/admin")
        await self.assertRouted("/admin/%2e%2e/public", "public", "/public")
        await self.assertRouted("/%61dmin", "admin", "/admin")

    async def test_escape_above_root_cannot_leave_it(self) -> None:
        await self.assertRouted("/../../admin", "admin", "/admin")
        await self.assertRouted("/api/../../compute", "compute", "/compute")


class StreamingTests(_Case):
    """Keep-alive, bodies both ways, HEAD, 100-continue, pipelining, SSE."""

    async def test_keep_alive_reuses_one_connection(self) -> None:
        await self.echo_gateway()
        urls = [self.gateway.url(f"/ka/{n}") for n in range(3)]
        argv = [self.curl_path, "-sS", "-H", f"Host: {HOST}", "-w", "%{http_code} %{num_connects}\n"]
        for url in urls:
            argv += ["-o", os.devnull, url]
        run = await run_process(argv, timeout=30).result()
        lines = run.out.decode().split()
        self.assertEqual(run.exit_code, 0, run.err)
        self.assertEqual(lines[0::2], ["200"] * 3)
        self.assertEqual(sum(int(n) for n in lines[1::2]), 1, f"connects per URL: {lines[1::2]}")
        self.assertEqual([r["path"] for r in self.echo.requests], ["/ka/0", "/ka/1", "/ka/2"])

    async def test_chunked_upload(self) -> None:
        await self.echo_gateway()
        data = os.urandom(3 * 1024 * 1024 + 17)
        response = await self.fetch("/up", "-H", "Transfer-Encoding: chunked",
                                    "--data-binary", f"@{self.file_of(data)}")
        self.assertEqual(response.status, 200, response.describe())
        seen = response.json()
        self.assertEqual((seen["body_length"], seen["body_sha256"]), (len(data), hashlib.sha256(data).hexdigest()))

    async def test_large_upload_with_expect_continue(self) -> None:
        await self.echo_gateway()
        data = os.urandom(20 * 1024 * 1024)
        started = reactor.seconds()
        # curl waits for the 100 this long before sending anyway: a proxy
        # that swallowed the 100 would make the request take 20 s.
        response = await self.fetch("/big", "-H", "Expect: 100-continue", "--expect100-timeout", "20",
                                    "--data-binary", f"@{self.file_of(data)}", "-H", "Content-Type: x/y")
        self.assertEqual(response.status, 200, response.describe())
        self.assertIn(100, response.informational)
        self.assertLess(reactor.seconds() - started, 15)
        seen = response.json()
        self.assertEqual((seen["body_length"], seen["body_sha256"]), (len(data), hashlib.sha256(data).hexdigest()))

    async def test_large_download(self) -> None:
        backend = self.serve(web_factory(DownloadResource()))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target)])
        size = 50 * 1024 * 1024 + 123
        target = self.mktemp()
        response = await self.fetch(f"/{size}", "-o", target)
        self.assertEqual((response.exit_code, response.stderr), (0, ""))
        with open(target, "rb") as got:
            digest = hashlib.sha256()
            for chunk in iter(lambda: got.read(1 << 20), b""):
                digest.update(chunk)
        self.assertEqual(os.path.getsize(target), size)
        self.assertEqual(digest.hexdigest(), download_sha256(size))

    async def test_head_then_get_on_one_connection(self) -> None:
        backend = self.serve(web_factory(DownloadResource()))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target)])
        head = await self.fetch("/4096", "-I", "-o", os.devnull)
        self.assertEqual((head.status, head.header("Content-Length"), head.body), (200, "4096", b""))
        connection = await self.raw(self.gateway.port)
        connection.send(f"HEAD /1000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                        f"GET /10 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = await connection.read_until_closed()
        first, _, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), data[:300])
        self.assertIn(b"content-length: 1000", first.lower())
        self.assertTrue(rest.startswith(b"HTTP/1.1 200"), f"the HEAD answer carried a body: {rest[:200]!r}")
        self.assertEqual(rest.partition(b"\r\n\r\n")[2], download_data(10))

    async def test_pipelined_requests_answered_in_order(self) -> None:
        await self.echo_gateway()
        connection = await self.raw(self.gateway.port)
        connection.send(
            f"GET /p1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            f"POST /p2 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello"
            f"GET /p3 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        await connection.read_until_closed()
        responses = await connection.read_responses(3)
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual([r.json()["path"] for r in responses], ["/p1", "/p2", "/p3"])
        self.assertEqual(responses[1].json()["body"], "hello")
        self.assertEqual(len({r.header("X-Request-ID") for r in responses}), 3)

    async def test_server_sent_events_arrive_one_by_one(self) -> None:
        events = EventStreamResource(total=3)
        backend = self.serve(web_factory(events))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target)])
        stream = run_process([self.curl_path, "-sS", "-N", "-H", f"Host: {HOST}", self.gateway.url("/events")],
                             timeout=30)
        self.addCleanup(lambda: ensureDeferred(stream.stop()))
        await stream.wait_for_output(b"data: 1\n\n")
        # Event 1 reached curl while the backend still held events 2 and 3.
        self.assertEqual(events.streams[0].sent, 1)
        events.streams[0].send_next()
        await stream.wait_for_output(b"data: 2\n\n")
        self.assertNotIn(b"data: 3", stream.out)
        events.streams[0].send_next()
        await stream.result()
        self.assertEqual((stream.exit_code, bytes(stream.out)), (0, b"data: 1\n\ndata: 2\n\ndata: 3\n\n"))


class BackendFailureTests(_Case):
    """The gateway's own 502 and 504 pages."""

    async def assertGatewayPage(self, response: Any, status: int) -> None:
        self.assertEqual(response.status, status, response.describe())
        self.assertIn(str(status), response.text)
        self.assertIn("edd-gateway", response.text)
        self.assertTrue(REQUEST_ID.match(response.header("X-Request-ID") or ""))

    async def test_backend_down_is_502(self) -> None:
        self.gateway = await self.start_gateway(routes=[route("/", f"127.0.0.1:{free_port()}")])
        await self.assertGatewayPage(await self.fetch("/"), 502)

    async def test_backend_never_answering_is_504(self) -> None:
        backend = self.serve(behaviour_factory("silent"))
        self.gateway = await self.start_gateway(["--response-timeout", "1"], routes=[route("/", backend.target)])
        started = reactor.seconds()
        response = await self.fetch("/")
        await self.assertGatewayPage(response, 504)
        self.assertTrue(0.9 <= reactor.seconds() - started < 10, reactor.seconds() - started)

    async def test_per_route_response_timeout(self) -> None:
        backend = self.serve(behaviour_factory("silent"))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target, response_timeout=1)])
        await self.assertGatewayPage(await self.fetch("/"), 504)

    async def test_backend_answering_garbage_is_502(self) -> None:
        backend = self.serve(behaviour_factory("garbage"))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target)])
        await self.assertGatewayPage(await self.fetch("/"), 502)

    async def test_backend_hanging_up_is_502(self) -> None:
        backend = self.serve(behaviour_factory("hangup"))
        self.gateway = await self.start_gateway(routes=[route("/", backend.target)])
        await self.assertGatewayPage(await self.fetch("/"), 502)


SMUGGLING = {
    "content-length and transfer-encoding": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 50\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "two different content-lengths": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "content-length not a number": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +5\r\n\r\nhello",
    "transfer-encoding gzip": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "transfer-encoding gzip, chunked": b"POST / HTTP/1.1\r\nHost: app.test\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Bare: a\rb\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Nul: a\x00b\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length : 5\r\n\r\nhello",
    "invalid chunk size": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
}


class RefusalTests(_Case):
    """Requests the gateway refuses itself: smuggling, timeouts, limits."""

    async def test_smuggling_attempts_refused_before_the_backend(self) -> None:
        await self.echo_gateway()
        failures = []
        for name, payload in SMUGGLING.items():
            connection = await self.raw(self.gateway.port)
            connection.send(payload)
            data = await connection.read_until_closed()
            if not data.startswith(b"HTTP/1.1 400 "):
                failures.append(f"{name}: sent {payload!r}, expected 400 then close, got {data[:200]!r}")
        self.assertEqual(failures, [])
        # The invalid chunk size reaches the backend as a head and a
        # truncated body at most: no request ever completes there.
        self.assertEqual(self.echo.requests, [])

    async def test_header_timeout_is_408(self) -> None:
        await self.echo_gateway("--header-timeout", "1")
        connection = await self.raw(self.gateway.port)
        started = reactor.seconds()
        connection.send(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
        data = await connection.read_until_closed(timeout=10)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:300])
        self.assertTrue(0.9 <= reactor.seconds() - started < 8)
        self.assertEqual(self.echo.requests, [])

    async def test_oversized_head_is_431(self) -> None:
        await self.echo_gateway("--max-header-size", "4096")
        response = await self.fetch("/", "-H", "X-Big: " + "a" * 8000)
        self.assertEqual(response.status, 431, response.describe(200))
        self.assertEqual(self.echo.requests, [])

    async def test_body_over_limit_is_413(self) -> None:
        await self.echo_gateway("--max-body-size", "1000")
        small = await self.fetch("/", "--data-binary", "x" * 1000)
        self.assertEqual(small.status, 200, small.describe())
        for extra in ((), ("-H", "Transfer-Encoding: chunked")):
            response = await self.fetch("/", "--data-binary", "y" * 2000, *extra)
            self.assertEqual(response.status, 413, f"{extra}: {response.describe()}")
        self.assertEqual(len(self.echo.requests), 1)

    async def test_malformed_request_line_is_400(self) -> None:
        await self.echo_gateway()
        connection = await self.raw(self.gateway.port)
        connection.send(b"GET /a b c HTTP/1.1\r\nHost: app.test\r\n\r\n")
        data = await connection.read_until_closed()
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:300])
