"""
Security checks against the real ``twistd edd-gateway`` (issue 7, item 5)
that the other end-to-end modules do not already make: spoofed forwarding
headers in every spelling (and a Connection header naming them), Host
written with a port, in capitals or with a trailing dot (and Host values
that must be refused), absolute-form request targets, CONNECT, path
normalisation bypass attempts sent byte for byte, Host and SNI naming
different sites written in odd ways, another user's SSH key for a container,
and container names that are a prefix or a suffix of another's, over HTTP
and SSH.

Every request that must not reach a backend is checked at the backends too.
docs/hardening.md maps these and the older tests to the issue's bullets.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    EndToEndMixin,
    GatewayProcess,
    ProcessRun,
    RawResponse,
    echo_header,
    free_port,
    require_tool,
    run_process,
)
from edd_gateway.testing.sshd import ThrowawaySSHD, write_user_key
from tests._support.tls_gateway import TLSCase

A, B = "a.test", "b.test"


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_tool("curl")

    async def raw_request(self, request: bytes) -> tuple[RawResponse | None, bytes]:
        """One request sent byte for byte; the first response (None if the gateway just closed)."""
        connection = await self.raw(self.gateway.port)
        connection.send(request)
        try:
            [response, *_] = await connection.read_responses(1)
        except AssertionError:
            return None, bytes(connection.received)
        connection.close()
        return response, bytes(connection.received)

    async def get(self, target: str, host: str | None, extra: bytes = b"") -> tuple[RawResponse | None, bytes]:
        host_line = b"" if host is None else f"Host: {host}\r\n".encode()
        return await self.raw_request(f"GET {target} HTTP/1.1\r\n".encode() + host_line + extra
                                      + b"Connection: close\r\n\r\n")


class ForwardingHeaderTests(_Case):
    """An untrusted client cannot choose what the backend believes about it."""

    async def test_spoofing_in_every_spelling(self) -> None:
        backend, echo = self.serve_echo()
        self.gateway = await self.start_gateway(routes=[{"host": A, "path": "/", "target": backend.target}])
        spoofed = (b"x-forwarded-for: 6.6.6.6\r\nX-FORWARDED-FOR: 7.7.7.7\r\nX-Real-Ip: 6.6.6.6\r\n"
                   b"X-Forwarded-Proto: https\r\nx-forwarded-host: evil.example\r\nX-Forwarded-Port: 443\r\n"
                   b"Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\nForwarded: for=7.7.7.7\r\n")
        # A Connection header naming the forwarding headers must not make the
        # gateway drop its own (the hop-by-hop trick against proxies).
        connection_trick = b"Connection: keep-alive, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto\r\n"
        for extra in (spoofed, spoofed + connection_trick):
            response, raw = await self.get("/", A, extra)
            assert response is not None, raw
            self.assertEqual(response.status, 200, raw[:300])
        self.assertEqual(len(echo.requests), 2)
        for seen in echo.requests:
            self.assertEqual(echo_header(seen, "x-forwarded-for"), ["127.0.0.1"])
            self.assertEqual(echo_header(seen, "x-real-ip"), ["127.0.0.1"])
            self.assertEqual(echo_header(seen, "x-forwarded-proto"), ["http"])
            self.assertEqual(echo_header(seen, "x-forwarded-host"), [A])
            self.assertEqual(echo_header(seen, "x-forwarded-port"), [])
            self.assertEqual(echo_header(seen, "forwarded"), [])


class HostAndTargetTests(_Case):
    """Host spellings, absolute-form targets and CONNECT, with two sites behind the gateway."""

    async def start_two_sites(self) -> None:
        self.site_a, self.echo_a = self.serve_echo("a")
        self.site_b, self.echo_b = self.serve_echo("b")
        self.gateway = await self.start_gateway(routes=[{"host": A, "path": "/", "target": self.site_a.target},
                                                        {"host": B, "path": "/", "target": self.site_b.target}])

    async def answers(self, target: str, host: str | None) -> tuple[int, str | None]:
        response, raw = await self.get(target, host)
        if response is None:
            return 0, None
        return response.status, response.header("X-Backend")

    async def test_host_spellings(self) -> None:
        await self.start_two_sites()
        port = self.gateway.port
        same_site = ["A.TEST", "a.test.", "A.Test.", f"a.test:{port}", f"A.TEST.:{port}", "a.test:", "a.test:080"]
        for host in same_site:
            self.assertEqual(await self.answers("/", host), (200, "a"), f"Host: {host}")
        refused = ["a.test:99999", "a.test:x", "a.test..", "a.test@b.test", "b.test/a.test", "a.test:80:80",
                   "a.test\tb.test", ".a.test", "a_test"]
        for host in refused:
            status, backend = await self.answers("/", host)
            self.assertEqual((status, backend), (400, None), f"Host: {host!r}")
        self.assertEqual(await self.answers("/", None), (400, None), "HTTP/1.1 without Host")
        self.assertEqual(len(self.echo_b.requests), 0, "no spelling of a.test reached b.test")
        seen = [echo_header(request, "host") for request in self.echo_a.requests]
        self.assertEqual(len(seen), len(same_site))

    async def test_absolute_form_targets(self) -> None:
        await self.start_two_sites()
        response, raw = await self.get("http://a.test/x?y=1", B)
        assert response is not None, raw
        self.assertEqual((response.status, response.header("X-Backend")), (200, "a"), "the target's host wins")
        seen = response.json()
        self.assertEqual(seen["path"], "/x?y=1", "the backend gets origin-form")
        self.assertEqual(echo_header(seen, "host"), [A], "RFC 9112 3.2.2: the authority replaces Host")
        self.assertEqual(await self.answers("HTTPS://A.TEST.:443/", B), (200, "a"))
        self.assertEqual(await self.answers("http://a.test", B), (200, "a"), "an empty path is /")
        self.assertEqual((await self.answers("http://evil.test/", A))[1], None, "Host cannot rescue an unknown target")
        for target in ("ftp://a.test/", "http://user@a.test/", "http://user:pw@b.test/", "http:///x",
                       "http://a.test:99999/", "http://a.test@b.test/"):
            self.assertEqual(await self.answers(target, A), (400, None), target)
        self.assertEqual(len(self.echo_b.requests), 0)

    async def test_connect_refused(self) -> None:
        await self.start_two_sites()
        for authority in (f"{A}:443", self.site_b.target, f"127.0.0.1:{self.gateway.port}"):
            response, raw = await self.raw_request(
                f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            assert response is not None, raw
            self.assertEqual(response.status, 405, raw[:300])
        self.assertEqual(self.echo_a.requests + self.echo_b.requests, [], "CONNECT reached a backend")


class PathNormalisationTests(_Case):
    """Attempts to reach a path-routed backend, or leave one, by spelling the path oddly."""

    # target sent byte for byte -> (backend, path it receives); /api strips its prefix.
    ATTEMPTS = {
        "/api/../admin/x": ("admin", "/admin/x"),
        "/api/%2e%2e/admin/x": ("admin", "/admin/x"),
        "/api/%2E%2E/%2e%2E/etc/passwd": ("public", "/etc/passwd"),
        "/api/./../../admin": ("admin", "/admin"),
        "//admin/x": ("admin", "/admin/x"),
        "/./admin/x": ("admin", "/admin/x"),
        "/%61dmin/x": ("admin", "/admin/x"),
        "/admin/..": ("public", "/"),
        "/admin/../api": ("api", "/"),
        "/ADMIN/x": ("public", "/ADMIN/x"),
        "/adminx": ("public", "/adminx"),
        "/admin%2fx": ("public", "/admin%2Fx"),
        "/admin%2F..%2Fapi": ("public", "/admin%2F..%2Fapi"),
        "/api/%2E%2E%2Fadmin": ("api", "/..%2Fadmin"),
        "/api/..\\admin": ("api", "/..%5Cadmin"),
        "/api/..%5cadmin": ("api", "/..%5Cadmin"),
        "/api/%252e%252e/admin": ("api", "/%252e%252e/admin"),
        "/%c0%ae%c0%ae/admin": ("public", "/%C0%AE%C0%AE/admin"),
        "/api/../../../../admin/?q=/../x": ("admin", "/admin/?q=/../x"),
    }

    async def test_bypass_attempts(self) -> None:
        backends = {name: self.serve_echo(name) for name in ("public", "admin", "api")}
        self.gateway = await self.start_gateway(routes=[
            {"host": A, "path": "/", "target": backends["public"][0].target},
            {"host": A, "path": "/admin", "target": backends["admin"][0].target},
            {"host": A, "path": "/api", "target": backends["api"][0].target, "strip_prefix": True},
        ])
        problems = []
        for target, expected in self.ATTEMPTS.items():
            response, raw = await self.get(target, A)
            got = (None, raw[:120]) if response is None else (response.header("X-Backend"), response.json()["path"])
            if got != expected:
                problems.append(f"{target!r}: expected {expected}, got {got}")
        self.assertEqual(problems, [])
        for name, (_, echo) in backends.items():
            for request in echo.requests:
                segments = request["path"].split("?")[0].split("/")
                self.assertFalse({".", ".."} & {s.lower().replace("%2e", ".") for s in segments},
                                 f"{name} got a dot segment: {request['path']}")


class MisdirectedTests(TLSCase):
    """Host and SNI on one TLS connection: the same site in any spelling, or 421."""

    async def test_host_and_sni_spellings(self) -> None:
        await self.start()
        port = self.gateway.port
        for host in ("APP.cloud.test", "app.cloud.test.", f"app.cloud.test:{port}", f"App.Cloud.Test.:{port}"):
            response = await self.https("app.cloud.test", "/", "-H", f"Host: {host}", cacert=self.exact)
            self.assertEqual(response.status, 200, f"Host {host} is the SNI's site: {response.describe()}")
        for host in (f"other.cloud.test:{port}", "OTHER.cloud.test.", "cloud.test", "app.cloud.test.evil.test"):
            response = await self.https("app.cloud.test", "/", "-H", f"Host: {host}", cacert=self.exact)
            self.assertEqual(response.status, 421, f"Host {host}: {response.describe()}")
        self.assertEqual(len(self.echo.requests), 4, "only the same-site requests reached the backend")


CONTAINER_DOMAIN = "compute.test"


class _MappedGateway(GatewayProcess):
    """The gateway whose chosen listening port counts as port 80 for container ingress."""

    def command(self, args: Sequence[str]) -> list[str]:
        return super().command([*args, "--port-map", f"{self.port}=80"])


class ContainerNameTests(_Case):
    """Container ids that are prefixes and suffixes of each other never reach each other."""

    NAMES = ("web1", "web10", "eb1", "xweb1")

    async def test_http_by_container_name(self) -> None:
        backends = {name: self.serve_echo(name) for name in self.NAMES[:2]}
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        containers = [{"id": name, "user_id": "u", "external_ip": "127.0.0.1",
                       "ingress": [{"port": 80, "target_port": backends[name][0].port}]} for name in backends]
        containers.append({"id": "xweb1", "user_id": "u", "status": "stopped", "external_ip": "127.0.0.1",
                           "ingress": [{"port": 80, "target_port": backends["web1"][0].port}]})
        (work / "containers.yaml").write_text(json.dumps({"containers": containers}))
        gateway = _MappedGateway(str(work / "gateway"))
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        await gateway.start(["--containers", str(work / "containers.yaml"), "--container-domain", CONTAINER_DOMAIN])
        self.gateway = gateway
        expected = {
            f"web1.{CONTAINER_DOMAIN}": (200, "web1"),
            f"WEB10.{CONTAINER_DOMAIN}.": (200, "web10"),
            f"eb1.{CONTAINER_DOMAIN}": (503, None),
            f"web.{CONTAINER_DOMAIN}": (503, None),
            f"xweb1.{CONTAINER_DOMAIN}": (503, None),
            f"web100.{CONTAINER_DOMAIN}": (503, None),
            f"web1.{CONTAINER_DOMAIN}.evil.test": (404, None),
            f"a.web1.{CONTAINER_DOMAIN}": (404, None),
            f"web1{CONTAINER_DOMAIN}": (404, None),
            f"web1-{CONTAINER_DOMAIN}": (404, None),
        }
        got = {}
        for host in expected:
            response, raw = await self.get("/", host)
            got[host] = (0, None) if response is None else (response.status, response.header("X-Backend"))
        self.assertEqual(got, expected)
        self.assertEqual([len(echo.requests) for _, echo in backends.values()], [1, 1])


class SSHKeyTests(EndToEndMixin, TestCase):
    """Another user's key, and containers whose ids are prefixes or suffixes of each other."""

    timeout = 120

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.ssh_path = require_tool("ssh")
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        alice, bob = write_user_key(self.work / "alice"), write_user_key(self.work / "bob")
        write_user_key(self.work / "client")
        self.sshd.trust(self.work / "client.pub")
        await self.sshd.start()
        owners = {"abc123": ("alice", alice), "abc12": ("bob", bob), "abc1234": ("bob", bob),
                  "xabc123": ("bob", bob)}
        (self.work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": cid, "user_id": user, "external_ip": "127.0.0.1", "ssh_enabled": True, "ssh_keys": [key]}
            for cid, (user, key) in owners.items()]}))
        self.ssh_port = free_port()
        self.gateway = await self.start_gateway([
            "--containers", str(self.work / "containers.yaml"), "--ssh-port", str(self.sshd.port),
            "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1", "--ssh-host-key", str(self.work / "host"),
            "--ssh-client-key", str(self.work / "client"), "--state-file", str(self.work / "pins.json"),
        ])

    async def ssh(self, cid: str, key: str) -> ProcessRun:
        user = cid if self.login_user == "root" else f"{self.login_user}.{cid}"
        argv = [self.ssh_path, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
                "-i", str(self.work / key), "-p", str(self.ssh_port), f"{user}@127.0.0.1", "echo in"]
        done = await run_process(argv, timeout=60, path=str(self.work)).result()
        self.assertFalse(done.timed_out, f"ssh hung: {bytes(done.err)!r}")
        return done

    async def test_keys_open_only_their_owners_containers(self) -> None:
        outcomes = {}
        for cid, key in [("abc123", "alice"), ("abc12", "bob"), ("abc123", "bob"), ("abc12", "alice"),
                         ("abc1234", "alice"), ("xabc123", "alice")]:
            done = await self.ssh(cid, key)
            denied = b"Permission denied (publickey)" in bytes(done.err)
            outcomes[(cid, key)] = "in" if (done.exit_code, bytes(done.out)) == (0, b"in\n") else (
                "denied" if denied and done.exit_code == 255 else f"{done.exit_code} {bytes(done.err)[:200]!r}")
        self.assertEqual(outcomes, {
            ("abc123", "alice"): "in", ("abc12", "bob"): "in",
            ("abc123", "bob"): "denied", ("abc12", "alice"): "denied",
            ("abc1234", "alice"): "denied", ("xabc123", "alice"): "denied",
        })

