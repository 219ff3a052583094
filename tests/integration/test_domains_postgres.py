"""
The custom domains against a throwaway PostgreSQL: the tables created with
the gateway's own (twice: idempotent), the conformance suite of
L{PostgresDomains} (L{tests._support.domains}), and the domains' change feed
announcing a committed change.
"""

from __future__ import annotations

import io

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from edd_gateway.__main__ import main
from edd_gateway.domains.model import CustomDomain
from edd_gateway.domains.source import DOMAINS_FEED, DomainSource, PostgresDomains
from edd_gateway.state.changefeed import ChangeFeedListener
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.triggers import Change
from edd_gateway.testing import poll_until
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres
from tests._support.domains import DomainSourceTestsMixin


async def insert_domain(server: ThrowawayPostgres, item: CustomDomain) -> None:
    await server.execute(
        "INSERT INTO custom_domains (id, user_id, container_id, domain, target_port, verify_token, status)"
        " VALUES (%s, %s, %s, %s, %s, 'token', %s)",
        (item.id, item.user_id, item.container_id, item.domain, item.target_port, item.status))
    if not item.redirect_https:
        await server.execute("INSERT INTO gateway_domain_settings (domain, redirect_https) VALUES (%s, false)",
                             (item.domain,))


class PostgresDomainsTests(DomainSourceTestsMixin, TestCase):
    async def make_source(self) -> DomainSource:
        self.server = await start_postgres(self)
        database = PostgresDatabase(self.server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        await database.connect()  # a second time: every statement is idempotent
        self.database = database
        return PostgresDomains(database)

    async def put(self, source: DomainSource, item: CustomDomain) -> None:
        await insert_domain(self.server, item)

    async def drop(self, source: DomainSource, name: str) -> None:
        await self.server.execute("DELETE FROM custom_domains WHERE domain = %s", (name,))

    async def test_feed(self) -> None:
        await self.make_source()
        listener = ChangeFeedListener(self.server.dsn(), reactor, feed=DOMAINS_FEED)
        changes: list[Change] = []
        listening: list[int] = []
        listener.bind(changes.append, lambda: listening.append(1), lambda reason: None)
        self.addCleanup(listener.stop)
        await listener.start()
        self.assertEqual((listening, listener.state), ([1], "listening"))
        await self.server.execute("UPDATE custom_domains SET status = 'active'")
        await poll_until(lambda: changes, "the notification of the update")
        self.assertTrue(changes[0].full_resync)


class ExplainTests(TestCase):
    async def test_explain_reads_the_database(self) -> None:
        server = await start_postgres(self)
        await server.create_compute_tables()
        database = PostgresDatabase(server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        await server.execute("INSERT INTO containers (id, user_id, name, namespace, status, external_ip) VALUES "
                             "('web1', 'u1', 'n', 'ns', 'running', '10.0.0.5')")
        await insert_domain(server, CustomDomain("d1", "u1", "web1", "app.example.test", 8080, "active"))
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(main, ["explain", "--database", server.dsn(), "http://app.example.test/x"],
                                   out, err)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("requests go to 10.0.0.5:8080", out.getvalue())
        code = await deferToThread(main, ["explain", "--database", server.dsn(), "http://nope.example.test/"],
                                   out, err)
        self.assertEqual(code, 3)
