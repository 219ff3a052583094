"""
Tests for ``twistd edd-gateway``'s command line (L{edd_gateway.tap.Options})
and the service tree L{makeService} builds from it: which sources feed the
live state, which listeners sniff, where SSH is served.  The tree is built
on a memory reactor and never started.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from edd_gateway.routes.containers import ContainerRouter
from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.h2.backend import H2PoolService
from edd_gateway.h2.backend_exchange import H2BackendRelay
from edd_gateway.h2.prior_knowledge import PriorKnowledgeFactory
from edd_gateway.http.factory import HTTPProxyFactory
from edd_gateway.ssh import GatewaySSHFactory
from edd_gateway.state.localfile import LocalContainersSource, LocalPinStore
from edd_gateway.state.nats import NatsEventFeed
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.service import StateService
from edd_gateway.routes.service import RoutesService
from edd_gateway.state.localfile import DEFAULT_STATE_FILE
from edd_gateway.tap import Options, makeService

CONTAINERS = """\
containers:
  - id: web1
    external_ip: 127.0.1.5
    ingress:
      - port: 80
        target_port: 8080
"""


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        environ = dict(os.environ)
        environ.pop("DATABASE_URL", None)
        self.patch(os, "environ", environ)

    def test_defaults(self) -> None:
        options = parse()
        for name in ("database", "compute-database", "nats", "containers", "container-domain", "ssh-rsa-host-key"):
            self.assertIsNone(options[name], name)
        self.assertEqual((options["ssh-listen"], options["port-map"], options["container-ports"]), ([], {}, range(0)))
        self.assertEqual((options["poll-interval"], options["resync-interval"]), (5.0, 30.0))
        self.assertEqual((options["state-file"], options["container-interface"]), (DEFAULT_STATE_FILE, "127.0.0.1"))
        self.assertEqual(options.ssh_settings().ssh_port, 22)

    def test_database_from_the_environment(self) -> None:
        os.environ["DATABASE_URL"] = "postgresql://gw@db.internal/cloud"
        self.assertEqual(parse()["database"], "postgresql://gw@db.internal/cloud")
        self.assertEqual(parse("--database", "host=other dbname=x")["database"], "host=other dbname=x")

    def test_database_options(self) -> None:
        options = parse("--database", "host=db dbname=gw", "--compute-database", "host=db dbname=compute",
                        "--nats", "nats://a:4222,nats://b:4222", "--poll-interval", "2", "--resync-interval", "0")
        self.assertEqual((options["compute-database"], options["poll-interval"], options["resync-interval"]),
                         ("host=db dbname=compute", 2.0, 0.0))

    def test_refused_combinations(self) -> None:
        for argv, text in [(["--nats", "nats://a"], "--nats needs --database"),
                           (["--compute-database", "dbname=x"], "--compute-database needs --database"),
                           (["--database", "dbname=x", "--containers", "c.yaml"], "one or the other"),
                           (["--database", "dbname=x hunter2"], "is not a PostgreSQL DSN"),
                           (["--poll-interval", "0"], "--poll-interval"),
                           (["--ssh-port", "0"], "--ssh-port")]:
            with self.assertRaises(UsageError, msg=argv) as raised:
                parse(*argv)
            self.assertIn(text, str(raised.exception))
            self.assertNotIn("hunter2", str(raised.exception))

    def test_container_options(self) -> None:
        options = parse("--container-domain", "Compute.Cloud.Test.", "--container-ports", "8000-8002",
                        "--port-map", "18080=80", "--port-map", "18443=443", "--listen", "tcp:18080",
                        "--container-interface", "::")
        self.assertEqual(options["container-domain"], "compute.cloud.test")
        self.assertEqual(options["port-map"], {18080: 80, 18443: 443})
        self.assertEqual(options.sniffing_endpoints(), ["tcp:18080", "tcp:8000:interface=\\:\\:",
                                                        "tcp:8001:interface=\\:\\:", "tcp:8002:interface=\\:\\:"])
        for argv in (["--container-domain", "localhost"], ["--port-map", "80"], ["--container-ports", "9-8"]):
            with self.assertRaises(UsageError, msg=argv):
                parse(*argv)

    def test_ssh_options(self) -> None:
        options = parse("--ssh-listen", "tcp:2222", "--ssh-listen", "tcp6:2222", "--ssh-port", "2022",
                        "--ssh-connect-timeout", "3", "--ssh-login-grace-time", "7")
        self.assertEqual(options["ssh-listen"], ["tcp:2222", "tcp6:2222"])
        settings = options.ssh_settings()
        self.assertEqual((settings.ssh_port, settings.connect_timeout, settings.login_grace_time), (2022, 3.0, 7.0))

    def test_sha1_rsa_is_off_unless_asked(self) -> None:
        self.assertFalse(parse().ssh_settings().allow_sha1_rsa)
        self.assertTrue(parse("--ssh-allow-sha1-rsa").ssh_settings().allow_sha1_rsa)


class ServiceTreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = self.mktemp()
        os.makedirs(self.work)
        environ = dict(os.environ)
        environ.pop("DATABASE_URL", None)
        self.patch(os, "environ", environ)

    def build(self, *argv: str) -> tuple[Options, list[Any]]:
        path = lambda name: os.path.join(self.work, name)  # noqa: E731
        options = parse("--dev-cert-dir", path("tls"), "--ssh-host-key", path("host"), "--ssh-client-key",
                        path("client"), "--state-file", path("state/pins.json"), *argv)
        top = makeService(options, MemoryReactorClock())
        return options, [*IServiceCollection(top), *top.listeners]

    def listeners(self, services: list[Any]) -> list[Any]:
        """The client-facing listeners (not the admin endpoint)."""
        return [s for s in services if isinstance(s, StreamServerEndpointService) and not isinstance(s.factory, Site)]

    def test_sha1_rsa_allowed_is_logged_at_start(self) -> None:
        from twisted.logger import capturedLogs

        with capturedLogs() as events:
            _, services = self.build("--ssh-allow-sha1-rsa")
        ssh = self.listeners(services)[0].factory.handlers[Verdict.SSH]
        self.assertTrue(ssh.signatures.allow_sha1_rsa)
        self.assertTrue(any("--ssh-allow-sha1-rsa" in e.get("log_format", "") for e in events))

    def test_embedded_default(self) -> None:
        _, services = self.build()
        [listener] = self.listeners(services)
        sniffer = listener.factory
        self.assertIsInstance(sniffer, SniffingFactory)
        self.assertEqual(set(sniffer.handlers), {Verdict.HTTP, Verdict.TLS, Verdict.SSH})
        self.assertIsInstance(sniffer.handlers[Verdict.SSH], GatewaySSHFactory)
        self.assertIsNone(sniffer.handlers[Verdict.HTTP].containers)
        ssh = sniffer.handlers[Verdict.SSH]
        self.assertTrue(ssh.directory.current.ready, "no containers source: an empty, ready directory")
        self.assertIsInstance(ssh.connector.pins, LocalPinStore)
        self.assertTrue(os.path.exists(os.path.join(self.work, "host")))
        self.assertTrue(os.path.isdir(os.path.join(self.work, "state")))
        self.assertFalse([s for s in services if isinstance(s, (StateService, LocalContainersSource))])

    def test_one_h2c_pool_for_grpc_routes(self) -> None:
        _, services = self.build()
        [pool_service] = [s for s in services if isinstance(s, H2PoolService)]
        sniffer = self.listeners(services)[0].factory
        http = sniffer.handlers[Verdict.HTTP]
        self.assertIsInstance(http, HTTPProxyFactory)  # no prior knowledge unless asked
        https = sniffer.handlers[Verdict.TLS].terminator.wrappedFactory.http1
        for factory in (http, https):
            self.assertIsInstance(factory.http2_relay, H2BackendRelay)
            self.assertIs(factory.http2_relay.pool, pool_service.pool)

    def test_h2c_prior_knowledge(self) -> None:
        options, services = self.build("--h2c-prior-knowledge")
        self.assertTrue(options["h2c-prior-knowledge"])
        handler = self.listeners(services)[0].factory.handlers[Verdict.HTTP]
        self.assertIsInstance(handler, PriorKnowledgeFactory)
        self.assertIsInstance(handler.http1, HTTPProxyFactory)

    def test_local_containers_and_routing(self) -> None:
        containers = os.path.join(self.work, "containers.yaml")
        with open(containers, "w") as file:
            file.write(CONTAINERS)
        _, services = self.build("--containers", containers, "--container-domain", "compute.test",
                                 "--container-ports", "18000-18001", "--port-map", "18000=8000",
                                 "--ssh-listen", "tcp:12222")
        [source] = [s for s in services if isinstance(s, LocalContainersSource)]
        listeners = self.listeners(services)
        self.assertEqual(len(listeners), 4, "--listen, two container ports, --ssh-listen")
        sniffers = [s.factory for s in listeners if isinstance(s.factory, SniffingFactory)]
        self.assertEqual([s.listener_name for s in sniffers],
                         ["tcp:8080:interface=127.0.0.1", "tcp:18000:interface=127.0.0.1",
                          "tcp:18001:interface=127.0.0.1"])
        [ssh_only] = [s.factory.wrapped for s in listeners if not isinstance(s.factory, SniffingFactory)]
        handlers = sniffers[0].handlers
        self.assertIs(ssh_only, handlers[Verdict.SSH])
        router = handlers[Verdict.HTTP].containers
        self.assertIsInstance(router, ContainerRouter)
        self.assertIs(router.directory, source.directory)
        self.assertIs(handlers[Verdict.TLS].containers, router)
        # Inside TLS, HTTP/1.1 or HTTP/2 by ALPN: both answered by the https factory.
        self.assertIs(handlers[Verdict.TLS].terminator.wrappedFactory.http1.containers, router)
        self.assertEqual((router.domain, router.port_map), ("compute.test", {18000: 8000}))
        self.assertIs(ssh_only.directory, source.directory)
        self.assertIs(ssh_only.connector.pins, source.pins)

    def test_invalid_containers_file_stops_the_start(self) -> None:
        containers = os.path.join(self.work, "containers.yaml")
        with open(containers, "w") as file:
            file.write("containers:\n  - id: Bad_Id\n")
        with self.assertRaises(SystemExit) as raised:
            self.build("--containers", containers)
        self.assertIn(f"{containers}:2", str(raised.exception))

    def test_database_and_nats(self) -> None:
        _, services = self.build("--database", "host=127.0.0.1 port=1 dbname=gw", "--nats", "nats://127.0.0.1:1")
        [state] = [s for s in services if isinstance(s, StateService)]
        self.assertIsInstance(state.database, PostgresDatabase)
        self.assertIsInstance(state.events, NatsEventFeed)
        [routes] = [s for s in services if isinstance(s, RoutesService)]
        self.assertEqual(routes.publish, state.set_file_routes)
        ssh = self.listeners(services)[0].factory.handlers[Verdict.SSH]
        self.assertIs(ssh.connector.pins, state.database, "pins live in PostgreSQL")
        self.assertIs(ssh.directory, state.directory)

    def test_routes_file_versions_swap_the_table_without_a_database(self) -> None:
        _, services = self.build()
        [routes] = [s for s in services if isinstance(s, RoutesService)]
        sniffer = self.listeners(services)[0].factory
        live = sniffer.handlers[Verdict.HTTP].routes
        routes.publish([])
        self.assertEqual(len(live.current), 0)

    def test_unusable_key_file_stops_the_start(self) -> None:
        with open(os.path.join(self.work, "host"), "w") as file:
            file.write("not a key\n")
        with self.assertRaises(SystemExit) as raised:
            self.build()
        self.assertIn(os.path.join(self.work, "host"), str(raised.exception))
