"""
Raw TCP on container ports, end to end: the real ``twistd edd-gateway``
with a containers file and two ``--container-ports`` listeners; a client
speaking neither TLS, HTTP nor SSH, and one that waits for the server to
speak first, reach the one container with an ingress rule for the port.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from twisted.internet import protocol, reactor
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, GatewayProcess, free_port, poll_until

DOMAIN = "compute.test"


def _three_free_ports() -> int:
    """A port P with P, P+1 and P+2 free on loopback (--container-ports takes a range)."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for port in (base, base + 1, base + 2):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise AssertionError("no three consecutive free ports")


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)  # type: ignore[union-attr]


class _Banner(protocol.Protocol):
    """A server that speaks first (SMTP, MySQL, an sshd)."""

    def connectionMade(self) -> None:
        self.transport.write(b"220 container ready\r\n")  # type: ignore[union-attr]


class RawTCPTests(EndToEndMixin, TestCase):
    timeout = 60

    def listen(self, kind: type[protocol.Protocol]) -> int:
        factory = protocol.Factory.forProtocol(kind)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def start(self) -> tuple[GatewayProcess, int, int, int]:
        echo_port, banner_port = self.listen(_Echo), self.listen(_Banner)
        echo_public = _three_free_ports()
        banner_public, shared_public = echo_public + 1, echo_public + 2
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        containers = [
            {"id": "db1", "user_id": "u", "external_ip": "127.0.0.1",
             "ingress": [{"port": echo_public, "target_port": echo_port},
                         {"port": shared_public, "target_port": echo_port}]},
            {"id": "mail1", "user_id": "u", "external_ip": "127.0.0.1",
             "ingress": [{"port": banner_public, "target_port": banner_port},
                         {"port": shared_public, "target_port": banner_port}]},
        ]
        (work / "containers.yaml").write_text(json.dumps({"containers": containers}))
        gateway = GatewayProcess(str(work / "gateway"))
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        args = ["--containers", str(work / "containers.yaml"), "--container-domain", DOMAIN, "--sniff-timeout", "0.5"]
        args += ["--container-ports", f"{echo_public}-{shared_public}"]
        await gateway.start(args)
        return gateway, echo_public, banner_public, shared_public

    async def exchange(self, port: int, send: bytes, expect: bytes) -> bytes:
        connection = await self.raw(port)
        if send:
            connection.send(send)
        await poll_until(lambda: expect in connection.received, f"{expect!r} on port {port}", 10)
        connection.close()
        return bytes(connection.received)

    async def test_unknown_protocol_and_server_first_protocol_reach_the_ports_container(self) -> None:
        gateway, echo_public, banner_public, shared_public = await self.start()
        got = await self.exchange(echo_public, b"\x00\x01binary hello", b"echo:\x00\x01binary hello")
        self.assertEqual(got, b"echo:\x00\x01binary hello")
        # Silent client: after the sniff timeout the container speaks first.
        got = await self.exchange(banner_public, b"", b"220 container ready\r\n")
        self.assertEqual(got, b"220 container ready\r\n")
        # A port two containers share cannot be told apart without a name.
        connection = await self.raw(shared_public)
        connection.send(b"hello")
        await connection.read_until_closed()
        self.assertIn("belongs to several containers", gateway.log_text())
        # HTTP on a container port is still routed by Host.
        response = await self.curl(f"http://127.0.0.1:{echo_public}/", "-H", f"Host: nobody.{DOMAIN}")
        self.assertEqual(response.status, 503, response.describe())

        async def tunnels_reported() -> bool:
            scrape = await self.curl(gateway.admin_url("/metrics"))
            return 'edd_gateway_tunnels_total{kind="tcp"} 2.0' in scrape.text and 'protocol="TCP"' in scrape.text

        await poll_until(tunnels_reported, "both raw tunnels in the metrics", 10)
