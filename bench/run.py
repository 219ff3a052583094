"""
One command for the side-by-side benchmarks of the gateway's HTTP proxy:
``python bench/run.py`` starts a backend, the gateway and its peers on
loopback ports, measures keep-alive small responses (``keepalive.py``), big
transfers (``transfer.py``) and the gateway's memory under a slow reader
(``slowreader.py``), prints tables and a pass/fail summary, writes
``bench/results/<timestamp>.json`` (logs beside it) and stops everything it
started, also on Ctrl-C or an error.

A later benchmark (TLS handshakes, passthrough, SSH, event propagation) is a
module with a ``run_*`` function, a name in L{PARTS}, and rows in
``report.TARGETS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from _procs import ProcessSet, StartError, rss_kib, usable_cpus
from backend import start_backend
from keepalive import KeepaliveSettings, cpu_ratios, ratios as keepalive_ratios, run_keepalive
from proxies import DEFAULT_GATEWAY_CMD, PEER_ORDER, PeerSetup, start_peers
from report import acceptance, machine, render_text, versions, write_json
from slowreader import run_slow_reader
from transfer import TRANSFER_PEERS, TransferSettings, download, ratios as transfer_ratios, run_transfer

BENCH_DIR = Path(__file__).resolve().parent
PARTS = ("http", "transfer", "slow")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--only", action="append", choices=PARTS, help="run only this part (repeatable); default: all")
    add("--duration", type=float, default=10.0, help="seconds of each wrk measurement (default 10)")
    add("--connections", type=int, default=50, help="wrk keep-alive connections (default 50)")
    add("--threads", type=int, default=2, help="wrk threads (default 2)")
    add("--rounds", type=int, default=3, help="keep-alive rounds, peers interleaved; medians reported (default 3)")
    add("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each measurement (default 2)")
    add("--size-mib", type=int, default=256, help="size of the download/upload (default 256)")
    add("--repeats", type=int, default=5, help="transfers per peer and direction, interleaved; median (default 5)")
    add("--slow-seconds", type=float, default=20.0, help="about how long the slow read lasts (default 20)")
    add("--peers", default=",".join(PEER_ORDER), help=f"comma-separated peers (default {','.join(PEER_ORDER)})")
    add("--gateway-cmd", default=DEFAULT_GATEWAY_CMD,
        help="gateway command; {twistd} {python} {routes} {port} {bench} are filled in (default: %(default)s)")
    add("--python", default=sys.executable,
        help="interpreter with Twisted, for the gateway and twisted.web.proxy (default: this one)")
    add("--backend", choices=("auto", "nginx", "python"), default="auto",
        help="backend server (default auto: nginx when installed)")
    add("--pin", choices=("split", "none"), default="split",
        help="split: proxies on the first CPU, backend + wrk + curl on the others (default); none: no pinning")
    add("--results-dir", type=Path, default=BENCH_DIR / "results", help="where the JSON goes (default bench/results)")
    return parser.parse_args(argv)


def cpu_layout(pin: str) -> tuple[list[int] | None, list[int] | None, str]:
    """(proxy CPUs, load CPUs, description); no pinning on one CPU or when asked."""
    cpus = usable_cpus()
    if pin == "none" or len(cpus) < 2:
        return None, None, "none (scheduler's choice)"
    proxy, load = cpus[:1], cpus[1:]
    return proxy, load, f"proxy under test on CPU {proxy[0]}; backend, wrk and curl on CPU {','.join(map(str, load))}"


def wanted_peers(parts: Sequence[str], requested: Sequence[str]) -> list[str]:
    needed: set[str] = set()
    if "http" in parts:
        needed.update(PEER_ORDER)
    if "transfer" in parts:
        needed.update(TRANSFER_PEERS)
    if "slow" in parts:
        needed.update(("direct", "gateway"))
    return [name for name in PEER_ORDER if name in needed and name in requested]


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def measure(args: argparse.Namespace, procs: ProcessSet, workdir: Path, results: dict[str, Any]) -> None:
    parts = args.only or list(PARTS)
    proxy_cpus, load_cpus, results["settings"]["pin_description"] = cpu_layout(args.pin)
    size = args.size_mib << 20
    print("starting the backend and the peers ...", flush=True)
    backend = start_backend(procs, workdir, args.backend, size, load_cpus)
    results["backend"] = backend.kind
    results["notes"].extend(backend.notes)
    setup = PeerSetup(procs, workdir, backend, proxy_cpus, args.python, args.gateway_cmd)
    peers, results["peer_errors"] = start_peers(setup, wanted_peers(parts, args.peers.split(",")))
    print(f"answering 200: {', '.join(peers)}", flush=True)
    gateway = peers.get("gateway")
    if gateway and gateway.pid:
        results["gateway_rss_at_start_mib"] = round((rss_kib(gateway.pid) or 0) / 1024, 1)

    if "http" in parts:
        settings = KeepaliveSettings(args.duration, args.connections, args.threads, args.warmup, load_cpus)
        measured = run_keepalive(peers, settings, args.rounds)
        results["keepalive"] = {
            "peers": measured,
            "gateway_ratio": keepalive_ratios(measured),
            "gateway_cpu_ratio": cpu_ratios(measured),
        }

    transfer_settings = TransferSettings(size, backend.upload_path, args.repeats, load_cpus)
    if "transfer" in parts:
        measured = run_transfer(peers, transfer_settings)
        results["transfer"] = {
            "peers": measured,
            "gateway_ratio": transfer_ratios(measured),
            "gateway_ratio_by_peer": {
                name: transfer_ratios(measured, reference=name) for name in measured if name != "gateway"
            },
        }

    if "slow" in parts:
        if gateway is None or "direct" not in peers:
            results["slow"] = {"error": "needs the gateway and direct peers"}
            return
        direct = results.get("transfer", {}).get("peers", {}).get("direct", {}).get("download", {}).get("mb_per_s")
        try:
            if direct is None:
                download(peers["direct"], transfer_settings)  # warm-up
                direct = download(peers["direct"], transfer_settings)
            results["slow"] = run_slow_reader(gateway, direct, transfer_settings, args.slow_seconds)
        except (RuntimeError, ValueError, OSError) as error:
            results["slow"] = {"error": str(error)}


def keep_logs(workdir: Path, destination: Path) -> None:
    logs = sorted(workdir.glob("*.log"))
    if logs:
        destination.mkdir(parents=True, exist_ok=True)
        for log in logs:
            shutil.copy(log, destination / log.name)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    # SIGINT too: a shell starting us in the background would have it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(args.python, dict(os.environ)),
        "settings": {
            "parts": args.only or list(PARTS), "duration": args.duration, "connections": args.connections,
            "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup, "size_mib": args.size_mib,
            "repeats": args.repeats, "slow_seconds": args.slow_seconds, "gateway_cmd": args.gateway_cmd,
            "pin": args.pin,
        },  # fmt: skip
        "notes": [],
    }
    # Other work on the machine skews every figure; the load average shows whether there was any.
    results["load_average_before"] = [round(load, 2) for load in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="edd-bench-"))
    try:
        with ProcessSet(workdir) as procs:
            measure(args, procs, workdir, results)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    except StartError as error:
        print(f"\nthe backend did not start: {error}", file=sys.stderr)
        return 1
    finally:
        keep_logs(workdir, args.results_dir / f"{stamp}-logs")
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    results["acceptance"] = acceptance(results)
    path = write_json(results, args.results_dir, stamp)
    print()
    print(render_text(results))
    print(f"\nresults: {path}\nlogs: {args.results_dir / f'{stamp}-logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
