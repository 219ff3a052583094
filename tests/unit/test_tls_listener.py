"""
Tests for the TLS side of a listener: L{edd_gateway.tls.listener} (the
ClientHello protocol terminating or passing through, over in-memory
transports, a memory reactor and a fake clock, against a pyOpenSSL client
in memory-BIO mode), L{edd_gateway.tls.authority} (the 421 check),
L{edd_gateway.tls.service} (renewal polling, expiry reports, building the
TLS setup) and the two TLS-related answers of the HTTP side (421 and the
IP-address redirect).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.factory import HTTPProxyFactory
from edd_gateway.http.settings import ProxySettings
from edd_gateway.routes.model import Route, Target
from edd_gateway.routes.table import LiveRouteTable, RouteTable
from edd_gateway.tls import openssl as _openssl
from edd_gateway.tls.authority import misdirected_check
from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory
from edd_gateway.tls.service import CertificateRenewalService, build_tls
from edd_gateway.tls.store import CertificateStore
from edd_gateway.tls.testing import (
    CLIENT,
    HandoverTransport,
    MemoryClient,
    passthrough_route,
    quiet_logger,
    write_pair,
)
from tests._support.tls import CountingFactory, ListenerCase

DECODE_ERROR_ALERT = b"\x15\x03\x03\x00\x02\x02\x32"


class TerminationTests(ListenerCase):
    def test_exact_name_trickled_one_byte_at_a_time(self) -> None:
        client = MemoryClient(b"a.cloud.test")
        _, transport = self.connect()
        self.handshake(client, transport, chunk=1)
        self.assertTrue(client.handshook)
        self.assertEqual(client.presented(), self.exact)
        self.assertEqual(self.round_trip(client, transport, b"GET / HTTP/1.1\r\n"), b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.factory.stats.terminated, 1)

    def test_wildcard_and_default(self) -> None:
        for server_name, expected in ((b"b.cloud.test", self.wildcard), (b"x.b.cloud.test", self.default),
                                      (None, self.default)):
            client = MemoryClient(server_name)
            _, transport = self.connect()
            self.handshake(client, transport)
            self.assertEqual(client.presented(), expected, server_name)

    def test_handed_over_protocol_is_tls(self) -> None:
        client = MemoryClient(b"a.cloud.test")
        hello_protocol, transport = self.connect()
        self.handshake(client, transport)
        self.assertIsNot(transport.protocol, hello_protocol)
        self.assertIsNone(hello_protocol.transport)
        self.assertEqual(transport.protocol.getHandle().get_servername(), b"a.cloud.test")

    def test_tls_transport_names_its_producer_across_requests(self) -> None:
        _, transport = self.connect()
        self.handshake(MemoryClient(b"a.cloud.test"), transport)
        tls = transport.protocol
        for _ in range(2):
            # As an HTTP exchange per request: register the backend, then
            # unregister it only if it is still the one registered.
            backend = StringTransport()
            tls.registerProducer(backend, True)
            self.assertIs(tls.producer, backend)
            if tls.producer is backend:
                tls.unregisterProducer()
            self.assertIsNone(tls.producer)
            self.assertIsNone(transport.producer)

    def test_factory_start_starts_the_https_factory(self) -> None:
        self.assertEqual(self.https.starts, 1)

    def test_unknown_name_without_default_is_closed_with_an_alert(self) -> None:
        store = CertificateStore(default_name="nothing.test", log=quiet_logger())
        store.add_directory(os.path.join(self.root, "exact"))
        factory = self.make_factory(store)
        with capturedLogs() as events:
            _, transport = self.connect(factory)
            client = MemoryClient(b"unknown.test")
            self.handshake(client, transport)
        self.assertFalse(transport.connected)
        # The client read the gateway's alert, not just a closed connection.
        self.assertIn("unrecognized name", str(client.error))
        [line] = [formatEvent(e) for e in events if "no default certificate" in formatEvent(e)]
        self.assertIn("198.51.100.9", line)
        self.assertIn("unknown.test", line)
        self.assertEqual(factory.stats.no_certificate, 1)

    def test_no_certificate_at_all(self) -> None:
        """
        Refused by the listener, which chooses the certificate (once, from
        the ClientHello), before any handshake: the client is told why, and
        the log line names the name and the client.  (The connection creator
        chose during the handshake before; its test moved here.)
        """
        factory = self.make_factory(CertificateStore(log=quiet_logger()))
        with capturedLogs() as events:
            _, transport = self.connect(factory)
            client = MemoryClient(b"a.cloud.test")
            self.handshake(client, transport)
        self.assertFalse(client.handshook)
        self.assertFalse(transport.connected)
        self.assertIn("unrecognized name", str(client.error))
        [message] = [formatEvent(e) for e in events if "no certificate" in formatEvent(e)]
        self.assertIn("a.cloud.test", message)
        self.assertIn("198.51.100.9", message)

    def test_no_sni_without_default_is_closed(self) -> None:
        store = CertificateStore(default_name="nothing.test", log=quiet_logger())
        store.add_directory(os.path.join(self.root, "exact"))
        factory = self.make_factory(store)
        with capturedLogs() as events:
            _, transport = self.connect(factory)
            self.handshake(MemoryClient(None), transport)
        self.assertFalse(transport.connected)
        self.assertTrue(any("sent no SNI" in formatEvent(e) for e in events))


class Recorder(protocol.Protocol):
    """Echoes, and remembers how its connection ended."""

    def connectionMade(self) -> None:
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


class DataPathTests(ListenerCase):
    """
    Application bytes through terminated TLS: edd_gateway.tls.openssl's
    short way into OpenSSL (StockDataPathTests: pyOpenSSL's own calls).
    """

    def setUp(self) -> None:
        super().setUp()
        self.https.protocol = Recorder  # type: ignore[assignment]
        self.client = MemoryClient(b"a.cloud.test")
        _, self.transport = self.connect()
        self.handshake(self.client, self.transport)
        self.server = self.transport.protocol.wrappedProtocol

    def test_bytes_larger_than_records_and_chunks(self) -> None:
        """A write of several records (and more than one BIO read) arrives whole and in order."""
        payload = bytes(range(256)) * 400  # 100 KiB: 7 records, over 3 chunks
        self.client.received = b""
        sent = 0
        while sent < len(payload):
            sent += self.client.connection.send(payload[sent:sent + 2**14])
            self.transport.protocol.dataReceived(self.client.drain())
            self.client.feed(self.transport.take())
        self.assertEqual(self.client.received, payload)

    def test_big_write_from_the_application(self) -> None:
        payload = b"x" * (3 * _openssl.CHUNK + 5)
        self.client.received = b""
        self.transport.protocol.write(payload)
        for _ in range(10):
            self.client.feed(self.transport.take())
        self.assertEqual(self.client.received, payload)

    def test_close_notify_ends_the_connection_cleanly(self) -> None:
        self.client.connection.shutdown()
        self.transport.protocol.dataReceived(self.client.drain())
        self.assertFalse(self.transport.connected)
        assert self.server.lost is not None
        self.assertTrue(self.server.lost.check(ConnectionDone))

    def test_corrupt_record_fails_the_connection(self) -> None:
        self.transport.protocol.dataReceived(b"\x17\x03\x03\x00\x20" + bytes(32))
        self.assertFalse(self.transport.connected)
        assert self.server.lost is not None
        self.assertTrue(self.server.lost.check(SSL.Error), self.server.lost)


class StockDataPathTests(DataPathTests):
    """The same through pyOpenSSL's public calls, as with a pyOpenSSL lacking the internals used."""

    def setUp(self) -> None:
        self.patch(_openssl, "AVAILABLE", False)
        super().setUp()


class StockTerminationTests(TerminationTests):
    """Termination through pyOpenSSL's public calls only."""

    def setUp(self) -> None:
        self.patch(_openssl, "AVAILABLE", False)
        super().setUp()


class RefusalTests(ListenerCase):
    def test_garbage_after_0x16_is_closed_naming_client_and_reason(self) -> None:
        with capturedLogs() as events:
            _, transport = self.connect()
            transport.protocol.dataReceived(b"\x16\x03\x01\x00\x10\x02not a hello at all")
        self.assertEqual(transport.value(), DECODE_ERROR_ALERT)
        self.assertFalse(transport.connected)
        [line] = [formatEvent(e) for e in events if "malformed" in formatEvent(e)]
        self.assertIn("198.51.100.9", line)
        self.assertIn("not ClientHello", line)
        self.assertEqual(self.factory.stats.malformed, 1)

    def test_oversized_hello_is_closed(self) -> None:
        factory = self.make_factory(self.store, max_hello_bytes=64)
        with capturedLogs() as events:
            _, transport = self.connect(factory)
            transport.protocol.dataReceived(MemoryClient(b"a.cloud.test").feed(b""))
        self.assertFalse(transport.connected)
        self.assertTrue(any("64-byte limit" in formatEvent(e) for e in events))

    def test_hello_timeout(self) -> None:
        hello = MemoryClient(b"a.cloud.test").feed(b"")
        with capturedLogs() as events:
            _, transport = self.connect()
            transport.protocol.dataReceived(hello[:20])
            self.reactor.advance(9.9)
            self.assertTrue(transport.connected)
            self.reactor.advance(0.2)
        self.assertFalse(transport.connected)
        [line] = [formatEvent(e) for e in events if "no complete ClientHello" in formatEvent(e)]
        self.assertIn("198.51.100.9", line)
        self.assertIn("20 bytes", line)
        self.assertEqual(self.factory.stats.hello_timeouts, 1)

    def test_timer_cancelled_once_decided(self) -> None:
        _, transport = self.connect()
        self.handshake(MemoryClient(b"a.cloud.test"), transport)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timer_cancelled_when_client_leaves(self) -> None:
        _, transport = self.connect()
        transport.loseConnection()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.factory.stats.closed_early, 1)


class PassthroughTests(ListenerCase):
    def start(self, server_name: bytes = b"vm.cloud.test") -> tuple[HandoverTransport, bytes]:
        hello = MemoryClient(server_name).feed(b"")
        _, transport = self.connect()
        for start in range(0, len(hello), 7):
            transport.protocol.dataReceived(hello[start:start + 7])
        return transport, hello

    def complete(self) -> HandoverTransport:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        backend = HandoverTransport(IPv4Address("TCP", "127.0.0.1", 8443))
        wrapper = factory.buildProtocol(backend.getPeer())
        backend.protocol = wrapper
        wrapper.makeConnection(backend)
        return backend

    def test_connects_the_route_target_with_its_timeout_and_pauses_the_client(self) -> None:
        transport, _ = self.start()
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8443, 2.5))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(transport.value(), b"", "nothing is answered before the backend")

    def test_default_connect_timeout(self) -> None:
        self.routes.swap(RouteTable([passthrough_route("vm.cloud.test")]))
        self.start()
        self.assertEqual(self.reactor.tcpClients[0][3], 4.0)

    def test_buffered_hello_replayed_then_bytes_relayed_both_ways(self) -> None:
        with capturedLogs() as events:
            transport, hello = self.start()
            transport.protocol.dataReceived(b"early")
            backend = self.complete()
        self.assertEqual(backend.value(), hello + b"early")
        self.assertEqual(transport.producerState, "producing")
        backend.clear()
        transport.protocol.dataReceived(b"client->backend")
        backend.protocol.dataReceived(b"backend->client")
        self.assertEqual(backend.value(), b"client->backend")
        self.assertEqual(transport.value(), b"backend->client")
        [line] = [formatEvent(e) for e in events if "passed through" in formatEvent(e)]
        for part in ("198.51.100.9", "vm.cloud.test", "127.0.0.1:8443", "routes.yaml:7"):
            self.assertIn(part, line)
        self.assertEqual(self.factory.stats.passed_through, 1)

    def test_each_side_produces_for_the_other(self) -> None:
        transport, _ = self.start()
        backend = self.complete()
        self.assertIs(transport.producer, backend)
        self.assertIs(backend.producer, transport)

    def test_backend_refusal_closes_the_client_with_a_log_line(self) -> None:
        with capturedLogs() as events:
            transport, _ = self.start()
            connector = self.reactor.connectors[-1]
            self.reactor.tcpClients[-1][2].clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertFalse(transport.connected)
        [line] = [formatEvent(e) for e in events if "refused the connection" in formatEvent(e)]
        for part in ("198.51.100.9", "vm.cloud.test", "127.0.0.1:8443"):
            self.assertIn(part, line)
        self.assertEqual(self.factory.stats.backend_failures, 1)

    def test_client_leaving_cancels_the_attempt(self) -> None:
        with capturedLogs() as events:
            transport, _ = self.start()
            transport.loseConnection()
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertFalse([e for e in events if e.get("log_level") == LogLevel.error])

    def test_not_passed_through_when_the_route_terminates(self) -> None:
        self.routes.swap(RouteTable([Route("vm.cloud.test", "/", Target("127.0.0.1", 8443))]))
        client = MemoryClient(b"vm.cloud.test")
        _, transport = self.connect()
        self.handshake(client, transport)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(client.presented(), self.wildcard)

    def test_passthrough_needs_no_certificate(self) -> None:
        empty = CertificateStore(log=quiet_logger())
        factory = self.make_factory(empty)
        _, transport = self.connect(factory)
        transport.protocol.dataReceived(MemoryClient(b"vm.cloud.test").feed(b""))
        self.assertEqual(len(self.reactor.tcpClients), 1)


class MisdirectedTests(ListenerCase):
    def terminated(self, server_name: bytes | None) -> Any:
        _, transport = self.connect()
        self.handshake(MemoryClient(server_name), transport)
        return transport.protocol

    def test_hosts_covered_by_the_chosen_certificate_are_served(self) -> None:
        check = misdirected_check(self.routes)
        exact = self.terminated(b"a.cloud.test")
        self.assertFalse(check(exact, "a.cloud.test"))
        self.assertTrue(check(exact, "b.cloud.test"))
        wildcard = self.terminated(b"b.cloud.test")
        self.assertFalse(check(wildcard, "c.cloud.test"))
        self.assertTrue(check(wildcard, "a.b.cloud.test"))
        self.assertTrue(check(wildcard, "default.test"))

    def test_sni_that_got_the_default_certificate(self) -> None:
        check = misdirected_check(self.routes)
        other = self.terminated(b"elsewhere.test")
        self.assertFalse(check(other, "elsewhere.test"))
        self.assertFalse(check(other, "default.test"))
        self.assertTrue(check(other, "a.cloud.test"))
        no_sni = self.terminated(None)
        self.assertFalse(check(no_sni, "default.test"))
        self.assertTrue(check(no_sni, "elsewhere.test"))

    def test_passthrough_hosts_are_never_served_from_terminated_tls(self) -> None:
        check = misdirected_check(self.routes)
        self.assertTrue(check(self.terminated(b"b.cloud.test"), "vm.cloud.test"))

    def test_not_tls(self) -> None:
        self.assertFalse(misdirected_check(self.routes)(StringTransport(), "x.test"))


class HTTPSideTests(SynchronousTestCase):
    """The 421 and IP-address redirect answers of the HTTP proxy."""

    def answer(self, request: bytes, scheme: str = "http", **options: Any) -> bytes:
        routes = LiveRouteTable(RouteTable([
            Route("app.test", "/", Target("", 0, internal="welcome")),
            Route("192.0.2.1", "/", Target("", 0, internal="welcome")),
        ]))
        factory = HTTPProxyFactory(routes, None, ProxySettings(), Clock(), scheme=scheme, **options)  # type: ignore[arg-type]
        server = factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        server.makeConnection(transport)
        server.dataReceived(request)
        server.deadline.cancel()
        return transport.value()

    def test_misdirected_request_gets_421(self) -> None:
        seen: list[str] = []

        def misdirected(transport: Any, host: str) -> bool:
            seen.append(host)
            return host == "app.test"

        response = self.answer(b"GET / HTTP/1.1\r\nHost: APP.test:443\r\n\r\n", "https", misdirected=misdirected)
        self.assertTrue(response.startswith(b"HTTP/1.1 421 Misdirected Request\r\n"), response[:80])
        self.assertEqual(seen, ["app.test"])

    def test_check_only_on_https(self) -> None:
        response = self.answer(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", "http", misdirected=lambda t, h: True)
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:80])

    def test_ip_host_without_route_redirects_to_main_site(self) -> None:
        for host in (b"203.0.113.5", b"[2001:db8::1]:8080"):
            response = self.answer(b"GET /x?y HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
                                   main_site="https://cloud.test/")
            self.assertTrue(response.startswith(b"HTTP/1.1 301 "), response[:80])
            self.assertIn(b"\r\nLocation: https://cloud.test/\r\n", response)

    def test_ip_host_with_a_route_keeps_it(self) -> None:
        response = self.answer(b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", main_site="https://cloud.test/")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:80])

    def test_names_and_no_main_site_still_404(self) -> None:
        named = self.answer(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", main_site="https://cloud.test/")
        self.assertTrue(named.startswith(b"HTTP/1.1 404 "), named[:80])
        plain = self.answer(b"GET / HTTP/1.1\r\nHost: 203.0.113.5\r\n\r\n")
        self.assertTrue(plain.startswith(b"HTTP/1.1 404 "), plain[:80])


class RenewalServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "site")
        self.first = write_pair(self.directory, "site.test")
        self.clock = Clock()
        self.clock.advance(time.time())
        self.store = CertificateStore(clock=self.clock)
        self.store.add_directory(self.directory)
        self.service = CertificateRenewalService(self.store, self.clock, interval=5.0, expiry_interval=3600.0)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def served(self) -> x509.Certificate:
        chosen = self.store.choose("site.test")
        assert chosen is not None
        return chosen.certificate

    def test_renewed_pair_served_after_the_next_check(self) -> None:
        renewed = write_pair(self.directory, "site.test")
        self.clock.advance(4.9)
        self.assertEqual(self.served(), self.first)
        with capturedLogs() as events:
            self.clock.advance(0.2)
        self.assertEqual(self.served(), renewed)
        self.assertTrue(any("certificates reloaded (1 new" in formatEvent(e) for e in events))

    def test_broken_pair_keeps_the_old_one(self) -> None:
        _, other_key = self_signed_certificate(["x"], datetime.now(timezone.utc), datetime.now(timezone.utc))
        certificate, _ = self_signed_certificate(
            ["site.test"], datetime.now(timezone.utc), datetime.now(timezone.utc) + timedelta(days=9)
        )
        write_secret_directory(self.directory, [certificate], other_key)
        with capturedLogs() as events:
            self.clock.advance(5)
        self.assertEqual(self.served(), self.first)
        self.assertTrue(any("does not match" in formatEvent(e) for e in events))

    def test_nothing_reread_when_nothing_changed(self) -> None:
        generation = self.store.generation
        self.clock.advance(50)
        self.assertEqual(self.store.generation, generation)

    def test_expiry_warned_periodically(self) -> None:
        write_pair(self.directory, "site.test", days=3)
        with capturedLogs() as events:
            self.clock.advance(5)
            warnings = [formatEvent(e) for e in events if "expires on" in formatEvent(e)]
            self.assertEqual(warnings, [], "the store reported it on load; the service waits its interval")
            self.clock.advance(3600)
        warnings = [formatEvent(e) for e in events if "expires on" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("site.test", warnings[0])
        self.assertIn("days left", warnings[0])

    def test_stop_stops_polling(self) -> None:
        self.service.stopService()
        write_pair(self.directory, "site.test")
        self.clock.advance(10)
        self.assertEqual(self.served(), self.first)


class BuildTLSTests(SynchronousTestCase):
    def test_development_certificate_without_tls_dirs(self) -> None:
        dev = self.mktemp()
        with capturedLogs() as events:
            setup = build_tls(LiveRouteTable(), CountingFactory(), MemoryReactorClock(), dev_cert_dir=dev)
        self.assertTrue(os.path.exists(os.path.join(dev, "tls.crt")))
        self.assertTrue(setup.store.covers("localhost"))
        self.assertIs(setup.store.choose("anything.test"), setup.store.default)
        self.assertTrue(any(os.path.abspath(dev) in formatEvent(e) and "development" in formatEvent(e)
                            for e in events))
        again = build_tls(LiveRouteTable(), CountingFactory(), MemoryReactorClock(), dev_cert_dir=dev)
        self.assertEqual(again.store.default.certificate, setup.store.default.certificate)  # type: ignore[union-attr]

    def test_tls_dirs_and_default_name(self) -> None:
        root = self.mktemp()
        write_pair(os.path.join(root, "one"), "one.test")
        two = write_pair(os.path.join(root, "two"), "two.test")
        setup = build_tls(LiveRouteTable(), CountingFactory(), MemoryReactorClock(), tls_dirs=[root],
                          default_cert="two.test", hello_timeout=3.0)
        self.assertEqual(setup.store.default.certificate, two)  # type: ignore[union-attr]
        self.assertEqual(setup.factory.hello_timeout, 3.0)
        self.assertIs(setup.service.store, setup.store)

    def test_missing_tls_dir_stops_the_start(self) -> None:
        missing = self.mktemp()
        with self.assertRaises(SystemExit) as raised:
            build_tls(LiveRouteTable(), CountingFactory(), MemoryReactorClock(), tls_dirs=[missing])
        self.assertIn(missing, str(raised.exception))


class OptionsTests(SynchronousTestCase):
    """The TLS options of ``twistd edd-gateway``."""

    def parse(self, *argv: str) -> Any:
        from edd_gateway.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["tls-dir"], [])
        self.assertEqual(options["dev-cert-dir"], os.path.join("edd-gateway-state", "dev-tls"))
        self.assertIsNone(options["default-cert"])
        self.assertIsNone(options["main-site"])

    def test_repeatable_tls_dir_and_the_rest(self) -> None:
        options = self.parse("--tls-dir", "a", "--tls-dir", "b", "--default-cert", "cloud.test",
                             "--main-site", "https://cloud.test/", "--cert-check-interval", "2.5")
        self.assertEqual(options["tls-dir"], ["a", "b"])
        self.assertEqual((options["default-cert"], options["main-site"]), ("cloud.test", "https://cloud.test/"))
        self.assertEqual(options["cert-check-interval"], 2.5)

    def test_main_site_must_be_an_http_url(self) -> None:
        from twisted.python.usage import UsageError

        for bad in ("cloud.test", "ftp://cloud.test/", "https://"):
            with self.assertRaises(UsageError, msg=bad):
                self.parse("--main-site", bad)
