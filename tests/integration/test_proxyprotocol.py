"""
End-to-end tests of the PROXY protocol with the real ``twistd edd-gateway``
and real peers: curl's ``--haproxy-protocol`` and Debian's haproxy
(``send-proxy``, ``send-proxy-v2``) in front of a ``haproxy:tcp:`` listener,
whose HTTP, HTTPS and SSH sides must name the client the header carried;
a passthrough route with ``proxy_protocol`` whose backend is Twisted's own
``haproxy:`` server endpoint, which must read the client's address from the
header the gateway sent; and connections without a valid header, closed
with a log line while the gateway keeps serving.

The clients connect from 127.0.0.2 (curl ``--interface``) so that the
address a header carries differs from the gateway's own 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from edd_gateway.net.proxyprotocol import header
from edd_gateway.testing import (
    EndToEndMixin,
    echo_header,
    free_port,
    poll_until,
    require_tool,
    run_process,
    web_factory,
)
from edd_gateway.testing.tls import BackendTLS, make_pair, write_pem

CLIENT_IP = "127.0.0.2"
#: What curl >= 8.2 puts in its header with --haproxy-clientip.
SPOOFED_IP = "203.0.113.7"


def curl_version() -> tuple[int, ...]:
    first = subprocess.run([require_tool("curl"), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.match(r"curl (\d+)\.(\d+)", first)
    return tuple(int(part) for part in found.groups()) if found else (0,)


class ClientAddressResource(Resource):
    """Answers with the client address Twisted gave the request: the PROXY header's source."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[tuple[str, int]] = []

    def render(self, request: Request) -> bytes:
        client = request.getClientAddress()
        self.clients.append((client.host, client.port))  # type: ignore[attr-defined]
        return f"{client.host}".encode()  # type: ignore[attr-defined]


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.curl_path = require_tool("curl")
        self.echo_backend, self.echo = self.serve_echo("app")
        self.proxied_port = 0

    def routes(self) -> list[dict[str, Any]]:
        return [{"host": "app.test", "path": "/", "target": self.echo_backend.target}]

    async def start(self, *extra: str) -> None:
        self.proxied_port = free_port()
        listen = f"haproxy:tcp:{self.proxied_port}:interface=127.0.0.1"
        self.gateway = await self.start_gateway(["--listen", listen, "--sniff-timeout", "1", *extra],
                                                routes=self.routes())
        await poll_until(lambda: self._log_has(f"on {self.proxied_port}"), "the haproxy: listener to start")

    def _log_has(self, text: str) -> bool:
        return text in self.gateway.log_text()

    def log_line(self, text: str) -> str:
        return next(line for line in self.gateway.log_text().splitlines() if text in line)


class CurlTests(_Case):
    async def test_http_and_https_see_the_headers_client(self) -> None:
        await self.start()
        if curl_version() >= (8, 2):
            source, expected = ["--haproxy-clientip", SPOOFED_IP], SPOOFED_IP
        else:
            # No --haproxy-clientip before curl 8.2: its header carries its
            # own source address, chosen here so it is not the gateway's.
            source, expected = ["--interface", CLIENT_IP], CLIENT_IP
        for scheme in ("http", "https"):
            url = f"{scheme}://app.test:{self.proxied_port}/who"
            response = await self.curl(url, "--haproxy-protocol", *source, "-k",
                                       "--resolve", f"app.test:{self.proxied_port}:127.0.0.1")
            self.assertEqual(response.status, 200, response.describe())
            seen = response.json()
            self.assertEqual(echo_header(seen, "x-forwarded-for"), [expected], scheme)
            self.assertEqual(echo_header(seen, "x-real-ip"), [expected], scheme)
            self.assertEqual(echo_header(seen, "x-forwarded-proto"), [scheme])


class NoHeaderTests(_Case):
    async def test_closed_with_a_log_line_and_others_still_served(self) -> None:
        await self.start()
        plain = await self.raw(self.proxied_port)
        plain.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual(await plain.read_until_closed(), b"", "nothing answered without a header")
        await poll_until(lambda: self._log_has("sent no valid PROXY protocol header"), "the refusal's log line")
        self.assertIn("127.0.0.1:", self.log_line("sent no valid PROXY protocol header"))

        silent = await self.raw(self.proxied_port)
        await silent.read_until_closed()
        await poll_until(lambda: self._log_has("sent no PROXY protocol header in 1"), "the silent client's line")

        broken = await self.raw(self.proxied_port)
        broken.send(b"PROXY TCP4 1.2.3.4 5.6.7.8 notaport 80\r\nGET / HTTP/1.1\r\n\r\n")
        await broken.read_until_closed()

        good = await self.raw(self.proxied_port)
        client = IPv4Address("TCP", SPOOFED_IP, 40000)
        good.send(header("v2", client, IPv4Address("TCP", "127.0.0.1", self.proxied_port))
                  + b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
        [response] = await good.read_responses(1)
        self.assertEqual(response.status, 200)
        self.assertEqual(echo_header(response.json(), "x-forwarded-for"), [SPOOFED_IP])
        plain_listener = await self.curl(self.gateway.url("/"), "-H", "Host: app.test")
        self.assertEqual(plain_listener.status, 200, "the plain listener is unaffected")
        self.assertEqual(self.gateway.process.poll(), None)  # type: ignore[union-attr]

    async def test_ssh_logs_name_the_headers_client(self) -> None:
        await self.start("--ssh-login-grace-time", "1")
        connection = await self.raw(self.proxied_port)
        client = IPv4Address("TCP", SPOOFED_IP, 40001)
        connection.send(header("v1", client, IPv4Address("TCP", "127.0.0.1", self.proxied_port))
                        + b"SSH-2.0-probe\r\n")
        await connection.read_until_closed()
        await poll_until(lambda: self._log_has("did not log in"), "the grace time's log line")
        self.assertIn(f"{SPOOFED_IP}:40001", self.log_line("did not log in"))
        self.assertTrue(connection.received.startswith(b"SSH-2.0-"))


class HAProxyTests(_Case):
    """Debian's haproxy in front of the gateway, sending v1 and v2 headers."""

    def setUp(self) -> None:
        super().setUp()
        self.haproxy = require_tool("haproxy")

    async def start_haproxy(self) -> dict[str, int]:
        fronts = {"v1": free_port(), "v2": free_port()}
        options = {"v1": "send-proxy", "v2": "send-proxy-v2"}
        config = ["defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 30s",
                  "    timeout server 30s"]
        for version, port in fronts.items():
            config += [f"listen front_{version}", f"    bind 127.0.0.1:{port}",
                       f"    server gateway 127.0.0.1:{self.proxied_port} {options[version]}"]
        path = Path(self.mktemp()).absolute()
        path.write_text("\n".join(config) + "\n")
        run = run_process([self.haproxy, "-db", "-f", str(path)], timeout=120)
        self.addCleanup(run.stop)
        for port in fronts.values():
            await poll_until(lambda: self._accepting(port, run), f"haproxy to listen on {port}")
        return fronts

    def _accepting(self, port: int, run: Any) -> bool:
        import socket

        if run.exit_code is not None:
            raise AssertionError(f"haproxy exited: {bytes(run.out + run.err).decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    async def test_send_proxy_v1_and_v2(self) -> None:
        await self.start()
        fronts = await self.start_haproxy()
        for version, port in fronts.items():
            for scheme in ("http", "https"):
                response = await self.curl(f"{scheme}://app.test:{port}/{version}", "--interface", CLIENT_IP, "-k",
                                           "--resolve", f"app.test:{port}:127.0.0.1")
                self.assertEqual(response.status, 200, f"{version} {scheme}: {response.describe()}")
                seen = response.json()
                self.assertEqual(echo_header(seen, "x-forwarded-for"), [CLIENT_IP], f"{version} {scheme}")
                self.assertEqual(seen["path"], f"/{version}")


class PassthroughTests(_Case):
    """A passthrough route sends the header to a backend that is Twisted's own ``haproxy:`` endpoint."""

    async def serve_proxied_backend(self) -> None:
        certificate, key = make_pair("vm.test")
        self.certificate = certificate
        self.seen = ClientAddressResource()
        site = web_factory(self.seen)
        tls = TLSMemoryBIOFactory(BackendTLS(certificate, key), False, site)
        self.listening = await serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1").listen(tls)
        self.addCleanup(self.listening.stopListening)

    def routes(self) -> list[dict[str, Any]]:
        port = self.listening.getHost().port
        return [*super().routes(),
                {"host": "vm.test", "path": "/", "target": f"127.0.0.1:{port}", "tls": "passthrough",
                 "proxy_protocol": self.version}]

    async def passthrough(self, version: str) -> None:
        self.version = version
        await self.serve_proxied_backend()
        await self.start()
        port = self.gateway.port
        trust = write_pem(Path(self.mktemp()).absolute(), self.certificate)
        response = await self.curl(f"https://vm.test:{port}/inside", "--interface", CLIENT_IP, "--cacert", trust,
                                   "--resolve", f"vm.test:{port}:127.0.0.1")
        self.assertEqual(response.status, 200, response.describe())
        self.assertEqual(response.text, CLIENT_IP, "the backend read the client from the gateway's header")
        [(host, _)] = self.seen.clients
        self.assertEqual(host, CLIENT_IP)
        await poll_until(lambda: self._log_has(f"PROXY protocol {version} header"), "the passthrough log line")

    async def test_v1(self) -> None:
        await self.passthrough("v1")

    async def test_v2(self) -> None:
        await self.passthrough("v2")
