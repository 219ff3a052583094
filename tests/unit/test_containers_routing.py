"""
Tests for container routing: the pure decision (L{edd_gateway.routes.containers}),
the command line values it parses, and its use by the HTTP side (a request
proxied to the container, or 503/502 pages) and by the TLS side (SNI passed
through to the container unless a certificate covers the name), on memory
transports and a memory reactor.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes import containers as containers_module
from edd_gateway.routes.containers import (
    NO_INGRESS,
    NOT_READY,
    ContainerAddressing,
    ContainerBackend,
    ContainerRefused,
    ContainerRouter,
    container_id_for,
    decide,
    normalize_container_domain,
    parse_port_map,
    parse_port_range,
)
from edd_gateway.http.testing import ProxyHarness, backend_route
from edd_gateway.routes.model import Target
from edd_gateway.routes.table import RouteTable
from edd_gateway.state.model import Container, ContainerDirectory, IngressRule
from edd_gateway.tls.store import CertificateStore
from edd_gateway.testing.containers import DOMAIN, snapshot, web
from edd_gateway.tls.testing import HandoverTransport, MemoryClient, passthrough_route, quiet_logger, write_pair
from tests._support.tls import ListenerCase

class HostTests(SynchronousTestCase):
    def test_one_label_before_the_domain(self) -> None:
        self.assertEqual(container_id_for(f"web1.{DOMAIN}", DOMAIN), "web1")
        self.assertEqual(container_id_for(f"a-9.{DOMAIN}", DOMAIN), "a-9")

    def test_other_hosts(self) -> None:
        for host in (DOMAIN, f"a.b.{DOMAIN}", f"xweb1{DOMAIN}", "web1.cloud.test", f"-a.{DOMAIN}", f".{DOMAIN}",
                     f"{'a' * 64}.{DOMAIN}", f"web1.{DOMAIN}.evil.test"):
            self.assertIsNone(container_id_for(host, DOMAIN), host)

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", max_size=80))
    def test_a_named_container_is_exactly_the_first_label(self, host: str) -> None:
        found = container_id_for(host, DOMAIN)
        if found is not None:
            self.assertEqual(f"{found}.{DOMAIN}", host)
            self.assertNotIn(".", found)

    def test_domain_normalised(self) -> None:
        self.assertEqual(normalize_container_domain(" Compute.Cloud.Test. "), DOMAIN)
        for bad in ("localhost", "1.2.3.4", "::1", "a..b", "bad_name.test", ""):
            with self.assertRaises(ValueError, msg=bad):
                normalize_container_domain(bad)


class DecisionTests(SynchronousTestCase):
    def test_running_container_with_a_rule(self) -> None:
        decision = decide(snapshot(web()), "web1", 8000)
        self.assertEqual(decision, ContainerBackend(web(), IngressRule(8000, 9000), 8000, Target("127.0.1.7", 9000)))
        route = decision.route(f"web1.{DOMAIN}")  # type: ignore[union-attr]
        self.assertEqual((route.host, route.path, str(route.target), route.tls_passthrough),
                         (f"web1.{DOMAIN}", "/", "127.0.1.7:9000", False))
        self.assertEqual(route.source, "container web1 port 8000")

    def test_port_without_a_rule_is_502(self) -> None:
        self.assertEqual(decide(snapshot(web()), "web1", 443), ContainerRefused(502, NO_INGRESS))
        self.assertEqual(decide(snapshot(web()), "web1", None), ContainerRefused(502, NO_INGRESS))

    def test_unknown_stopped_and_unaddressed_are_503(self) -> None:
        state = snapshot(web("stop1", "stopped"), web("odd1", "<b>weird</b>"), web("noip", ip=None))
        self.assertEqual(decide(state, "nope", 80), ContainerRefused(503, "no container nope"))
        self.assertEqual(decide(state, "stop1", 80), ContainerRefused(503, "container stop1 is stopped"))
        self.assertEqual(decide(state, "odd1", 80), ContainerRefused(503, "container odd1 is not running"))
        self.assertEqual(decide(state, "noip", 80), ContainerRefused(503, "container noip has no address yet"))

    def test_not_loaded_yet(self) -> None:
        self.assertEqual(decide(snapshot(ready=False), "web1", 80), ContainerRefused(503, NOT_READY))
        # A container already known is served while a source is still loading.
        self.assertIsInstance(decide(snapshot(web(), ready=False), "web1", 80), ContainerBackend)


class CommandLineValueTests(SynchronousTestCase):
    def test_port_map(self) -> None:
        self.assertEqual(parse_port_map(["8080=80", " 8443 = 443 ", "8080=80"]), {8080: 80, 8443: 443})
        for bad in (["8080"], ["8080=0"], ["x=80"], ["8080=80", "8080=81"], ["70000=80"]):
            with self.assertRaises(ValueError, msg=bad):
                parse_port_map(bad)

    def test_port_range(self) -> None:
        self.assertEqual(parse_port_range("8000-8999"), range(8000, 9000))
        self.assertEqual(parse_port_range("8080"), range(8080, 8081))
        for bad in ("9-8", "0-10", "8000-", "a-b", "1-65536"):
            with self.assertRaises(ValueError, msg=bad):
                parse_port_range(bad)


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = ContainerDirectory(snapshot(web()))
        self.router = ContainerRouter(self.directory, "Compute.Cloud.Test.", {18080: 80})

    def transport(self, port: int) -> StringTransport:
        return StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", port))

    def test_external_port_is_the_listener_port_mapped(self) -> None:
        self.assertEqual(self.router.external_port(self.transport(18080)), 80)
        self.assertEqual(self.router.external_port(self.transport(8000)), 8000)
        self.assertIsNone(self.router.external_port(StringTransport(hostAddress=UNIXAddress("/x"))))

    def test_reads_the_directory_at_each_decision(self) -> None:
        host = f"web1.{DOMAIN}"
        self.assertIsInstance(self.router.route(host, self.transport(18080)), ContainerBackend)
        self.directory.swap(snapshot(web(status="stopped")))
        self.assertEqual(self.router.route(host, self.transport(18080)),
                         ContainerRefused(503, "container web1 is stopped"))
        self.assertIsNone(self.router.route("www.cloud.test", self.transport(18080)))


class PortOwnerTests(SynchronousTestCase):
    """Raw TCP names no container: the port's one container takes it."""

    def setUp(self) -> None:
        self.directory = ContainerDirectory(snapshot(
            web("db1", rules={8001: 5432, 8003: 1}), web("mail1", rules={8002: 25, 8003: 2}),
            web("old", status="stopped", rules={8002: 26, 8004: 3}),
        ))
        self.router = ContainerRouter(self.directory, DOMAIN)

    def test_the_one_running_owner(self) -> None:
        decision = self.router.port_owner(8001)
        assert isinstance(decision, ContainerBackend)
        self.assertEqual((decision.container.id, decision.target), ("db1", Target("127.0.1.7", 5432)))
        owner = self.router.port_owner(8002)
        assert isinstance(owner, ContainerBackend)
        self.assertEqual(owner.container.id, "mail1", "the running one of a running and a stopped owner")

    def test_refusals(self) -> None:
        self.assertEqual(self.router.port_owner(8004), ContainerRefused(503, "container old is stopped"))
        self.assertIn("several containers", self.router.port_owner(8003).reason)  # type: ignore[union-attr]
        self.assertEqual(self.router.port_owner(8005),
                         ContainerRefused(502, "no container has an ingress rule for port 8005"))
        self.directory.swap(snapshot(ready=False))
        self.assertEqual(self.router.port_owner(8001), ContainerRefused(503, NOT_READY))

    def test_follows_the_directory(self) -> None:
        self.assertIsInstance(self.router.port_owner(8001), ContainerBackend)
        self.directory.swap(snapshot(web("db2", rules={8001: 6543})))
        decision = self.router.port_owner(8001)
        assert isinstance(decision, ContainerBackend)
        self.assertEqual(decision.container.id, "db2")


class HTTPMatchCacheTests(SynchronousTestCase):
    """The HTTP side's decisions are kept per (container, port) until the next swap, and bounded."""

    def setUp(self) -> None:
        self.directory = ContainerDirectory(snapshot(web(), web("web2"), web("web3")))
        self.router = ContainerRouter(self.directory, DOMAIN)
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 80))

    def test_same_route_until_a_swap(self) -> None:
        first = self.router.http_match(f"web1.{DOMAIN}", "/a", self.transport)
        second = self.router.http_match(f"web1.{DOMAIN}", "/b", self.transport)
        assert first is not None and second is not None
        self.assertIs(first.route, second.route)
        self.assertEqual((first.upstream_path, second.upstream_path), ("/a", "/b"))
        self.directory.replace("web2", None)
        third = self.router.http_match(f"web1.{DOMAIN}", "/a", self.transport)
        self.assertIsNot(third.route, first.route)  # type: ignore[union-attr]

    def test_unknown_containers_are_not_kept(self) -> None:
        from edd_gateway.http.errors import GatewayError

        for index in range(5):
            with self.assertRaises(GatewayError):
                self.router.http_match(f"nope{index}.{DOMAIN}", "/", self.transport)
        self.assertEqual((self.router._http, self.router._http_size), ({}, 0))

    def test_bounded(self) -> None:
        self.patch(containers_module, "HTTP_CACHE_SIZE", 2)
        for cid in ("web1", "web2", "web3"):
            self.router.http_match(f"{cid}.{DOMAIN}", "/", self.transport)
            self.assertLessEqual(sum(map(len, self.router._http.values())), 2)


class HTTPTests(SynchronousTestCase):
    """Requests for container hosts through the proxy, on memory transports."""

    def setUp(self) -> None:
        self.directory = ContainerDirectory(snapshot(web(), web("stop1", "stopped")))
        static = backend_route(f"web1.{DOMAIN}", "/static", "10.9.9.9:80")
        self.harness = ProxyHarness([static])
        self.harness.factory.containers = ContainerRouter(self.directory, DOMAIN, {18080: 80})

    def request(self, host: str, path: str = "/x?y=1", port: int = 18080) -> Any:
        client = self.harness.connect_client()
        client.transport.hostAddr = IPv4Address("TCP", "127.0.0.1", port)
        client.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return client

    def test_proxied_to_the_rule_for_the_mapped_port(self) -> None:
        self.request(f"WEB1.{DOMAIN}:80")
        backend = self.harness.accept()
        self.assertEqual((backend.host, backend.port), ("127.0.1.7", 8080))
        self.assertTrue(backend.received().startswith(b"GET /x?y=1 HTTP/1.1\r\n"), backend.received()[:60])

    def test_unmapped_port_selects_its_own_rule(self) -> None:
        self.request(f"web1.{DOMAIN}", port=8000)
        backend = self.harness.accept()
        self.assertEqual((backend.host, backend.port), ("127.0.1.7", 9000))

    def test_static_routes_keep_priority(self) -> None:
        self.request(f"web1.{DOMAIN}", "/static/a")
        backend = self.harness.accept()
        self.assertEqual((backend.host, backend.port), ("10.9.9.9", 80))

    def test_stopped_unknown_and_no_rule(self) -> None:
        cases = [(f"stop1.{DOMAIN}", 18080, 503, b"container stop1 is stopped"),
                 (f"gone1.{DOMAIN}", 18080, 503, b"no container gone1"),
                 (f"web1.{DOMAIN}", 8443, 502, b"no ingress rule for this port")]
        for host, port, status, text in cases:
            [response] = self.request(host, port=port).responses()
            self.assertEqual(response.status, status, host)
            self.assertIn(text, response.body)
        self.assertEqual(self.harness.connect_attempts, 0)

    def test_container_hosts_stay_out_of_the_lru(self) -> None:
        self.request(f"web1.{DOMAIN}")
        self.request(f"nope.{DOMAIN}")
        self.assertEqual(self.harness.routes.cached_entries, 0)
        self.request("elsewhere.test")
        self.assertEqual(self.harness.routes.cached_entries, 1)

    def test_other_hosts_still_404(self) -> None:
        [response] = self.request("elsewhere.test").responses()
        self.assertEqual(response.status, 404)

    def test_nothing_outlives_a_directory_swap(self) -> None:
        self.request(f"web1.{DOMAIN}")
        self.harness.accept()
        moved = web(ip="127.0.1.8", rules={80: 8081})
        self.directory.swap(snapshot(moved))
        self.request(f"web1.{DOMAIN}")
        backend = self.harness.accept()
        self.assertEqual((backend.host, backend.port), ("127.0.1.8", 8081))


class TLSTests(ListenerCase):
    """SNI naming a container, on the TLS listener's memory transports."""

    def setUp(self) -> None:
        super().setUp()
        self.directory = ContainerDirectory(snapshot(web(rules={443: 8443}), web("stop1", "stopped")))
        self.factory.containers = ContainerRouter(self.directory, DOMAIN, {18443: 443})

    def hello(self, name: bytes, port: int = 18443) -> Any:
        _, transport = self.connect()
        transport.hostAddr = IPv4Address("TCP", "127.0.0.1", port)
        transport.protocol.dataReceived(MemoryClient(name).feed(b""))
        return transport

    def test_passed_through_to_the_container_rule_for_the_port(self) -> None:
        with capturedLogs() as events:
            self.hello(b"web1." + DOMAIN.encode())
            backend = self.complete_backend()
        [(host, port, _, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.1.7", 8443))
        self.assertTrue(backend.value().startswith(b"\x16\x03"), "the ClientHello is replayed")
        self.assertTrue(any("container web1 port 443" in formatEvent(e) for e in events))

    def test_refused_with_an_alert_and_a_log_line(self) -> None:
        for name, text in ((b"stop1." + DOMAIN.encode(), "container stop1 is stopped"),
                           (b"nope." + DOMAIN.encode(), "no container nope")):
            with capturedLogs() as events:
                transport = self.hello(name)
            self.assertFalse(transport.connected)
            self.assertEqual(transport.value(), b"\x15\x03\x03\x00\x02\x02\x70")
            self.assertTrue(any(text in formatEvent(e) for e in events), text)
        no_rule = self.hello(b"web1." + DOMAIN.encode(), port=8000)
        self.assertEqual(no_rule.value(), b"\x15\x03\x03\x00\x02\x02\x50")
        self.assertEqual(self.factory.stats.container_refusals, 3)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_a_certificate_covering_the_name_terminates(self) -> None:
        root = self.mktemp()
        write_pair(os.path.join(root, "compute"), f"*.{DOMAIN}")
        store = CertificateStore(log=quiet_logger())
        store.add_directory(root)
        factory = self.make_factory(store, containers=self.factory.containers)
        client = MemoryClient(b"web1." + DOMAIN.encode())
        _, transport = self.connect(factory)
        transport.hostAddr = IPv4Address("TCP", "127.0.0.1", 18443)
        self.handshake(client, transport)
        self.assertTrue(client.handshook)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_static_passthrough_keeps_priority(self) -> None:

        self.routes.swap(RouteTable([passthrough_route("web1." + DOMAIN, port=9443)]))
        self.hello(b"web1." + DOMAIN.encode())
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9443))

    def test_other_names_as_before(self) -> None:
        self.hello(b"vm.cloud.test")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 8443))

    def complete_backend(self) -> Any:

        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        backend = HandoverTransport(IPv4Address("TCP", "127.0.1.7", 8443))
        wrapper = factory.buildProtocol(backend.getPeer())
        backend.protocol = wrapper
        wrapper.makeConnection(backend)
        return backend


def namespaced(cid: str = "web1", ip: str | None = None, namespace: str = "compute-u1-web1",
               rules: dict[int, int] | None = None) -> Container:
    return replace(web(cid, ip=ip, rules=rules), namespace=namespace)


SERVICE_DNS = ContainerAddressing("service-dns")


class AddressingTests(SynchronousTestCase):
    """C{--container-address}: where a container is dialled."""

    def test_external_ip_is_the_default(self) -> None:
        self.assertEqual(ContainerAddressing().host(web()), "127.0.1.7")
        self.assertIsNone(ContainerAddressing().host(namespaced(ip=None)))
        self.assertIsNone(ContainerAddressing().host(web(ip="")))

    def test_service_dns(self) -> None:
        self.assertEqual(SERVICE_DNS.host(namespaced()), "lb.compute-u1-web1.svc.cluster.local")
        self.assertEqual(SERVICE_DNS.host(namespaced(ip="10.0.0.1")), "lb.compute-u1-web1.svc.cluster.local")
        self.assertEqual(SERVICE_DNS.host(namespaced(namespace="Compute-U1-Web1")),
                         "lb.compute-u1-web1.svc.cluster.local")

    def test_other_templates(self) -> None:
        addressing = ContainerAddressing("service-dns", "{id}.{user_id}.containers.internal")
        self.assertEqual(addressing.host(web(ip=None)), "web1.u1.containers.internal")
        self.assertEqual(addressing.host(replace(web(), user_id="")), None, "a value it needs is missing")

    def test_values_that_are_no_label_give_no_address(self) -> None:
        for namespace in ("", "a.b", "x" * 64, "-a", "a b", "évian", "a/../b"):
            self.assertIsNone(SERVICE_DNS.host(namespaced(namespace=namespace)), namespace)

    def test_bad_templates(self) -> None:
        cases = {
            "lb.{ns}.svc": "{ns} is not one of {namespace}, {id}, {user_id}",
            "lb.{namespace!r}.svc": "is not one of",
            "lb.{namespace:>9}.svc": "is not one of",
            "lb.{0}.svc": "{0} is not one of",
            "lb.{namespace.svc": "expected '}'",
            "lb.svc.cluster.local": "names no container",
            "lb_{namespace}.svc": "does not make a DNS name",
            "{namespace}.svc:8080": "does not make a DNS name",
        }
        for template, text in cases.items():
            with self.assertRaises(ValueError, msg=template) as raised:
                ContainerAddressing("service-dns", template)
            self.assertIn(text, str(raised.exception), template)
        with self.assertRaises(ValueError):
            ContainerAddressing("pod-ip")

    def test_decide(self) -> None:
        decision = decide(snapshot(namespaced()), "web1", 80, SERVICE_DNS)
        assert isinstance(decision, ContainerBackend)
        self.assertEqual(decision.target, Target("lb.compute-u1-web1.svc.cluster.local", 8080))
        self.assertEqual(decide(snapshot(namespaced()), "web1", 80),
                         ContainerRefused(503, "container web1 has no address yet"))
        self.assertEqual(decide(snapshot(namespaced(namespace="")), "web1", 80, SERVICE_DNS),
                         ContainerRefused(503, "container web1 has no address yet"))

    def test_http_tls_and_raw_tcp_through_the_router(self) -> None:
        router = ContainerRouter(ContainerDirectory(snapshot(namespaced(rules={80: 8080, 8001: 5432}))), DOMAIN,
                                 addressing=SERVICE_DNS)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 80))
        match = router.http_match(f"web1.{DOMAIN}", "/", transport)
        assert match is not None
        self.assertEqual(match.route.target, Target("lb.compute-u1-web1.svc.cluster.local", 8080))
        passthrough = router.route(f"web1.{DOMAIN}", transport)
        assert isinstance(passthrough, ContainerBackend)
        self.assertEqual(str(passthrough.target), "lb.compute-u1-web1.svc.cluster.local:8080")
        owner = router.port_owner(8001)
        assert isinstance(owner, ContainerBackend)
        self.assertEqual(owner.target, Target("lb.compute-u1-web1.svc.cluster.local", 5432))

    def test_raw_tcp_dials_the_service(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import MemoryReactorClock

        from edd_gateway.front import rawtcp

        dialled: list[Target] = []

        class Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                return Deferred()

        def endpoint(reactor: Any, target: Target, timeout: float) -> Endpoint:
            dialled.append(target)
            return Endpoint()

        self.patch(rawtcp, "backend_endpoint", endpoint)
        router = ContainerRouter(ContainerDirectory(snapshot(namespaced(rules={8001: 5432}))), DOMAIN,
                                 addressing=SERVICE_DNS)
        factory = rawtcp.RawTCPFactory(router, MemoryReactorClock(), connect_timeout=5, idle_timeout=None)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8001)))
        self.assertEqual(dialled, [Target("lb.compute-u1-web1.svc.cluster.local", 5432)])

    def test_ssh_has_an_address_and_dials_the_service(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from edd_gateway.ssh.auth import unavailable_reason
        from edd_gateway.ssh.pins import MemoryHostKeyPins
        from edd_gateway.ssh.upstream import UpstreamConnector, UpstreamSettings
        from edd_gateway.ssh.testing import key

        container = replace(namespaced(), ssh_enabled=True)
        self.assertIsNone(unavailable_reason(container, SERVICE_DNS))
        self.assertIn("has no address yet", unavailable_reason(container) or "")
        connector = UpstreamConnector(MemoryReactorClock(), key("gateway-client"), MemoryHostKeyPins(),
                                      UpstreamSettings(port=22), addressing=SERVICE_DNS)
        hosts: list[str] = []
        original = connector.endpoint
        connector.endpoint = lambda host: hosts.append(host) or original(host)  # type: ignore[method-assign]
        connector.connect(container, "root")
        self.assertEqual(hosts, ["lb.compute-u1-web1.svc.cluster.local"])
        refused = connector.connect(replace(container, namespace=""), "root")
        self.assertIn("has no address yet", str(self.failureResultOf(refused).value))


class AddressOptionTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        from edd_gateway.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_default(self) -> None:
        self.assertEqual(self.parse().addressing(), ContainerAddressing())

    def test_service_dns(self) -> None:
        self.assertEqual(self.parse("--container-address", "service-dns").addressing(), SERVICE_DNS)
        options = self.parse("--container-address", "service-dns", "--container-service-dns", "{id}.pods.test")
        self.assertEqual(options.addressing().host(web()), "web1.pods.test")

    def test_usage_errors_name_the_option(self) -> None:
        from twisted.python.usage import UsageError

        cases = [
            (("--container-address", "pod-ip"), "--container-address must be external-ip or service-dns"),
            (("--container-address", "service-dns", "--container-service-dns", "lb.{ns}.svc"),
             "--container-service-dns: 'lb.{ns}.svc': {ns} is not one of {namespace}, {id}, {user_id}"),
            (("--container-service-dns", "{id}.pods.test"),
             "--container-service-dns needs --container-address service-dns"),
        ]
        for argv, message in cases:
            with self.assertRaises(UsageError, msg=argv) as raised:
                self.parse(*argv)
            self.assertEqual(str(raised.exception), message)

    def test_the_service_tree_shares_one_addressing(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from edd_gateway.front.classify import Verdict
        from edd_gateway.tap import makeService

        work = self.mktemp()
        os.makedirs(work)
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
        options = self.parse("--dev-cert-dir", os.path.join(work, "tls"), "--ssh-host-key",
                             os.path.join(work, "host"), "--ssh-client-key", os.path.join(work, "client"),
                             "--state-file", os.path.join(work, "pins.json"), "--container-domain", DOMAIN,
                             "--container-address", "service-dns", "--admin", "none")
        top = makeService(options, MemoryReactorClock())
        [sniffer] = [listener.factory for listener in top.listeners]
        http, ssh = sniffer.handlers[Verdict.HTTP], sniffer.handlers[Verdict.SSH]
        self.assertEqual(http.containers.addressing, SERVICE_DNS)
        self.assertEqual(sniffer.handlers[Verdict.TLS].containers.addressing, SERVICE_DNS)
        self.assertEqual((ssh.addressing, ssh.connector.addressing, ssh.checker.addressing),
                         (SERVICE_DNS, SERVICE_DNS, SERVICE_DNS))
        self.assertEqual(sniffer.raw, None, "raw TCP only on --container-ports listeners")
