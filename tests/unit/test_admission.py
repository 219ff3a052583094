"""
Unit tests of admission (L{edd_gateway.front.admission}) and bans
(L{edd_gateway.front.bans}): every refusal reason, the pruning of closed
connections and the sweep, the token bucket on a memory clock, ban
thresholds, windows, expiry and the allow-list, memory under a flood of
distinct addresses, and the hooks in the sniffer, the C{--ssh-listen}
factory, HTTP, TLS and the relay.  No real connection, no sleep.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.front import admission as admission_module
from edd_gateway.front import bans as bans_module
from edd_gateway.front.admission import LIMITS, Admission, AdmissionLimits, AdmissionService, build_admission
from edd_gateway.front.bans import BanList, BanSettings, client_key, parse_allow
from edd_gateway.front.drain import ConnectionTracker, TrackedFactory
from edd_gateway.http.settings import ProxySettings
from edd_gateway.http.testing import ProxyHarness
from edd_gateway.ops.metrics import GatewayMetrics
from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.tap import Options
from edd_gateway.testing.transports import HandoverTransport, RecordingFactory
from edd_gateway.ssh.factory import GatewaySSHFactory
from edd_gateway.ssh.pins import MemoryHostKeyPins
from edd_gateway.ssh.testing import directory, key
from edd_gateway.tls.testing import MemoryClient
from tests._support.tls import ListenerCase

ATTACKER = "203.0.113.66"
OTHER = "198.51.100.20"


class Conn:
    """
    A connection as admission sees it: open until C{close()}.  Admission
    holds connections weakly, as the reactor holds real ones while they are
    open: C{alive} plays the reactor.
    """

    alive: list[Conn] = []

    def __init__(self) -> None:
        self.disconnected = False
        Conn.alive.append(self)

    def close(self) -> None:
        self.disconnected = True


def settings(**thresholds: int) -> BanSettings:
    values = {"ssh-auth": 0, "garbage": 0, "limit": 0}
    values.update({kind.replace("_", "-"): count for kind, count in thresholds.items()})
    return BanSettings(thresholds=values, window=60.0, duration=600.0, allow=parse_allow(["127.0.0.1", "::1"]))


class _Logged:
    """Captures what a module's C{log} logs."""

    def __init__(self, case: SynchronousTestCase, module: Any) -> None:
        self.events: list[dict[str, Any]] = []
        case.patch(module, "log", Logger(observer=self.events.append))

    def lines(self, containing: str = "") -> list[str]:
        return [text for text in map(formatEvent, self.events) if containing in text]


def admission(clock: Clock, bans: BanSettings | None = None, **limits: Any) -> Admission:
    values = dict(max_connections=0, max_per_client=0, rate_per_client=0.0, burst_per_client=1.0)
    values.update(limits)
    return Admission(clock, AdmissionLimits(**values), BanList(clock, bans or settings()))


class RefusalTests(SynchronousTestCase):
    def setUp(self) -> None:
        Conn.alive = []
        self.clock = Clock()
        self.log = _Logged(self, admission_module)

    def test_global_cap(self) -> None:
        door = admission(self.clock, max_connections=2)
        first, second = Conn(), Conn()
        self.assertIsNone(door.admit(ATTACKER, first))
        self.assertIsNone(door.admit(OTHER, second))
        self.assertEqual(door.admit("192.0.2.1", Conn()), "max-connections")
        self.assertEqual((door.refused["max-connections"], door.hits["max-connections"]), (1, 1))
        # A closed connection frees its place at the next (forced) sweep,
        # at most one a second.
        first.close()
        self.assertEqual(door.admit("192.0.2.1", Conn()), "max-connections")
        self.clock.advance(1.0)
        self.assertIsNone(door.admit("192.0.2.1", Conn()))
        self.assertEqual(door.active, 2)

    def test_per_client_cap_prunes_closed_connections(self) -> None:
        door = admission(self.clock, max_per_client=2)
        mine = [Conn(), Conn()]
        for connection in mine:
            self.assertIsNone(door.admit(ATTACKER, connection))
        self.assertEqual(door.admit(ATTACKER, Conn()), "max-connections-per-ip")
        self.assertIsNone(door.admit(OTHER, Conn()), "another client is not affected")
        mine[0].close()
        self.assertIsNone(door.admit(ATTACKER, Conn()), "the closed one is pruned when the client connects")
        self.assertEqual(door.refused["max-connections-per-ip"], 1)

    def test_rate_token_bucket(self) -> None:
        door = admission(self.clock, rate_per_client=2.0, burst_per_client=3.0)
        results = [door.admit(ATTACKER, Conn()) for _ in range(4)]
        self.assertEqual(results, [None, None, None, "rate"])
        self.clock.advance(0.25)
        self.assertEqual(door.admit(ATTACKER, Conn()), "rate", "half a token")
        self.clock.advance(0.25)
        self.assertIsNone(door.admit(ATTACKER, Conn()), "one token after half a second at 2/s")
        self.assertEqual(door.admit(ATTACKER, Conn()), "rate")
        self.clock.advance(100)
        results = [door.admit(ATTACKER, Conn()) for _ in range(4)]
        self.assertEqual(results, [None, None, None, "rate"], "refilled to the burst, no more")
        self.assertIsNone(door.admit(OTHER, Conn()))

    def test_banned(self) -> None:
        door = admission(self.clock, bans=settings(garbage=2))
        door.garbage(ATTACKER)
        self.assertIsNone(door.admit(ATTACKER, Conn()))
        door.garbage(ATTACKER)
        self.assertEqual(door.admit(ATTACKER, Conn()), "banned")
        self.assertEqual(door.refused["banned"], 1)
        self.assertEqual(door.hits["banned"], 0, "a ban is no limit")
        self.assertIsNone(door.admit(OTHER, Conn()))

    def test_allow_list_is_never_refused(self) -> None:
        door = admission(self.clock, bans=settings(garbage=1), max_connections=1, max_per_client=1,
                         rate_per_client=1.0)
        door.garbage("127.0.0.1")
        for _ in range(5):
            self.assertIsNone(door.admit("127.0.0.1", Conn()))
        self.assertEqual(door.admit(ATTACKER, Conn()), "max-connections", "allowed connections still count")
        self.assertFalse(door.bans.banned("127.0.0.1"))

    def test_limit_refusals_are_strikes(self) -> None:
        door = admission(self.clock, bans=settings(limit=3), rate_per_client=1.0, burst_per_client=1.0)
        self.assertIsNone(door.admit(ATTACKER, Conn()))
        for _ in range(3):
            self.assertEqual(door.admit(ATTACKER, Conn()), "rate")
        self.assertEqual(door.admit(ATTACKER, Conn()), "banned")
        self.clock.advance(600)
        self.assertIsNone(door.admit(ATTACKER, Conn()), "the ban expired and the bucket refilled")

    def test_global_cap_is_no_strike(self) -> None:
        door = admission(self.clock, bans=settings(limit=1), max_connections=1)
        door.admit(OTHER, Conn())
        self.assertEqual(door.admit(ATTACKER, Conn()), "max-connections")
        self.assertFalse(door.bans.banned(ATTACKER))

    def test_refusal_log_lines_are_rate_limited_per_client(self) -> None:
        door = admission(self.clock, max_per_client=1)
        door.admit(ATTACKER, Conn())
        for _ in range(50):
            door.admit(ATTACKER, Conn())
        [line] = self.log.lines("admission: refused")
        self.assertIn(ATTACKER, line)
        self.assertIn("max-connections-per-ip", line)
        self.clock.advance(60)
        door.admit(ATTACKER, Conn())
        second = self.log.lines("admission: refused")[1]
        self.assertIn("49 more refused since the last line", second)

    def test_refusal_log_lines_are_capped_across_clients(self) -> None:
        door = admission(self.clock, max_connections=1)
        door.admit(OTHER, Conn())
        for n in range(500):
            door.admit(f"10.0.{n // 250}.{n % 250}", Conn())
        self.assertEqual(len(self.log.lines("admission: refused")), admission_module.LOG_LINES_PER_SECOND)
        self.assertEqual(door.refused["max-connections"], 500)

    def test_ipv6_clients_are_counted_by_their_64(self) -> None:
        door = admission(self.clock, max_per_client=2)
        self.assertIsNone(door.admit("2001:db8:1:2::1", Conn()))
        self.assertIsNone(door.admit("2001:db8:1:2::ffff", Conn()))
        self.assertEqual(door.admit("2001:db8:1:2:abcd::1", Conn()), "max-connections-per-ip")
        self.assertIsNone(door.admit("2001:db8:1:3::1", Conn()))
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")


class SweepTests(SynchronousTestCase):
    def setUp(self) -> None:
        Conn.alive = []
        self.clock = Clock()

    def test_sweep_counts_open_connections_and_forgets_idle_clients(self) -> None:
        door = admission(self.clock, rate_per_client=10.0, burst_per_client=10.0)
        kept, gone = Conn(), Conn()
        door.admit(ATTACKER, kept)
        door.admit(OTHER, gone)
        gone.close()
        self.assertEqual((door.active, door.tracked()), (2, 2))
        door.sweep()
        self.assertEqual(door.active, 1)
        self.assertEqual(door.tracked(), 2, "the bucket of OTHER is still refilling")
        self.clock.advance(1.0)
        door.sweep()
        self.assertEqual(door.tracked(), 1, "only the client with an open connection is left")

    def test_service_sweeps_periodically(self) -> None:
        door = admission(self.clock)
        connection = Conn()
        door.admit(ATTACKER, connection)
        connection.close()
        service = AdmissionService(door, self.clock, interval=5.0)
        service.startService()
        self.clock.advance(5.0)
        self.assertEqual((door.active, door.tracked()), (0, 0))
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_memory_stays_bounded_under_a_flood_of_distinct_addresses(self) -> None:
        door = admission(self.clock, bans=settings(limit=5), max_connections=100, max_per_client=4,
                         rate_per_client=50.0, burst_per_client=100.0)
        bound = 0
        for n in range(60000):
            connection = Conn()
            door.admit(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", connection)
            connection.close()
            Conn.alive.pop()
            door.hit("header-timeout", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
            self.clock.advance(0.0005)  # 2000 new clients a second
            bound = max(bound, door.tracked())
            if n % 10000 == 0:
                door.sweep()
        # The table is swept once it passes 1024 clients (a second's worth
        # of the flood at most between forced sweeps); strike windows go
        # with the ban list's sweep.
        self.assertLessEqual(bound, 1024 + 2000 + 1)
        self.clock.advance(60)
        door.sweep()
        self.assertEqual((door.tracked(), door.bans.tracked(), door.active), (0, 0, 0))


class BanListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log = _Logged(self, bans_module)

    def test_threshold_within_the_window(self) -> None:
        bans = BanList(self.clock, settings(ssh_auth=3))
        self.assertFalse(bans.strike(ATTACKER, "ssh-auth"))
        self.clock.advance(30)
        self.assertFalse(bans.strike(ATTACKER, "ssh-auth"))
        self.clock.advance(29)
        self.assertTrue(bans.strike(ATTACKER, "ssh-auth"))
        self.assertTrue(bans.banned(ATTACKER))
        self.assertEqual((bans.totals["ssh-auth"], bans.active()), (1, 1))
        [line] = self.log.lines("banned")
        for part in (ATTACKER, "600 s", "3 ssh-auth strikes"):
            self.assertIn(part, line)

    def test_window_reopens(self) -> None:
        bans = BanList(self.clock, settings(garbage=2))
        bans.strike(ATTACKER, "garbage")
        self.clock.advance(60)
        self.assertFalse(bans.strike(ATTACKER, "garbage"), "the first strike's window closed")
        self.assertTrue(bans.strike(ATTACKER, "garbage"))

    def test_kinds_count_apart(self) -> None:
        bans = BanList(self.clock, settings(garbage=2, limit=2))
        bans.strike(ATTACKER, "garbage")
        self.assertFalse(bans.strike(ATTACKER, "limit"))

    def test_expiry(self) -> None:
        bans = BanList(self.clock, settings(garbage=1))
        bans.strike(ATTACKER, "garbage")
        self.clock.advance(599.9)
        self.assertTrue(bans.banned(ATTACKER))
        self.clock.advance(0.1)
        self.assertEqual(bans.active(), 0)
        self.assertFalse(bans.banned(ATTACKER))
        [line] = self.log.lines("expired")
        self.assertIn(ATTACKER, line)

    def test_zero_disables_a_kind(self) -> None:
        bans = BanList(self.clock, settings(garbage=0))
        for _ in range(1000):
            self.assertFalse(bans.strike(ATTACKER, "garbage"))
        self.assertEqual(bans.tracked(), 0)

    def test_allow_list(self) -> None:
        bans = BanList(self.clock, BanSettings(thresholds={"garbage": 1}, allow=parse_allow(["10.0.0.0/8"])))
        self.assertFalse(bans.strike("10.1.2.3", "garbage"))
        self.assertTrue(bans.strike("11.1.2.3", "garbage"))
        self.assertEqual(parse_allow(["none"]), ())

    def test_defaults(self) -> None:
        bans = BanList(self.clock)
        self.assertTrue(bans.allowed("127.0.0.1"))
        self.assertTrue(bans.allowed("::1"))
        self.assertFalse(bans.allowed("127.0.0.2"))
        self.assertEqual(dict(bans.settings.thresholds), {"ssh-auth": 10, "garbage": 20, "limit": 100})


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        door = build_admission(options, Clock())
        self.assertEqual(door.limits, AdmissionLimits(20000, 256, 50.0, 100.0))
        self.assertEqual((door.bans.settings.window, door.bans.settings.duration), (60.0, 600.0))
        self.assertTrue(door.bans.allowed("127.0.0.1"))
        self.assertEqual((options["websocket-idle-timeout"], options["tcp-idle-timeout"]), (3600.0, 3600.0))
        self.assertEqual(options["tls-handshake-timeout"], 10.0)
        self.assertEqual(options.settings().websocket_idle_timeout, 3600.0)

    def test_given(self) -> None:
        options = self.parse("--max-connections", "5", "--ban-garbage", "0", "--ban-allow", "10.0.0.0/8",
                             "--ban-allow", "192.0.2.1", "--websocket-idle-timeout", "7")
        door = build_admission(options, Clock())
        self.assertEqual(door.limits.max_connections, 5)
        self.assertEqual(door.bans.settings.thresholds["garbage"], 0)
        self.assertFalse(door.bans.allowed("127.0.0.1"), "a given allow-list replaces the default")
        self.assertTrue(door.bans.allowed("10.9.9.9"))
        self.assertEqual((options["websocket-idle-timeout"], options["tcp-idle-timeout"]), (7.0, 3600.0))

    def test_deprecated_tunnel_idle_timeout_sets_both(self) -> None:
        options = self.parse("--tunnel-idle-timeout", "42")
        self.assertEqual((options["websocket-idle-timeout"], options["tcp-idle-timeout"]), (42.0, 42.0))
        options = self.parse("--tunnel-idle-timeout", "42", "--tcp-idle-timeout", "9")
        self.assertEqual((options["websocket-idle-timeout"], options["tcp-idle-timeout"]), (42.0, 9.0))

    def test_bad_values(self) -> None:
        for argv in (["--max-connections", "-1"], ["--ban-allow", "not-a-network"], ["--ban-window", "0"]):
            self.assertRaises(usage.UsageError, self.parse, *argv)


class MetricsTests(SynchronousTestCase):
    def test_every_label_is_exposed(self) -> None:
        Conn.alive = []
        from prometheus_client import generate_latest

        from edd_gateway.ops.admin import Readiness
        from edd_gateway.front.drain import GatewayService
        from edd_gateway.ops.monitoring import Monitoring

        clock = Clock()
        metrics = GatewayMetrics()
        door = admission(clock, bans=settings(garbage=1))
        Monitoring(metrics, Readiness(), GatewayService(clock, 1.0)).admission(door)
        door.garbage(ATTACKER)
        door.admit(ATTACKER, Conn())
        door.hit("header-timeout", OTHER)
        text = generate_latest(metrics.registry).decode()
        self.assertIn('edd_gateway_connections_refused_total{reason="banned"} 1.0', text)
        self.assertIn('edd_gateway_bans_total{kind="garbage"} 1.0', text)
        self.assertIn("edd_gateway_bans_active 1.0", text)
        self.assertIn('edd_gateway_limit_hits_total{limit="header-timeout"} 1.0', text)
        for limit in LIMITS:
            self.assertIn(f'edd_gateway_limit_hits_total{{limit="{limit}"}}', text)


class HookTests(SynchronousTestCase):
    """The listeners ask admission; the protocols report hits and garbage."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.door = admission(self.clock, bans=settings(garbage=2, limit=2), max_per_client=1)

    def sniffed(self, factory: SniffingFactory, host: str) -> StringTransport:
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        protocol = factory.buildProtocol(transport.getPeer())
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def test_sniffer_refuses_and_aborts_before_the_timer(self) -> None:
        http = RecordingFactory()
        factory = SniffingFactory({Verdict.HTTP: http}, clock=self.clock, listener_name="l", admission=self.door)
        first = self.sniffed(factory, ATTACKER)
        second = self.sniffed(factory, ATTACKER)
        self.assertFalse(first.disconnecting)
        self.assertTrue(second.disconnecting, "aborted at once")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "no sniff timer for the refused one")
        self.assertEqual(len(factory.tracker), 1)

    def test_garbage_on_one_listener_bans_on_another(self) -> None:
        http = RecordingFactory()
        one = SniffingFactory({Verdict.HTTP: http}, clock=self.clock, listener_name="one", admission=self.door)
        two = SniffingFactory({Verdict.HTTP: http}, clock=self.clock, listener_name="two", admission=self.door)
        for _ in range(2):
            transport = self.sniffed(one, ATTACKER)
            transport.protocol.dataReceived(b"\x00\x01garbage")
            transport.protocol.connectionLost()
            transport.disconnected = True  # type: ignore[attr-defined]
        self.assertTrue(self.door.bans.banned(ATTACKER))
        self.assertTrue(self.sniffed(two, ATTACKER).disconnecting)
        self.assertFalse(self.sniffed(two, OTHER).disconnecting)

    def test_sniff_timeout_is_a_hit(self) -> None:
        factory = SniffingFactory({}, clock=self.clock, listener_name="l", admission=self.door)
        transport = self.sniffed(factory, ATTACKER)
        transport.protocol.dataReceived(b"GE")
        self.clock.advance(10)
        self.assertEqual(self.door.hits["sniff-timeout"], 1)

    def test_ssh_listener_refuses_by_returning_no_protocol(self) -> None:
        wrapped = RecordingFactory()
        factory = TrackedFactory(wrapped, ConnectionTracker("ssh"), self.door)
        peer = IPv4Address("TCP", ATTACKER, 4000)
        first = factory.buildProtocol(peer)
        self.assertIsNotNone(first)
        first.makeConnection(StringTransport(peerAddress=peer))  # type: ignore[union-attr]
        self.assertIsNone(factory.buildProtocol(peer))
        self.assertEqual(factory.tracker.accepted, 1)

    def test_ssh_listener_behind_a_proxy_admits_on_the_first_bytes(self) -> None:
        ssh = GatewaySSHFactory(directory(), MemoryHostKeyPins(), [key("host")], key("client"), MemoryReactorClock())
        factory = TrackedFactory(ssh, ConnectionTracker("haproxy:tcp:2222"), self.door, behind_proxy=True)
        balancer = IPv4Address("TCP", "10.0.0.1", 4000)
        protocols = [factory.buildProtocol(balancer) for _ in range(3)]
        self.assertNotIn(None, protocols, "the balancer's address is never admitted")
        # The PROXY header read, the transport names the client.
        transports = [StringTransport(peerAddress=IPv4Address("TCP", ATTACKER, 4000)) for _ in protocols]
        for protocol, transport in zip(protocols[:2], transports):
            protocol.makeConnection(transport)  # type: ignore[union-attr]  # not None: checked above
            protocol.dataReceived(b"SSH-2.0-client\r\n")  # type: ignore[union-attr]  # not None: checked above
        self.assertFalse(transports[0].disconnecting, "admitted")
        self.assertTrue(transports[1].disconnecting, "over the per-client cap once its client is known")

    def test_http_limits_and_garbage(self) -> None:
        harness = ProxyHarness([], ProxySettings(max_request_line=10, header_timeout=5.0))
        harness.factory.admission = self.door  # type: ignore[attr-defined]
        client = harness.connect_client(ATTACKER)
        client.send(b"GET /" + b"a" * 20 + b" HTTP/1.1\r\n\r\n")
        self.assertIn(b"414", client.received())
        client = harness.connect_client(OTHER)
        client.send(b"GET / HTTP/1.1\r\n")
        harness.clock.advance(5)
        self.assertIn(b"408", client.received())
        client = harness.connect_client("192.0.2.5")
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.assertIn(b"400", client.received())
        self.assertEqual((self.door.hits["request-line"], self.door.hits["header-timeout"]), (1, 1))
        self.door.garbage("192.0.2.5")
        self.assertTrue(self.door.bans.banned("192.0.2.5"), "the 400 was the first garbage strike")

    def test_keepalive_idle_close_is_counted(self) -> None:
        harness = ProxyHarness([], ProxySettings(keepalive_timeout=3.0))
        harness.factory.admission = self.door  # type: ignore[attr-defined]
        client = harness.connect_client(ATTACKER)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"404", client.received(), "answered, and kept alive")
        harness.clock.advance(3)
        self.assertTrue(client.closing)
        self.assertEqual(self.door.hits["idle"], 1)
        self.assertFalse(self.door.bans.banned(ATTACKER))


class TLSHandshakeTimeoutTests(ListenerCase):
    def test_handshake_must_finish_in_time(self) -> None:
        door = admission(self.reactor)
        factory = self.make_factory(self.store, handshake_timeout=4.0)
        factory.admission = door
        _, transport = self.connect(factory)
        client = MemoryClient(b"a.cloud.test")
        transport.protocol.dataReceived(client.feed(b""))
        self.reactor.advance(0)
        self.assertTrue(transport.connected, "ClientHello answered; the client never finishes")
        self.reactor.advance(3.9)
        self.assertTrue(transport.connected)
        self.reactor.advance(0.2)
        self.assertFalse(transport.connected)
        self.assertEqual(door.hits["tls-handshake-timeout"], 1)

    def test_finished_handshake_cancels_the_timer(self) -> None:
        factory = self.make_factory(self.store, handshake_timeout=4.0)
        _, transport = self.connect(factory)
        self.handshake(MemoryClient(b"a.cloud.test"), transport)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_malformed_hello_is_garbage(self) -> None:
        door = admission(self.reactor, bans=settings(garbage=1))
        self.factory.admission = door
        _, transport = self.connect()
        transport.protocol.dataReceived(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        self.assertFalse(transport.connected)
        self.assertTrue(door.bans.banned("198.51.100.9"))


class RelayIdleTests(SynchronousTestCase):
    def test_on_idle_is_called_when_the_idle_timeout_closes(self) -> None:
        from edd_gateway.net.relay import splice

        clock = MemoryReactorClock()
        idled: list[int] = []
        a, b = HandoverTransport(), HandoverTransport()
        splice(a, b, idle_timeout=5.0, clock=clock, on_idle=lambda: idled.append(1))
        clock.advance(5.0)
        self.assertEqual(idled, [1])
