"""
Tests for L{edd_gateway.domains}: the rows read into domains, what is
served (status and container), the feed over a memory source and a memory
change feed, and HTTP routing by Host (plain, redirect, HTTP-01 answers).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.domains.model import DomainDirectory, DomainLookup, DomainSnapshot
from edd_gateway.domains.router import DomainRouter
from edd_gateway.domains.rows import domains_from_rows, normalize_domain
from edd_gateway.domains.service import DomainsService
from edd_gateway.domains.source import DOMAINS_FEED
from edd_gateway.domains.testing import MemoryDomains, domain
from edd_gateway.http.errors import GatewayError
from edd_gateway.routes.containers import ContainerAddressing, ContainerRouter
from edd_gateway.state.memory import MemoryChangeFeed
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot, IngressRule


def containers(*items: Container) -> ContainerDirectory:
    return ContainerDirectory(ContainerSnapshot({c.id: c for c in items}, ready=True))


WEB1 = Container("web1", "u1", "running", external_ip="10.0.0.5", ingress={80: IngressRule(80, 8000)})


class RowsTests(SynchronousTestCase):
    def test_rows(self) -> None:
        found, problems = domains_from_rows([
            ("1", "u1", "web1", "App.Example.ORG.", 8080, "Active", None),
            ("2", "u1", "web1", "not a name", 80, "active", True),
            ("3", "u1", "web1", "b.example.org", 0, "active", True),
            ("4", "u1", "web1", "app.example.org", 81, "active", True),
            ("5", "u2", "web2", "c.example.org", 81, "pending", False),
        ])
        self.assertEqual(found["app.example.org"], domain("app.example.org", target_port=8080, row_id="1"))
        self.assertFalse(found["c.example.org"].redirect_https)
        self.assertEqual(len(problems), 3)
        self.assertIn("custom_domains id 2", problems[0])

    def test_normalize(self) -> None:
        self.assertIsNone(normalize_domain("localhost"))
        self.assertIsNone(normalize_domain("*.example.org"))
        self.assertIsNone(normalize_domain("10.0.0.1"))
        self.assertEqual(normalize_domain("A.B.c"), "a.b.c")


class LookupTests(SynchronousTestCase):
    def lookup(self, *items: Any, running: bool = True) -> DomainLookup:
        directory = DomainDirectory(DomainSnapshot({d.domain: d for d in items}, ready=True))
        container = WEB1 if running else Container("web1", "u1", "stopped")
        return DomainLookup(directory, containers(container))

    def test_served_statuses(self) -> None:
        lookup = self.lookup(domain("a.example.test"), domain("b.example.test", status="verified"),
                             domain("c.example.test", status="pending"), domain("d.example.test", status="failed"))
        self.assertEqual(lookup.served_names(), ["a.example.test", "b.example.test"])
        served = lookup.served("a.example.test")
        assert served is not None
        self.assertEqual(served.container.id, "web1")

    def test_stopped_container(self) -> None:
        lookup = self.lookup(domain("a.example.test"), running=False)
        self.assertIsNone(lookup.served("a.example.test"))
        self.assertEqual(lookup.served_names(), [])

    def test_unknown_container(self) -> None:
        lookup = self.lookup(domain("a.example.test", container_id="gone"))
        self.assertIsNone(lookup.served("a.example.test"))

    def test_observe_both(self) -> None:
        lookup = self.lookup()
        seen: list[int] = []
        lookup.observe(lambda: seen.append(1))
        lookup.domains.swap(DomainSnapshot({}, True))
        lookup.containers.swap(ContainerSnapshot({}, True))
        self.assertEqual(len(seen), 2)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = MemoryDomains(domain("a.example.test"))
        self.directory = DomainDirectory()
        self.changes = MemoryChangeFeed()

    def start(self, changes: Any = None) -> DomainsService:
        service = DomainsService(self.source, self.directory, self.clock, changes=changes, poll_interval=5,
                                 resync_interval=30)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_reads_at_start(self) -> None:
        self.start()
        self.assertTrue(self.directory.current.ready)
        self.assertEqual(list(self.directory.current.domains), ["a.example.test"])

    def test_polls_without_feed(self) -> None:
        self.start()
        self.source.put(domain("b.example.test"))
        self.clock.advance(5)
        self.assertIn("b.example.test", self.directory.current.domains)

    def test_notification_reads(self) -> None:
        service = self.start(self.changes)
        reads = service.reads
        self.source.put(domain("b.example.test"))
        self.changes.notify("custom_domains")
        self.assertIn("b.example.test", self.directory.current.domains)
        self.assertGreater(service.reads, reads)
        # With the feed listening, the 5 s tick reads only every 30 s.
        reads = service.reads
        self.clock.advance(5)
        self.assertEqual(service.reads, reads)
        self.clock.pump([5] * 6)
        self.assertEqual(service.reads, reads + 1)

    def test_challenge_notifications(self) -> None:
        calls: list[int] = []
        service = DomainsService(self.source, self.directory, self.clock, changes=self.changes,
                                 on_challenges=lambda: calls.append(1))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(calls, [1], "read when the feed starts listening")
        reads = self.source.reads
        # The domains feed's payloads are table names, parsed by its own FeedSpec.
        self.changes.deliver(DOMAINS_FEED.parse("gateway_acme_challenges"))
        self.assertEqual((calls, self.source.reads), ([1, 1], reads))
        self.changes.deliver(DOMAINS_FEED.parse("custom_domains"))
        self.assertEqual((calls, self.source.reads), ([1, 1], reads + 1))

    def test_failed_read_keeps_snapshot(self) -> None:
        service = self.start()
        self.source.down = True
        self.source.remove("a.example.test")
        self.clock.advance(5)
        self.assertIn("a.example.test", self.directory.current.domains)
        self.assertIsNotNone(service.last_error)
        self.source.down = False
        self.clock.advance(5)
        self.assertEqual(dict(self.directory.current.domains), {})
        self.assertIsNone(service.last_error)


class FakeCertificates:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.tokens: dict[tuple[str, str], str] = {}

    def has_certificate(self, name: str) -> bool:
        return name in self.names

    def http01_answer(self, name: str, token: str) -> str | None:
        return self.tokens.get((name, token))


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.containers = containers(WEB1)
        self.domains = DomainDirectory(DomainSnapshot({"app.example.test": domain()}, ready=True))
        self.certificates = FakeCertificates()
        fallback = ContainerRouter(self.containers, "containers.test")
        self.router = DomainRouter(DomainLookup(self.domains, self.containers), ContainerAddressing(),
                                   certificates=self.certificates, fallback=fallback)
        self.transport = StringTransport()

    def test_plain(self) -> None:
        match = self.router.http_match("app.example.test", "/x", self.transport)
        assert match is not None
        self.assertEqual((match.route.target.host, match.route.target.port), ("10.0.0.5", 8080))
        self.assertFalse(match.route.redirect_https)
        self.assertEqual(match.upstream_path, "/x")

    def test_redirect_once_certified(self) -> None:
        self.certificates.names.add("app.example.test")
        match = self.router.http_match("app.example.test", "/x", self.transport)
        assert match is not None
        self.assertTrue(match.route.redirect_https)
        self.domains.swap(DomainSnapshot({"app.example.test": domain(redirect_https=False)}, True))
        match = self.router.http_match("app.example.test", "/x", self.transport)
        assert match is not None
        self.assertFalse(match.route.redirect_https)

    def test_challenge(self) -> None:
        self.certificates.names.add("app.example.test")
        self.certificates.tokens[("app.example.test", "tok")] = "tok.thumb"
        match = self.router.http_match("app.example.test", "/.well-known/acme-challenge/tok", self.transport)
        assert match is not None
        self.assertEqual((match.route.target.internal, match.route.target.host), ("acme-http-01", "tok.thumb"))
        self.assertEqual(str(match.route.target), "internal:acme-http-01")
        other = self.router.http_match("app.example.test", "/.well-known/acme-challenge/zz", self.transport)
        assert other is not None
        self.assertFalse(other.route.redirect_https)
        self.assertEqual(other.route.target.port, 8080)

    def test_not_served_falls_back(self) -> None:
        self.assertIsNone(self.router.http_match("other.example.test", "/", self.transport))
        with self.assertRaises(GatewayError):
            self.router.http_match("nope.containers.test", "/", self.transport)
        self.assertTrue(self.router.under_domain("web1.containers.test"))
        self.assertTrue(self.router.under_domain("app.example.test"))
        self.assertFalse(self.router.under_domain("other.example.test"))
        self.containers.replace("web1", Container("web1", "u1", "stopped"))
        self.assertIsNone(self.router.http_match("app.example.test", "/", self.transport))

    def test_no_address(self) -> None:
        self.containers.replace("web1", Container("web1", "u1", "running"))
        with self.assertRaises(GatewayError) as raised:
            self.router.http_match("app.example.test", "/", self.transport)
        self.assertEqual(raised.exception.status, 503)


class FeedAppearsTests(SynchronousTestCase):
    def test_triggers_looked_for_at_each_poll(self) -> None:
        clock, changes = Clock(), MemoryChangeFeed(installed=False)
        calls: list[int] = []
        service = DomainsService(MemoryDomains(), DomainDirectory(), clock, changes=changes, poll_interval=5,
                                 on_challenges=lambda: calls.append(1))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertFalse(changes.listening)
        polled = len(calls)
        changes.installed = True
        clock.advance(5)
        self.assertTrue(changes.listening)
        self.assertGreater(len(calls), polled)
