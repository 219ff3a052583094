"""
What C{/metrics} and C{/readyz} read from the running gateway: the sources
of L{edd_gateway.ops.metrics.GatewayMetrics} and the parts of
L{edd_gateway.ops.admin.Readiness}, wired to the pieces L{edd_gateway.tap}
builds.  Everything here runs at scrape or probe time only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

from edd_gateway.ops.admin import DEGRADED, DOWN, OK, Part, Readiness
from edd_gateway.front.admission import LIMITS, REFUSAL_REASONS, Admission
from edd_gateway.front.bans import BAN_KINDS
from edd_gateway.front.drain import ConnectionTracker, GatewayService
from edd_gateway.ops.metrics import GatewayMetrics, Histogram, ListenerStats
from edd_gateway.routes.table import LiveRouteTable
from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.state.service import StateService
from edd_gateway.tls.service import CertificateRenewalService
from edd_gateway.tls.store import DEFAULT_WARN_DAYS, CertificateStore
from edd_gateway.tls.tickets import RotatingTicketKeys, TicketKeyRing, TicketKeysFile

__all__ = ["Monitoring", "ReloadCounts"]

Samples = Iterable[tuple[dict[str, str], float]]


class ReloadCounts(Protocol):
    """The routes file's keeper: C{results} counts C{ok}/C{failed} reloads."""

    results: Any
    last_error: str | None


class Monitoring:
    """Registers the running gateway's parts with the metrics and readiness."""

    def __init__(self, metrics: GatewayMetrics, readiness: Readiness, gateway: GatewayService) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.gateway = gateway
        #: What the state service measures through its C{on_propagated}
        #: callback (seconds from an event's or a change notification's
        #: arrival to its change being served), read by the state metrics.
        self.event_propagation = Histogram()
        readiness.parts["draining"] = lambda: Part(DOWN, "the gateway is stopping", required=True) \
            if gateway.draining else Part(OK, required=True)
        metrics.add_gauge("edd_gateway_draining", "1 while the gateway drains before exiting.",
                          lambda: [({}, float(gateway.draining))])

    def listener(self, factory: SniffingFactory) -> None:
        stats = factory.stats

        def by_protocol() -> dict[str, int]:
            # Connections that spoke none of the three went to raw TCP (container ports).
            counts = {("TCP" if kind is Verdict.UNKNOWN else str(kind)): count
                      for kind, count in stats.handed_off.items()}
            counts["unknown"] = stats.unknown
            if factory.default is None:
                # Otherwise they were handed to the default kind, counted there.
                counts["silent"] = stats.silent_timeouts
            counts["unsupported"] = sum(stats.unsupported.values())
            counts["early-close"] = stats.closed_early + stats.partial_timeouts
            return counts

        self._listener(factory.tracker, by_protocol)

    def plain_listener(self, tracker: ConnectionTracker, protocol: str) -> None:
        self._listener(tracker, lambda: {protocol: tracker.accepted})

    def _listener(self, tracker: ConnectionTracker, by_protocol: Any) -> None:
        self.metrics.add_listener(ListenerStats(tracker.name, lambda: len(tracker), by_protocol))

    def routes(self, live: LiveRouteTable, keeper: ReloadCounts) -> None:
        metrics = self.metrics
        metrics.add_gauge("edd_gateway_routes", "Routes in the live table.", lambda: [({}, float(len(live.current)))])
        metrics.add_counter("edd_gateway_routes_reloads", "Routes file reloads, by result.",
                            lambda: [({"result": result}, float(keeper.results[result])) for result in ("ok", "failed")])

        def part() -> Part:
            if keeper.last_error:
                return Part(DEGRADED, f"the last routes file was refused ({keeper.last_error}); "
                                      f"serving the last good table", required=False)
            return Part(OK, f"{len(live.current)} routes")

        self.readiness.parts["routes"] = part

    def tls(self, store: CertificateStore, renewal: CertificateRenewalService, stats: Any) -> None:
        metrics = self.metrics

        def tls_samples() -> Samples:
            yield {"result": "ok"}, stats.handshakes
            yield {"result": "failed"}, stats.handshake_failures

        metrics.add_counter("edd_gateway_tls_handshakes", "TLS handshakes of terminated connections, by result.",
                            tls_samples)

        def hello_samples() -> Samples:
            for outcome in ("terminated", "passed_through", "malformed", "hello_timeouts", "no_certificate",
                            "backend_failures", "closed_early", "container_refusals"):
                yield {"outcome": outcome}, getattr(stats, outcome)

        metrics.add_counter("edd_gateway_tls_connections", "TLS connections by what became of their ClientHello.",
                            hello_samples)
        metrics.add_counter("edd_gateway_certificate_reloads", "Certificate pairs reloaded, by result.",
                            lambda: [({"result": r}, float(renewal.reloads[r])) for r in ("ok", "failed")])

        def expiry() -> Samples:
            for certificate in store.certificates():
                names = ",".join(sorted(certificate.names | {"*." + s for s in certificate.wildcard_suffixes}))
                yield {"names": names}, certificate.not_after.timestamp()

        metrics.add_gauge("edd_gateway_certificate_expiry_timestamp_seconds",
                          "When each loaded certificate expires (Unix time).", expiry)

        def part() -> Part:
            now = datetime.now(timezone.utc)
            certificates = store.certificates()
            if not certificates:
                return Part(DEGRADED, "no certificate loaded: TLS is refused")
            expired = [c for c in certificates if c.days_left(now) < 0]
            soon = [c for c in certificates if 0 <= c.days_left(now) < DEFAULT_WARN_DAYS]
            if expired:
                return Part(DEGRADED, f"{len(expired)} of {len(certificates)} certificates expired")
            if soon:
                return Part(DEGRADED, f"{len(soon)} of {len(certificates)} certificates expire within "
                                      f"{DEFAULT_WARN_DAYS} days")
            return Part(OK, f"{len(certificates)} certificates")

        self.readiness.parts["certificates"] = part

    def tickets(self, ring: TicketKeyRing | None, keeper: RotatingTicketKeys | TicketKeysFile | None) -> None:
        """Session tickets by outcome, and the key file's reloads (nothing when tickets use no keys of ours)."""
        if ring is None:
            return
        self.metrics.add_counter(
            "edd_gateway_tls_tickets", "TLS session tickets: issued, resumed (encrypting key), renewed (an older "
            "key), unknown_key (presented, not resumed).",
            lambda: [({"outcome": o}, float(ring.tickets[o])) for o in ("issued", "resumed", "renewed", "unknown_key")])
        if isinstance(keeper, TicketKeysFile):
            self.metrics.add_counter(
                "edd_gateway_tls_ticket_key_reloads", "Reads of the --tls-ticket-keys file, by result.",
                lambda: [({"result": r}, float(keeper.reloads[r])) for r in ("ok", "failed")])
        elif isinstance(keeper, RotatingTicketKeys):
            self.metrics.add_counter("edd_gateway_tls_ticket_key_rotations", "In-memory ticket keys drawn.",
                                     lambda: [({}, float(keeper.rotations))])

    def state(self, state: StateService | None, directory_ready: Any) -> None:
        """The database and NATS (C{state}), or the local containers file (C{directory_ready()})."""
        if state is None:
            self.readiness.parts["containers"] = lambda: Part(OK, required=True) if directory_ready() \
                else Part(DOWN, "the containers file is not loaded yet", required=True)
            return
        self._state_metrics(state)
        self._database_parts(state)
        self._feed_parts(state)

    def _state_metrics(self, state: StateService) -> None:
        """Which components are up, what the state service read and heard, how fast changes propagate."""
        metrics = self.metrics

        def up() -> Samples:
            status = state.status()
            yield {"component": "database"}, float(status.database_connected)
            if status.events_connected is not None:
                yield {"component": "nats"}, float(status.events_connected)
            if status.change_feed is not None:
                yield {"component": "change_feed"}, float(status.change_feed == "listening")

        metrics.add_gauge("edd_gateway_up", "1 when the gateway's connection to a component is up.", up)

        def syncs() -> Samples:
            status = state.status()
            yield {"kind": "full"}, status.full_resyncs
            yield {"kind": "refresh"}, status.refreshes
            yield {"kind": "event"}, status.events
            yield {"kind": "notification"}, status.notifications

        metrics.add_counter("edd_gateway_state_updates",
                            "Container state reads, NATS events and change notifications, by kind.", syncs)
        metrics.add_counter("edd_gateway_state_unannounced_changes",
                            "Container changes a full read found that no event or change notification announced "
                            "while a feed was active (a silent feed).",
                            lambda: [({}, float(state.status().unannounced_changes))])
        lag = self.event_propagation
        metrics.add_histogram("edd_gateway_event_propagation_seconds",
                              "Seconds from a NATS event's or a change notification's arrival to its change "
                              "being served.", lag)

    def _database_parts(self, state: StateService) -> None:
        """Readiness: the containers read at least once (required), PostgreSQL reachable now."""
        def containers() -> Part:
            status = state.status()
            if not status.containers_ready:
                return Part(DOWN, f"containers not read from PostgreSQL yet ({status.last_error or 'connecting'})",
                            required=True)
            return Part(OK, required=True)

        def database() -> Part:
            status = state.status()
            if status.database_connected:
                return Part(OK)
            return Part(DEGRADED, f"PostgreSQL unreachable ({status.last_error or 'reconnecting'}); "
                                  f"serving the last state read")

        self.readiness.parts["containers"] = containers
        self.readiness.parts["database"] = database

    def _feed_parts(self, state: StateService) -> None:
        """Readiness of the feeds configured: NATS, and the change feed (degraded only when nothing else announces)."""
        if state.events is not None:
            events = state.events

            def nats() -> Part:
                if not events.connected:
                    return Part(DEGRADED, "NATS disconnected; polling PostgreSQL instead")
                return Part(OK, events.mode or "")

            self.readiness.parts["nats"] = nats
        if state.changes is not None:
            changes = state.changes

            def change_feed() -> Part:
                if changes.state == "listening":
                    return Part(OK, "listening")
                detail = changes.state
                if changes.state == "not installed":
                    detail = "not installed (python -m edd_gateway install-change-feed DSN)"
                # Only degraded when nothing else announces changes either.
                if state.events is not None and state.events.connected:
                    return Part(OK, detail)
                return Part(DEGRADED, f"{detail}; polling PostgreSQL")

            self.readiness.parts["change_feed"] = change_feed

    def admission(self, admission: Admission) -> None:
        """Refusals, limit hits and bans (every label always present, so rates start at zero)."""
        metrics, bans = self.metrics, admission.bans
        metrics.add_counter("edd_gateway_connections_refused", "New connections refused at admission, by reason.",
                            lambda: [({"reason": r}, float(admission.refused[r])) for r in REFUSAL_REASONS])
        metrics.add_counter("edd_gateway_limit_hits", "Connections that hit a limit or timeout, by limit.",
                            lambda: [({"limit": limit}, float(admission.hits[limit])) for limit in LIMITS])
        metrics.add_counter("edd_gateway_bans", "Clients banned, by the kind of strikes that banned them.",
                            lambda: [({"kind": kind}, float(bans.totals[kind])) for kind in BAN_KINDS])
        metrics.add_gauge("edd_gateway_bans_active", "Clients banned now.", lambda: [({}, float(bans.active()))])
        metrics.add_gauge("edd_gateway_admission_clients",
                          "Client addresses whose connections, rate or refusals admission keeps in memory.",
                          lambda: [({}, float(admission.tracked()))])

    def ssh_keys(self) -> None:
        """SSH is served when its keys load at start (a bad key stops the start): nothing degrades at run time."""
        self.readiness.parts["ssh"] = lambda: Part(OK)
