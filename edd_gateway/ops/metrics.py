"""
The gateway's Prometheus metrics.

Everything is read at scrape time from plain counters the connection paths
already keep (the sniffers', TLS's, the state service's) or that
L{GatewayMetrics} keeps as an observer of endings (L{edd_gateway.ops.observe}).
A custom collector rather than prometheus-client's own Counter and
Histogram objects: their C{labels()} lookup and locking cost several
microseconds per request on a path that spends about a hundred in all,
while a dictionary increment costs a fraction of one.  prometheus-client
still does the exposition (text format, content negotiation).
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edd_gateway.ops.observe import HTTPRequestRecord, SSHSessionRecord, TunnelRecord

__all__ = ["GatewayMetrics", "Histogram", "LATENCY_BUCKETS", "ListenerStats"]

#: Upper bounds (seconds) of the latency histograms, as Prometheus' default
#: buckets with the sub-millisecond end a proxy needs.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-at-scrape histogram: one list increment per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        running = 0
        out = []
        for bound, count in zip((*map(_float_text, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


@dataclass
class ListenerStats:
    """What the collector reads of one listener: its name, connections by protocol, and live connections."""

    name: str
    active: Callable[[], int]
    by_protocol: Callable[[], dict[str, int]] = field(default=lambda: {})


class GatewayMetrics:
    """
    An observer of endings (L{edd_gateway.ops.observe.GatewayObserver}) and the
    collector of everything else.  Sources register zero-argument callables
    read at each scrape; nothing here runs between scrapes but the observer
    methods.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        #: (route label, status, scheme) -> requests; status 0: no response.
        self.http_requests: dict[tuple[str, int, str], int] = {}
        self.http_upstream: dict[str, Histogram] = {}
        self.http_duration: dict[str, Histogram] = {}
        #: scheme -> [bytes in, bytes out] of HTTP bodies.
        self.http_bytes: dict[str, list[int]] = {}
        self.bytes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.tunnels: collections.Counter[str] = collections.Counter()
        self.http2_events: collections.Counter[tuple[str, str]] = collections.Counter()
        self.ssh_logins: collections.Counter[str] = collections.Counter()
        self.ssh_sessions: collections.Counter[str] = collections.Counter()
        self.listeners: list[ListenerStats] = []
        self.gauges: list[tuple[str, str, Callable[[], Iterable[tuple[dict[str, str], float]]]]] = []
        self.counters: list[tuple[str, str, Callable[[], Iterable[tuple[dict[str, str], float]]]]] = []
        self.histograms: list[tuple[str, str, Histogram]] = []
        self.registry.register(_Collector(self))

    # Observer of endings

    def http_request(self, request: HTTPRequestRecord, now: float) -> None:
        # On every request: plain dicts keyed by strings that are made once
        # (the route's label, the scheme) and an int status, turned into
        # label text only at scrape time.
        route = request.route_label
        scheme = request.scheme
        key = (route, request.status, scheme)
        requests = self.http_requests
        requests[key] = requests.get(key, 0) + 1
        started = request.started
        responded = request.responded
        if responded is not None:
            histogram = self.http_upstream.get(route)
            if histogram is None:
                histogram = self.http_upstream[route] = Histogram()
            histogram.observe(responded - started)
        histogram = self.http_duration.get(route)
        if histogram is None:
            histogram = self.http_duration[route] = Histogram()
        histogram.observe(now - started)
        moved = self.http_bytes.get(scheme)
        if moved is None:
            moved = self.http_bytes[scheme] = [0, 0]
        moved[0] += request.bytes_in
        moved[1] += request.bytes_out

    def tunnel(self, record: TunnelRecord) -> None:
        self.tunnels[record.kind] += 1
        self.bytes[(record.kind, "in")] += record.bytes_up
        self.bytes[(record.kind, "out")] += record.bytes_down

    def ssh_session(self, record: SSHSessionRecord) -> None:
        self.ssh_sessions[record.outcome] += 1
        self.bytes[("ssh", "in")] += record.bytes_up
        self.bytes[("ssh", "out")] += record.bytes_down

    def ssh_login(self, outcome: str) -> None:
        self.ssh_logins[outcome] += 1

    def http2(self, event: str, code: str) -> None:
        self.http2_events[(event, code)] += 1

    # Sources read at scrape time

    def add_listener(self, listener: ListenerStats) -> None:
        self.listeners.append(listener)

    def add_gauge(self, name: str, documentation: str,
                  samples: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        """C{samples()} yields C{(labels, value)} at each scrape."""
        self.gauges.append((name, documentation, samples))

    def add_histogram(self, name: str, documentation: str, histogram: Histogram) -> None:
        """A histogram another part keeps (e.g. the event propagation lag)."""
        self.histograms.append((name, documentation, histogram))

    def add_counter(self, name: str, documentation: str,
                    samples: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        """Like L{add_gauge}, for values that only grow (C{name} without C{_total})."""
        self.counters.append((name, documentation, samples))


class _Collector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        connections = CounterMetricFamily(
            "edd_gateway_connections", "Connections accepted, by listener and the protocol they spoke.",
            labels=["listener", "protocol"])
        active = GaugeMetricFamily("edd_gateway_connections_active", "Connections open now, by listener.",
                                   labels=["listener"])
        for listener in m.listeners:
            for protocol, count in sorted(listener.by_protocol().items()):
                connections.add_metric([listener.name, protocol], count)
            active.add_metric([listener.name], listener.active())
        yield connections
        yield active

        requests = CounterMetricFamily("edd_gateway_http_requests", "HTTP requests answered, by route and status.",
                                       labels=["route", "status", "scheme"])
        for (route, status, scheme), count in sorted(m.http_requests.items()):
            requests.add_metric([route, str(status) if status else "none", scheme], count)
        yield requests
        yield _histograms("edd_gateway_http_upstream_response_seconds",
                          "Time from the request head to the backend's response head, by route.", m.http_upstream)
        yield _histograms("edd_gateway_http_request_duration_seconds",
                          "Time from the request head to the end of the response, by route.", m.http_duration)

        transferred = CounterMetricFamily("edd_gateway_bytes", "Payload bytes relayed, by protocol and direction "
                                          "(in: from clients).", labels=["protocol", "direction"])
        moved = collections.Counter(m.bytes)
        for scheme, (received, sent) in m.http_bytes.items():
            moved[(scheme, "in")] += received
            moved[(scheme, "out")] += sent
        for (protocol, direction), count in sorted(moved.items()):
            transferred.add_metric([protocol, direction], count)
        yield transferred
        yield _counter("edd_gateway_tunnels", "Byte tunnels ended, by kind.", "kind", m.tunnels)
        http2 = CounterMetricFamily("edd_gateway_http2_events", "HTTP/2 connections that carried a stream, "
                                    "streams opened, streams reset (by either side) and GOAWAYs sent, by error "
                                    "code.", labels=["event", "code"])
        for (event, code), count in sorted(m.http2_events.items()):
            http2.add_metric([event, code], count)
        yield http2
        yield _counter("edd_gateway_ssh_logins", "SSH login attempts, by outcome.", "outcome", m.ssh_logins)
        yield _counter("edd_gateway_ssh_sessions", "SSH connections ended, by outcome.", "outcome", m.ssh_sessions)

        for name, documentation, samples in m.gauges:
            yield _family(GaugeMetricFamily, name, documentation, list(samples()))
        for name, documentation, samples in m.counters:
            yield _family(CounterMetricFamily, name, documentation, list(samples()))
        for name, documentation, histogram in m.histograms:
            family = HistogramMetricFamily(name, documentation)
            family.add_metric([], histogram.buckets(), histogram.total)
            yield family


def _counter(name: str, documentation: str, label: str, counts: collections.Counter[str]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _histograms(name: str, documentation: str, histograms: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    for route, histogram in sorted(histograms.items()):
        family.add_metric([route], histogram.buckets(), histogram.total)
    return family


def _family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, documentation: str,
            samples: list[tuple[dict[str, str], float]]) -> Metric:
    labels = sorted(samples[0][0]) if samples else []
    family = kind(name, documentation, labels=labels)
    for sample_labels, value in samples:
        family.add_metric([sample_labels[label] for label in labels], value)
    return family
