"""
End-to-end tests of the live state: L{StateService} over a real
L{PostgresDatabase} and L{NatsEventFeed}, against a throwaway PostgreSQL and
nats-server started by the tests.  Containers are inserted and changed the
way the compute service does it (rows, then an event); the tests also stop
and restart both servers mid-test.  Latency is only checked against a
generous sanity bound here; bench/ measures it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from edd_gateway.routes.model import Route, Target
from edd_gateway.state.model import ContainerDirectory, IngressRule
from edd_gateway.state.events import REFRESHED_SUBJECT
from edd_gateway.state.nats import NatsEventFeed
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.service import StateService
from edd_gateway.testing import as_deferred, poll_until, require_asyncio_reactor
from edd_gateway.testing.nats import ThrowawayNats, start_nats
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres
from edd_gateway.testing.containers import insert_container

FILE_ROUTE = Route(host="www.example.com", path="/", target=Target("127.0.0.1", 9), source="routes.yaml:2")


class LiveTestCase(TestCase):
    def setUp(self) -> None:
        require_asyncio_reactor()

    def start_state(self, server: ThrowawayPostgres, nats: ThrowawayNats | None = None, *,
                    poll_interval: float = 60.0, reconnect_wait: float = 0.2) -> tuple[StateService, list[list[Route]]]:
        database = PostgresDatabase(server.dsn(), reactor, max_reconnect_delay=0.5, connect_timeout=5)
        feed = NatsEventFeed(nats.url, reconnect_wait=reconnect_wait) if nats is not None else None
        routes: list[list[Route]] = []
        service = StateService(database, ContainerDirectory(), reactor, events=feed, on_routes=routes.append,
                               file_routes=[FILE_ROUTE], poll_interval=poll_interval,
                               retry_policy=lambda attempt: 0.2)
        service.startService()
        self.addCleanup(service.stopService)
        return service, routes

    async def ready(self, service: StateService) -> None:
        await poll_until(lambda: service.status().containers_ready, "the first full read")
        if service.events is not None:
            await poll_until(lambda: service.events.connected, "the NATS feed to connect")  # type: ignore[union-attr]

    async def publish(self, client: Any, subject: str, body: dict[str, Any] | None = None) -> None:
        await as_deferred(client.publish(subject, json.dumps(body).encode() if body is not None else b""))
        await as_deferred(client.flush())

    async def servers(self) -> tuple[ThrowawayPostgres, ThrowawayNats, Any]:
        server = await start_postgres(self)
        await server.create_compute_tables()
        nats = await start_nats(self)
        return server, nats, await nats.client()


class EventTests(LiveTestCase):
    async def test_container_lifecycle(self) -> None:
        server, nats, client = await self.servers()
        service, routes = self.start_state(server, nats)
        await self.ready(service)
        directory = service.directory

        await insert_container(server, "web1", ip="127.0.1.7", ports={80: 8080, 8000: 8000})
        published = reactor.seconds()
        await self.publish(client, "compute.container.web1.started", {"container_id": "web1"})
        await poll_until(lambda: directory.get("web1"), "the started container to appear", timeout=5, interval=0.005)
        latency = reactor.seconds() - published
        self.assertLess(latency, 2.0, "event to directory: a sanity bound, not a benchmark")
        web1 = directory.get("web1")
        self.assertEqual((web1.running, web1.external_ip), (True, "127.0.1.7"))
        self.assertEqual(web1.ingress, {80: IngressRule(80, 8080), 8000: IngressRule(8000, 8000)})

        await server.execute("DELETE FROM ingress_rules WHERE container_id = 'web1' AND port = 8000")
        await self.publish(client, "compute.ingress.web1.deleted", {"container_id": "web1", "port": 8000})
        await poll_until(lambda: 8000 not in directory.get("web1").ingress, "the ingress rule to go")
        self.assertEqual(directory.get("web1").ingress, {80: IngressRule(80, 8080)})

        await server.execute("UPDATE containers SET status = 'stopped' WHERE id = 'web1'")
        # No body: the id comes from the subject.
        await self.publish(client, "compute.container.web1.stopped")
        await poll_until(lambda: not directory.get("web1").running, "the container to stop")

        await server.execute("DELETE FROM containers WHERE id = 'web1'")
        await self.publish(client, "compute.container.web1.deleted", {"container_id": "web1"})
        await poll_until(lambda: directory.get("web1") is None, "the container to go")
        self.assertEqual([r.host for r in routes[-1]], ["www.example.com"])

    async def test_junk_is_ignored(self) -> None:
        server, nats, client = await self.servers()
        service, _ = self.start_state(server, nats)
        await self.ready(service)
        await self.publish(client, "compute.container.web2.started", None)
        await as_deferred(client.publish("compute.container.web2.started", b"{not json"))
        await insert_container(server, "web3")
        await self.publish(client, "compute.container.web3.created", {"container_id": "web3"})
        await poll_until(lambda: service.directory.get("web3"), "a valid event after junk")
        self.assertIsNone(service.directory.get("web2"))

    async def test_refreshed_published_after_full_resync(self) -> None:
        server, nats, client = await self.servers()
        await insert_container(server, "one")
        seen: list[dict[str, Any]] = []

        async def refreshed(message: Any) -> None:
            seen.append(json.loads(message.data))

        await as_deferred(client.subscribe(REFRESHED_SUBJECT, cb=refreshed))
        await as_deferred(client.flush())
        service, _ = self.start_state(server, nats)
        await self.ready(service)
        await poll_until(lambda: seen, f"a message on {REFRESHED_SUBJECT}")
        self.assertEqual((seen[-1]["containers"], seen[-1]["running"], seen[-1]["routes"]), (1, 1, 1))

    async def test_rows_others_inserted_are_routed(self) -> None:
        server, nats, _ = await self.servers()
        await server.execute("CREATE TABLE IF NOT EXISTS static_routes (id SERIAL PRIMARY KEY, host TEXT NOT NULL,"
                             " path_prefix TEXT NOT NULL, target TEXT NOT NULL, strip_prefix BOOLEAN NOT NULL"
                             " DEFAULT false, priority INT NOT NULL DEFAULT 0, UNIQUE (host, path_prefix))")
        await server.execute("INSERT INTO static_routes (host, path_prefix, target) VALUES"
                             " ('admin.example.com', '/', '10.1.2.3:8080')")
        service, routes = self.start_state(server, nats)
        await self.ready(service)
        await poll_until(lambda: len(routes[-1]) == 2, "the database's route")
        self.assertEqual([(r.host, str(r.target)) for r in routes[-1]],
                         [("www.example.com", "127.0.0.1:9"), ("admin.example.com", "10.1.2.3:8080")])
        rows = await server.query("SELECT host FROM static_routes ORDER BY id")
        self.assertEqual(rows, [("admin.example.com",), ("www.example.com",)])


class FaultTests(LiveTestCase):
    async def test_postgres_restart_loses_nothing(self) -> None:
        server = await start_postgres(self, dedicated=True)
        await server.create_compute_tables()
        nats = await start_nats(self)
        client = await nats.client()
        await insert_container(server, "before")
        service, _ = self.start_state(server, nats)
        await self.ready(service)
        resyncs = service.status().full_resyncs

        await server.stop()
        self.assertTrue(service.directory.get("before").running, "the last snapshot stays")
        self.assertTrue(service.status().containers_ready)
        await server.start()
        await poll_until(lambda: service.status().full_resyncs > resyncs, "a full resync after the reconnect",
                         timeout=15)
        await poll_until(lambda: service.status().database_connected, "the database to count as connected")

        await insert_container(server, "after")
        await self.publish(client, "compute.container.after.started", {"container_id": "after"})
        await poll_until(lambda: service.directory.get("after"), "an event after the restart")
        self.assertIsNotNone(service.directory.get("before"))

    async def test_postgres_down_at_start(self) -> None:
        server = ThrowawayPostgres()
        self.addCleanup(server.cleanup)
        # Polling: the first read may land between the tables and the row.
        service, routes = self.start_state(server, poll_interval=0.3)
        await poll_until(lambda: service.status().last_error, "the first connection attempt to fail")
        status = service.status()
        self.assertFalse(status.containers_ready)
        self.assertFalse(status.database_connected)
        self.assertEqual(routes[-1], [FILE_ROUTE], "the routes file is served meanwhile")

        await server.start()
        await server.create_compute_tables()
        await insert_container(server, "late")
        await poll_until(lambda: service.status().containers_ready, "the retries to reach the database", timeout=15)
        await poll_until(lambda: service.directory.get("late"), "the container")
        await poll_until(lambda: service.status().database_connected, "the database to count as connected")

    async def test_nats_restart_resyncs(self) -> None:
        server, nats, client = await self.servers()
        service, _ = self.start_state(server, nats, reconnect_wait=1.0)
        await self.ready(service)
        resyncs = service.status().full_resyncs

        await nats.stop()
        await poll_until(lambda: not service.events.connected, "the feed to notice")  # type: ignore[union-attr]
        # A change whose event is lost while NATS is down.
        await insert_container(server, "unheard")
        await nats.start()
        # Subscribed before the gateway's feed retries (it waits reconnect_wait).
        watcher = await nats.client()
        seen: list[dict[str, Any]] = []

        async def refreshed(message: Any) -> None:
            seen.append(json.loads(message.data))

        await as_deferred(watcher.subscribe(REFRESHED_SUBJECT, cb=refreshed))
        await as_deferred(watcher.flush())
        await poll_until(lambda: service.status().full_resyncs > resyncs, "a full resync after NATS reconnected",
                         timeout=15)
        self.assertIsNotNone(service.directory.get("unheard"))
        await poll_until(lambda: seen, f"{REFRESHED_SUBJECT} after the reconnect")
        self.assertEqual(seen[-1]["reason"], "NATS connected")

        await poll_until(lambda: client.is_connected, "the test's own client to reconnect", timeout=15)
        await insert_container(server, "heard")
        await self.publish(client, "compute.container.heard.started", {"container_id": "heard"})
        await poll_until(lambda: service.directory.get("heard"), "an event after the reconnect")

    async def test_nats_down_at_start(self) -> None:
        server = await start_postgres(self)
        await server.create_compute_tables()
        nats = ThrowawayNats()  # its port is chosen; nothing listens there yet
        self.addCleanup(nats.cleanup)
        service, _ = self.start_state(server, nats, poll_interval=0.3)
        await poll_until(lambda: service.status().containers_ready, "the first full read")
        await insert_container(server, "polled")
        await poll_until(lambda: service.directory.get("polled"), "polling while NATS is away")
        self.assertFalse(service.status().events_connected)

        await nats.start()
        await poll_until(lambda: service.status().events_connected, "the feed's first connection", timeout=15)
        client = await nats.client()
        await insert_container(server, "heard")
        await self.publish(client, "compute.container.heard.created", {"container_id": "heard"})
        await poll_until(lambda: service.directory.get("heard"), "an event once NATS is up")

    async def test_stop_while_nats_unreachable(self) -> None:
        server = await start_postgres(self)
        await server.create_compute_tables()
        nats = ThrowawayNats()
        self.addCleanup(nats.cleanup)
        service, _ = self.start_state(server, nats)
        await poll_until(lambda: service.status().containers_ready, "the first full read")
        await service.stopService()
        self.assertFalse(service.status().events_connected)
        self.assertFalse(service.status().database_connected)

    async def test_polling_without_nats(self) -> None:
        server = await start_postgres(self)
        await server.create_compute_tables()
        service, _ = self.start_state(server, poll_interval=0.2)
        await self.ready(service)
        await insert_container(server, "polled")
        await poll_until(lambda: service.directory.get("polled"), "the next poll")
        await server.execute("UPDATE containers SET status = 'stopped' WHERE id = 'polled'")
        await poll_until(lambda: not service.directory.get("polled").running, "the stop to be polled")
