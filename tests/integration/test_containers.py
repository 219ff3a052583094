"""
End-to-end tests of container routing with live state: the real ``twistd
edd-gateway`` against a throwaway PostgreSQL and nats-server started by the
tests.  Containers are simulated by HTTP (and TLS) backends in this process
on their own loopback addresses (127.0.1.x: Linux routes all of 127/8 to
lo), started the way the compute service does it: rows inserted, then an
event.  The gateway's plain listener is mapped to port 80 (C{--port-map}),
one C{--container-ports} listener to 8000 and a second plain listener to 443.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from twisted.internet import reactor, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from edd_gateway.state.events import REFRESHED_SUBJECT
from edd_gateway.testing import (
    BackendServer,
    EchoResource,
    EndToEndMixin,
    GatewayProcess,
    as_deferred,
    echo_header,
    free_port,
    poll_until,
    require_asyncio_reactor,
    require_tool,
    routes_yaml,
    web_factory,
)
from edd_gateway.testing.backends import _TrackingFactory
from edd_gateway.testing.nats import ThrowawayNats, start_nats
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres
from edd_gateway.tls.devcert import self_signed_certificate

DOMAIN = "compute.test"


class MappedGateway(GatewayProcess):
    """The gateway whose C{--listen} port (chosen at start) clients know as port 80."""

    def command(self, args: Sequence[str]) -> list[str]:
        return super().command([*args, "--port-map", f"{self.port}=80"])


class ContainersEndToEndTests(EndToEndMixin, TestCase):
    timeout = 180

    def setUp(self) -> None:
        require_tool("curl")
        require_asyncio_reactor()
        self.container_port = free_port()
        self.tls_port = free_port()

    # Pieces

    def serve_container(self, ip: str, name: str, tls: bool = False) -> BackendServer:
        """An echo backend on C{ip} standing in for one port of a container."""
        resource = EchoResource(name)
        factory: Any = web_factory(resource)
        if tls:
            now = datetime.now(timezone.utc)
            certificate, key = self_signed_certificate([name], now - timedelta(days=1), now + timedelta(days=1))
            options = ssl.CertificateOptions(privateKey=key, certificate=certificate)
            # TLS inside the tracker (listenSSL would put it outside, and the
            # tracker's ALPN delegation then breaks the handshake).
            factory = TLSMemoryBIOFactory(options, False, factory)
        tracker = _TrackingFactory(factory)
        listening = reactor.listenTCP(0, tracker, interface=ip)
        backend = BackendServer(listening, tracker, resource)
        self._stop_at_cleanup(backend)
        return backend

    async def start(self, server: ThrowawayPostgres, nats: ThrowawayNats | None, *extra: str) -> MappedGateway:
        static, _ = self.serve_echo("static")
        gateway = MappedGateway(self.mktemp())
        (gateway.workdir / "routes.yaml").write_text(routes_yaml([
            {"host": f"web1.{DOMAIN}", "path": "/static", "target": static.target},
            {"host": "www.test", "path": "/", "target": static.target},
        ]))
        args = ["--routes", str(gateway.workdir / "routes.yaml"), "--database", server.dsn(),
                "--container-domain", DOMAIN, "--container-ports", str(self.container_port),
                "--port-map", f"{self.container_port}=8000", "--listen", f"tcp:{self.tls_port}:interface=127.0.0.1",
                "--port-map", f"{self.tls_port}=443", "--resync-interval", "0", *extra]
        if nats is not None:
            args += ["--nats", nats.url, "--poll-interval", "3600"]
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        await gateway.start(args)
        self.gateway = gateway
        return gateway

    async def servers(self, dedicated: bool = False) -> tuple[ThrowawayPostgres, ThrowawayNats, Any]:
        server = await start_postgres(self, dedicated=dedicated)
        await server.create_compute_tables()
        nats = await start_nats(self)
        return server, nats, await nats.client()

    async def started_and_refreshed(self, server: ThrowawayPostgres, nats: ThrowawayNats, client: Any) -> None:
        """The gateway, once it has read everything with NATS up (so later events are heard)."""
        refreshed: list[bytes] = []

        async def heard(message: Any) -> None:
            refreshed.append(message.data)

        await as_deferred(client.subscribe(REFRESHED_SUBJECT, cb=heard))
        await as_deferred(client.flush())
        await self.start(server, nats)
        await poll_until(lambda: refreshed, f"the gateway to publish {REFRESHED_SUBJECT}", timeout=30)

    async def insert(self, server: ThrowawayPostgres, cid: str, ip: str, rules: dict[int, int],
                     status: str = "running") -> None:
        await server.execute("INSERT INTO containers (id, user_id, name, namespace, status, external_ip)"
                             " VALUES (%s, 'u1', %s, %s, %s, %s)", (cid, cid, f"compute-u1-{cid}", status, ip))
        for port, target in rules.items():
            await server.execute("INSERT INTO ingress_rules (container_id, port, target_port) VALUES (%s, %s, %s)",
                                 (cid, port, target))

    async def publish(self, client: Any, subject: str, cid: str) -> None:
        await as_deferred(client.publish(subject, json.dumps({"container_id": cid}).encode()))
        await as_deferred(client.flush())

    async def get(self, host: str, port: int | None = None, path: str = "/hello", https: bool = False) -> Any:
        port = port or self.gateway.port
        if https:
            return await self.curl(f"https://{host}:{port}{path}", "-k", "--resolve", f"{host}:{port}:127.0.0.1")
        return await self.curl(f"http://127.0.0.1:{port}{path}", "-H", f"Host: {host}")

    async def eventually(self, host: str, status: int, text: str, port: int | None = None, timeout: float = 20,
                         https: bool = False) -> Any:
        """Poll until C{host} answers C{status} with C{text} in the body (the backend's name, or a page)."""
        last: list[Any] = []

        async def check() -> bool:
            response = await self.get(host, port, https=https)
            last[:] = [response]
            return response.status == status and text in response.text

        try:
            await poll_until(check, f"{host} to answer {status} {text!r}", timeout=timeout, interval=0.02)
        except AssertionError as problem:
            raise AssertionError(f"{problem}; last: {last[0].describe() if last else None}") from None
        return last[0]

    # Tests

    async def test_container_lifecycle(self) -> None:
        server, nats, client = await self.servers()
        await self.started_and_refreshed(server, nats, client)
        host = f"web1.{DOMAIN}"
        unknown = await self.get(host)
        self.assertEqual((unknown.status, unknown.text.count("no container web1")), (503, 1), unknown.describe())

        on_80 = self.serve_container("127.0.1.11", "web1-80")
        on_8000 = self.serve_container("127.0.1.11", "web1-8000")
        on_443 = self.serve_container("127.0.1.11", "web1-tls", tls=True)
        await self.insert(server, "web1", "127.0.1.11", {80: on_80.port, 8000: on_8000.port, 443: on_443.port})
        await self.publish(client, "compute.container.web1.started", "web1")
        response = await self.eventually(host, 200, "web1-80")
        self.assertEqual(response.json()["path"], "/hello")
        await self.eventually(host, 200, "web1-8000", port=self.container_port, timeout=2)
        # No certificate covers web1.compute.test: the TLS goes through to the container as is.
        await self.eventually(host, 200, "web1-tls", port=self.tls_port, https=True, timeout=2)
        static = await self.get(host, path="/static/x")
        self.assertEqual(static.header("X-Backend"), "static", "a static route keeps priority")

        await server.execute("DELETE FROM ingress_rules WHERE container_id = 'web1' AND port = 8000")
        await self.publish(client, "compute.ingress.web1.deleted", "web1")
        await self.eventually(host, 502, "no ingress rule for this port", port=self.container_port)
        await self.eventually(host, 200, "web1-80", timeout=2)

        await server.execute("UPDATE containers SET status = 'stopped' WHERE id = 'web1'")
        await self.publish(client, "compute.container.web1.stopped", "web1")
        await self.eventually(host, 503, "container web1 is stopped")

        await server.execute("DELETE FROM containers WHERE id = 'web1'")
        await self.publish(client, "compute.container.web1.deleted", "web1")
        await self.eventually(host, 503, "no container web1")
        self.assertEqual(echo_header(on_80.app.requests[-1], "host"), [host])

    async def test_restarting_postgres_and_nats_loses_nothing(self) -> None:
        server, nats, client = await self.servers(dedicated=True)
        await self.started_and_refreshed(server, nats, client)
        web1 = self.serve_container("127.0.1.21", "web1")
        await self.insert(server, "web1", "127.0.1.21", {80: web1.port})
        await self.publish(client, "compute.container.web1.started", "web1")
        await self.eventually(f"web1.{DOMAIN}", 200, "web1")

        await server.stop()
        await self.eventually(f"web1.{DOMAIN}", 200, "web1", timeout=2)  # the last snapshot is served
        await server.start()
        web2 = self.serve_container("127.0.1.22", "web2")
        await self.insert(server, "web2", "127.0.1.22", {80: web2.port})
        await self.publish(client, "compute.container.web2.started", "web2")
        await self.eventually(f"web2.{DOMAIN}", 200, "web2", timeout=30)

        await nats.stop()
        # Started while NATS is away: no event reaches the gateway; the
        # resync after it reconnects finds the container.
        web3 = self.serve_container("127.0.1.23", "web3")
        await self.insert(server, "web3", "127.0.1.23", {80: web3.port})
        await server.execute("UPDATE containers SET status = 'stopped' WHERE id = 'web2'")
        await nats.start()
        await self.eventually(f"web3.{DOMAIN}", 200, "web3", timeout=30)
        await self.eventually(f"web2.{DOMAIN}", 503, "container web2 is stopped", timeout=2)
        await poll_until(lambda: client.is_connected, "the test's NATS client to reconnect", timeout=15)
        web4 = self.serve_container("127.0.1.24", "web4")
        await self.insert(server, "web4", "127.0.1.24", {80: web4.port})
        await self.publish(client, "compute.container.web4.started", "web4")
        await self.eventually(f"web4.{DOMAIN}", 200, "web4")
        await self.eventually(f"web1.{DOMAIN}", 200, "web1", timeout=2)

    async def test_postgres_down_at_start(self) -> None:
        server = ThrowawayPostgres()
        self.addCleanup(server.cleanup)
        await self.start(server, None, "--poll-interval", "0.3")
        www = await self.get("www.test")
        self.assertEqual(www.status, 200, "the routes file is served while the database is down")
        waiting = await self.get(f"web1.{DOMAIN}")
        self.assertEqual(waiting.status, 503)
        self.assertIn("still loading the containers", waiting.text)

        await server.start()
        await server.create_compute_tables()
        web1 = self.serve_container("127.0.1.31", "web1")
        await self.insert(server, "web1", "127.0.1.31", {80: web1.port})
        # Retries back off (1 s, 2 s, 4 s, ... jittered): no event is needed.
        await self.eventually(f"web1.{DOMAIN}", 200, "web1", timeout=40)
        rows = await server.query("SELECT host, path_prefix FROM static_routes ORDER BY host")
        self.assertEqual(rows, [(f"web1.{DOMAIN}", "/static"), ("www.test", "/")])
