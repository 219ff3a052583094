"""
Live state, measured: ``python bench/propagation.py`` starts a throwaway
PostgreSQL, a nats-server, a backend and ``twistd -n edd-gateway --database
... --nats ... --container-domain bench.test`` on loopback (and for the
change feed, a gateway of its own without NATS), then measures

 - event-to-route propagation: for each of C{--containers} (200) new
   containers, its rows are inserted, then (clock starts) its
   C{compute.container.<id>.started} event is published, and one keep-alive
   client asks for C{<id>.bench.test} until the first request that reaches
   the container (a 200 instead of the gateway's 503): p50, p99, max
   (issue 4's target: p99 under 50 ms; the original polled every 5 s);
 - commit-to-served propagation through the PostgreSQL change feed, with
   no event at all (C{feed_propagation_ms} in the figures): in a database of
   its own on the same server (so its triggers never reach the NATS
   gateways), the feed installed by the operator command (C{python -m
   edd_gateway install-change-feed DSN}), a gateway started with no NATS and
   an hour between polls and resyncs.  For each of C{--containers}
   containers, its rows are written as the compute service writes them
   (L{ComputeService}: created pending, then its port-80 rule, each in its
   own transaction); once the gateway's C{/metrics} says all were applied
   and each answers "pending", each is started in turn (clock starts when
   that COMMIT returns) and one keep-alive client asks until the first
   200: p50, p99, max (same target), and the mean of the gateway's own
   notification-to-served time over the starts
   (C{edd_gateway_event_propagation_seconds}), which tells the gateway's
   share of the figure from the rest (PostgreSQL's delivery, the client);
 - the cost of a container lookup with 10,000 containers against 10 (target:
   within 1.5 x): in process, the decision the HTTP side makes per request
   (the static route table, then the container directory) over random
   container hosts, in ns per lookup; and end to end, the median time of a
   request for a random container host through a gateway that loaded 10
   containers and through one that loaded 10,000, both running.  Each is
   measured in C{--rounds} interleaved rounds and the best round kept, so
   the machine's noise moves both sides alike.

C{--parts} picks among C{events}, C{feed} and C{lookup} (default: all three).
Figures go to C{bench/results/<timestamp>-propagation.json}.  Needs
PostgreSQL's binaries (as root they run as the postgres user) and
nats-server; everything listens on free loopback ports and is stopped at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from twisted.internet import asyncioreactor  # noqa: E402

# The stock asyncio loop, not the gateway's uvloop one: this process spawns
# pg_ctl and nats-server, and under uvloop their exits were sometimes never
# reaped (the run hung on a defunct child).
asyncioreactor.install(asyncio.new_event_loop())

from httptools import HttpResponseParser  # noqa: E402
from twisted.internet import protocol, task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402

from _procs import ProcessSet, free_port, wait_listening  # noqa: E402
from edd_gateway.routes.containers import ContainerRouter  # noqa: E402
from edd_gateway.routes.loader import load_routes_file  # noqa: E402
from edd_gateway.routes.table import LiveRouteTable, RouteTable  # noqa: E402
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot, IngressRule  # noqa: E402
from edd_gateway.state.events import REFRESHED_SUBJECT  # noqa: E402
from edd_gateway.tap import default_routes_path  # noqa: E402
from edd_gateway.testing import ComputeService, GatewayProcess, as_deferred, poll_until, run_process  # noqa: E402
from edd_gateway.testing.nats import ThrowawayNats  # noqa: E402
from edd_gateway.testing.postgres import ThrowawayPostgres  # noqa: E402
from edd_gateway.testing.replicas import KeepAliveProbe, connect_probe  # noqa: E402

DOMAIN = "bench.test"
PARTS = ("events", "feed", "lookup")
#: The change feed's own database on the same server, so that its triggers
#: never reach the gateways measuring NATS events.
FEED_DATABASE = "feed"
#: Seconds between polls and resyncs of the feed's gateway: only the feed can explain a change.
AN_HOUR = "3600"
LAG = "edd_gateway_event_propagation_seconds"
FOLLOWING = "state: following PostgreSQL change feed"
TARGET_P99_MS = 50.0
TARGET_LOOKUP_RATIO = 1.5


class MappedGateway(GatewayProcess):
    """The gateway whose listener (on a free port) clients know as port 80."""

    def command(self, args: Any) -> list[str]:
        return super().command([*args, "--port-map", f"{self.port}=80"])


class Prober(protocol.Protocol):
    """One keep-alive HTTP/1.1 client connection: L{get} answers with the status."""

    def __init__(self) -> None:
        self._parser = HttpResponseParser(self)
        self._waiting: Deferred[int] | None = None
        self._status = 0

    def get(self, host: str) -> Deferred[int]:
        self._waiting = Deferred()
        self.transport.write(f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # type: ignore[union-attr]
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(self._parser.get_status_code())

    def connectionLost(self, reason: Any = None) -> None:
        if self._waiting is not None:
            self._waiting.errback(ConnectionError("the gateway closed the connection"))


async def connect_prober(reactor: Any, port: int) -> Prober:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await endpoint.connect(protocol.Factory.forProtocol(Prober))  # type: ignore[no-any-return]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Bench:
    def __init__(self, reactor: Any, options: argparse.Namespace, work: Path, procs: ProcessSet) -> None:
        self.reactor, self.options, self.work, self.procs = reactor, options, work, procs
        self.results: dict[str, Any] = {}

    async def run(self) -> dict[str, Any]:
        reactor = self.reactor
        from txpostgres import txpostgres

        self.pg = ThrowawayPostgres(reactor)
        self.nats = ThrowawayNats(reactor)
        self.db = txpostgres.Connection(reactor)
        try:
            await self.pg.start()
            await self.pg.create_compute_tables()
            await self.nats.start()
            self.client = await self.nats.client()
            await self.db.connect(self.pg.dsn())
            self.start_backend()
            parts = self.options.parts
            if "events" in parts or "lookup" in parts:
                await self.measure()
            if "feed" in parts:
                await self.feed_propagation()
        finally:
            if self.db.pollable() is not None and not self.db.pollable().closed:
                self.db.close()
            await self.nats.cleanup()
            await self.pg.cleanup()
        return self.results

    def start_backend(self) -> None:
        self.backend_port = free_port()
        big = self.work / "big"
        big.write_bytes(b"")
        started = self.procs.start("backend", [sys.executable, str(BENCH_DIR / "peers" / "python_backend.py"),
                                               str(self.backend_port), str(big), "hello from a container\n"])
        wait_listening(started, self.backend_port)

    async def gateway(self, name: str) -> GatewayProcess:
        refreshed: list[bytes] = []

        async def heard(message: Any) -> None:
            refreshed.append(message.data)

        subscription = await as_deferred(self.client.subscribe(REFRESHED_SUBJECT, cb=heard))
        await as_deferred(self.client.flush())
        gateway = MappedGateway(self.work / name, self.reactor)
        await gateway.start(["--database", self.pg.dsn(), "--nats", self.nats.url, "--container-domain", DOMAIN,
                             "--poll-interval", "3600", "--resync-interval", "0"], timeout=30)
        await poll_until(lambda: refreshed, "the gateway's first full read", timeout=30, reactor=self.reactor)
        await as_deferred(subscription.unsubscribe())
        return gateway

    async def insert(self, cid: str) -> None:
        await self.db.runOperation("INSERT INTO containers (id, user_id, name, namespace, status, external_ip)"
                                   " VALUES (%s, 'u1', %s, %s, 'running', '127.0.0.1')",
                                   (cid, cid, f"compute-u1-{cid}"))
        await self.db.runOperation("INSERT INTO ingress_rules (container_id, port, target_port) VALUES (%s, 80, %s)",
                                   (cid, self.backend_port))

    async def publish(self, cid: str, action: str = "started") -> None:
        await as_deferred(self.client.publish(f"compute.container.{cid}.{action}",
                                              json.dumps({"container_id": cid}).encode()))
        await as_deferred(self.client.flush())

    async def measure(self) -> None:
        few = await self.gateway("gateway-10")
        for index in range(10):
            await self.insert(f"l{index}")
            await self.publish(f"l{index}", "started")
        small = await connect_prober(self.reactor, few.port)
        if "events" in self.options.parts:
            await self.propagation(small)
            # Back to 10 containers: the ones just started are deleted, as the compute service would.
            await self.db.runOperation("DELETE FROM containers WHERE id LIKE 'p%'")
            for index in range(self.options.containers):
                await self.publish(f"p{index:04d}", "deleted")
            await poll_until(lambda: self.status(small, f"p{self.options.containers - 1:04d}.{DOMAIN}", 503),
                             "the deleted containers to go", reactor=self.reactor)
        if "lookup" not in self.options.parts:
            small.transport.loseConnection()  # type: ignore[union-attr]
            await few.stop()
            return
        # 10,000 (by default) in the database: only a gateway started now reads them all.
        many = self.options.many
        await self.db.runOperation(
            "INSERT INTO containers (id, user_id, name, namespace, status, external_ip)"
            " SELECT 'l' || i, 'u1', 'l' || i, 'compute-u1-l' || i, 'running', '127.0.0.1'"
            " FROM generate_series(10, %s) AS i", (many - 1,))
        await self.db.runOperation(
            "INSERT INTO ingress_rules (container_id, port, target_port) SELECT 'l' || i, 80, %s"
            " FROM generate_series(10, %s) AS i", (self.backend_port, many - 1))
        lots = await self.gateway(f"gateway-{many}")
        large = await connect_prober(self.reactor, lots.port)
        # Rounds interleaved, the best round's median kept: the machine's
        # noise moves both alike.
        rounds: dict[int, list[float]] = {10: [], many: []}
        for _ in range(self.options.rounds):
            for count, prober in ((10, small), (many, large)):
                rounds[count].append(await self.request_cost(prober, count))
        for prober, gateway in ((small, few), (large, lots)):
            prober.transport.loseConnection()  # type: ignore[union-attr]
            await gateway.stop()
        best = {count: min(medians) for count, medians in rounds.items()}
        self.results["request"] = {
            "median_us_with_10": round(best[10], 1), f"median_us_with_{many}": round(best[many], 1),
            "ratio": round(best[many] / best[10], 3), "rounds": {str(k): [round(v, 1) for v in r]
                                                                   for k, r in rounds.items()},
        }
        self.results["lookup"] = lookup_costs(many, self.options.rounds)

    async def status(self, prober: Prober, host: str, expected: int) -> bool:
        return await prober.get(host) == expected

    async def propagation(self, prober: Prober) -> None:
        latencies: list[float] = []
        probes: list[int] = []
        for index in range(self.options.containers):
            cid = f"p{index:04d}"
            host = f"{cid}.{DOMAIN}"
            await self.insert(cid)
            started = time.perf_counter()
            await self.publish(cid)
            attempts = 0
            while True:
                attempts += 1
                if await prober.get(host) == 200:
                    break
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"{host} never became reachable")
            latencies.append((time.perf_counter() - started) * 1000)
            probes.append(attempts)
        self.results["propagation_ms"] = figures(latencies, probes)

    async def feed_propagation(self) -> None:
        """Commit to the first request served, with the change feed and no event at all."""
        await self.pg.create_database(FEED_DATABASE)
        await self.pg.create_compute_tables(FEED_DATABASE)
        dsn = self.pg.dsn(FEED_DATABASE)
        gateway = MappedGateway(self.work / "gateway-feed", self.reactor)
        installed = await run_process([sys.executable, "-m", "edd_gateway", "install-change-feed", dsn],
                                      env=gateway.environment(), reactor=self.reactor).result()
        if installed.exit_code != 0:
            raise RuntimeError(f"install-change-feed failed: {bytes(installed.out + installed.err).decode()}")
        compute = ComputeService(dsn, self.reactor)
        await compute.connect()
        try:
            await gateway.start(["--database", dsn, "--container-domain", DOMAIN, "--poll-interval", AN_HOUR,
                                 "--resync-interval", AN_HOUR], timeout=30)
            # Listening, and the first full read done: every later commit is announced and counted.
            await poll_until(lambda: FOLLOWING in gateway.log_text(),
                             "the gateway to follow the change feed", timeout=30, reactor=self.reactor)
            probe = await connect_probe(gateway.port, self.reactor)
            try:
                latencies, probes, notifications, seconds = await self.feed_rounds(gateway, compute, probe)
            finally:
                probe.close()
        finally:
            compute.close()
            await gateway.stop()
        self.results["feed_propagation_ms"] = {
            **figures(latencies, probes),
            "notifications": int(notifications),
            "gateway_mean_ms": round(seconds / notifications * 1000, 2) if notifications else None,
        }

    async def feed_rounds(self, gateway: GatewayProcess, compute: ComputeService,
                          probe: KeepAliveProbe) -> tuple[list[float], list[int], float, float]:
        """The starts, timed; and the gateway's own (count, seconds) of notification-to-served over them."""
        count = self.options.containers
        applied = lag_histogram(gateway)[0]
        hosts = []
        for index in range(count):
            new = await compute.create_container(f"{1000 + index % 10}", f"app-{index}")
            await compute.add_ingress(new.id, 80, self.backend_port)
            hosts.append((new.id, f"{new.id}.{DOMAIN}"))
        # Every row read by the gateway (a rule does not show while its
        # container is pending) before a start is timed, so that no start's
        # read queues behind theirs.
        await poll_until(lambda: lag_histogram(gateway)[0] >= applied + 2 * count, "the new rows to be read",
                         timeout=60, interval=0.05, reactor=self.reactor)
        for cid, host in hosts:
            answer = await probe.get(host, "/small")
            if answer.status != 503 or f"container {cid} is pending" not in answer.text:
                raise RuntimeError(f"{host} should be pending once its rows are read, got {answer!r}")
        latencies: list[float] = []
        probes: list[int] = []
        before = lag_histogram(gateway)
        for cid, host in hosts:
            started = await compute.start(cid, "127.0.0.1")
            attempts = 0
            while True:
                attempts += 1
                if (await probe.get(host, "/small")).status == 200:
                    break
                if time.monotonic() - started > 10:
                    raise RuntimeError(f"{host} never became reachable")
            latencies.append((time.monotonic() - started) * 1000)
            probes.append(attempts)
        after = lag_histogram(gateway)
        return latencies, probes, after[0] - before[0], after[1] - before[1]

    async def request_cost(self, prober: Prober, count: int) -> float:
        """The median time (us) of C{--requests} requests for random hosts among C{count} containers."""
        hosts = [f"l{random.randrange(count)}.{DOMAIN}" for _ in range(self.options.requests)]
        for host in hosts[:200]:  # warm-up: connections to the backend, caches, the allocator
            await prober.get(host)
        times: list[float] = []
        for host in hosts:
            started = time.perf_counter()
            status = await prober.get(host)
            times.append((time.perf_counter() - started) * 1e6)
            if status != 200:
                raise RuntimeError(f"{host} answered {status}")
        return statistics.median(times)


def figures(latencies: list[float], probes: list[int]) -> dict[str, Any]:
    return {
        "containers": len(latencies), "p50": round(percentile(latencies, 0.5), 2),
        "p99": round(percentile(latencies, 0.99), 2), "max": round(max(latencies), 2),
        "mean": round(statistics.mean(latencies), 2), "median_requests_until_reached": statistics.median(probes),
    }


def lag_histogram(gateway: GatewayProcess) -> tuple[float, float]:
    """The gateway's own notification-to-served count and sum of seconds, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(gateway.admin_url("/metrics"), timeout=10) as answer:
        text = answer.read().decode()
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples if sample.name in (f"{LAG}_count", f"{LAG}_sum")}
    return values.get(f"{LAG}_count", 0.0), values.get(f"{LAG}_sum", 0.0)


class _Listener:
    """What the router asks of a transport: the local address."""

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 80)


class LookupBench:
    """The HTTP side's decision for random container hosts among C{count}, in process."""

    def __init__(self, count: int, lookups: int = 100_000) -> None:
        rule = {80: IngressRule(80, 8080)}
        containers = {f"l{i}": Container(f"l{i}", "u1", "running", "127.0.0.1", ingress=rule) for i in range(count)}
        self.router = ContainerRouter(ContainerDirectory(ContainerSnapshot(containers, ready=True)), DOMAIN)
        self.live = LiveRouteTable(RouteTable(load_routes_file(default_routes_path())))
        self.hosts = [f"l{random.randrange(count)}.{DOMAIN}" for _ in range(lookups)]

    def ns_per_lookup(self) -> float:
        router, live, transport = self.router, self.live, _Listener()
        started = time.perf_counter()
        for host in self.hosts:  # as HTTPServerProtocol._route decides
            if router.under_domain(host):
                live.current.lookup(host, "/") or router.http_match(host, "/", transport)
            else:
                live.lookup(host, "/")
        return (time.perf_counter() - started) / len(self.hosts) * 1e9


def lookup_costs(many: int, rounds: int) -> dict[str, Any]:
    """Rounds interleaved, the best kept."""
    benches = {10: LookupBench(10), many: LookupBench(many)}
    times: dict[int, list[float]] = {10: [], many: []}
    for _ in range(rounds):
        for count, bench in benches.items():
            times[count].append(bench.ns_per_lookup())
    few, lots = min(times[10]), min(times[many])
    return {"ns_with_10": round(few, 1), f"ns_with_{many}": round(lots, 1), "ratio": round(lots / few, 3)}


def report(results: dict[str, Any], many: int) -> str:
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines = []
    if "propagation_ms" in results:
        propagation = results["propagation_ms"]
        lines += [
            f"event -> first request reaching the container, {propagation['containers']} containers:",
            f"  p50 {propagation['p50']} ms  p99 {propagation['p99']} ms  max {propagation['max']} ms"
            f"  (target p99 < {TARGET_P99_MS:g} ms: {verdict(propagation['p99'] < TARGET_P99_MS)})",
        ]
    if "feed_propagation_ms" in results:
        feed = results["feed_propagation_ms"]
        lines += [
            f"commit -> first request reaching the container, change feed, no event, {feed['containers']} containers:",
            f"  p50 {feed['p50']} ms  p99 {feed['p99']} ms  max {feed['max']} ms"
            f"  (target p99 < {TARGET_P99_MS:g} ms: {verdict(feed['p99'] < TARGET_P99_MS)});"
            f" the gateway's own notification -> served mean {feed['gateway_mean_ms']} ms",
        ]
    if "lookup" in results:
        lines += lookup_report(results, many, verdict)
    return "\n".join(lines)


def lookup_report(results: dict[str, Any], many: int, verdict: Any) -> list[str]:
    request, lookup = results["request"], results["lookup"]
    return [
        f"lookup in process: {lookup['ns_with_10']} ns with 10 containers, {lookup[f'ns_with_{many}']} ns with"
        f" {many}: x{lookup['ratio']} (target <= {TARGET_LOOKUP_RATIO}: "
        f"{verdict(lookup['ratio'] <= TARGET_LOOKUP_RATIO)})",
        f"request through the gateway (median): {request['median_us_with_10']} us with 10 containers,"
        f" {request[f'median_us_with_{many}']} us with {many}: x{request['ratio']}"
        f" (target <= {TARGET_LOOKUP_RATIO}: {verdict(request['ratio'] <= TARGET_LOOKUP_RATIO)})",
    ]


def parts_list(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are among {', '.join(PARTS)}; got {text!r}")
    return parts


async def main(reactor: Any, argv: list[str]) -> None:
    # task.react calls this before the reactor runs; children (pg_ctl,
    # nats-server) are reaped once its signal handling is up.
    await task.deferLater(reactor, 0, lambda: None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=200, help="containers started by events (200)")
    parser.add_argument("--many", type=int, default=10_000, help="the large directory size (10000)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per request-cost round (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each cost measure (5)")
    parser.add_argument("--parts", type=parts_list, default=PARTS,
                        help=f"comma-separated, among {', '.join(PARTS)} (default: all)")
    parser.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edd-bench-propagation-"))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    try:
        with ProcessSet(work) as procs:
            results = await Bench(reactor, options, work, procs).run()
    except BaseException:
        print(f"failed; the gateways' and the backend's logs are in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    results.update(load_average_after=os.getloadavg()[0], timestamp=stamp, cpus=os.cpu_count())
    print(report(results, options.many))
    out = Path(options.results_dir) / f"{stamp}-propagation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures: {out}")


if __name__ == "__main__":
    task.react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
