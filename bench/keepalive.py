"""
Keep-alive small responses: wrk with N keep-alive connections against each
peer's ``/small``, after a short warm-up, giving requests/s, p50 and p99
latency, the errors wrk saw, and the proxy's CPU time per request (read from
``/proc`` around the run, so a peer's cost shows even when something else is
the bottleneck).

L{parse_wrk} is a pure function of wrk's text output.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from _procs import LOOPBACK, cpu_seconds, run_tool
from proxies import BENCH_HOST, Peer

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class KeepaliveSettings:
    duration: float
    connections: int
    threads: int
    warmup: float
    load_cpus: Sequence[int] | None


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unknown wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), request count and errors from C{wrk --latency} output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    percentiles = {
        f"p{int(float(share))}_ms": _latency_ms(value)
        for share, value in re.findall(r"^\s+([\d.]+)%\s+(\S+)\s*$", output, re.M)
    }
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", output, re.M)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": float(rps.group(1)),
        "requests": int(total.group(1)) if total else None,
        **percentiles,
        "socket_errors": dict(
            zip(("connect", "read", "write", "timeout"), map(int, socket_errors.groups()))
        )
        if socket_errors
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def _wrk(peer: Peer, settings: KeepaliveSettings, seconds: float) -> str:
    argv = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-H",
        f"Host: {BENCH_HOST}",
        f"http://{LOOPBACK}:{peer.port}/small",
    ]
    return run_tool(argv, cpus=settings.load_cpus, timeout=seconds + 60)


def measure_peer(peer: Peer, settings: KeepaliveSettings) -> dict[str, Any]:
    if settings.warmup > 0:
        _wrk(peer, settings, settings.warmup)
    cpu_before = cpu_seconds(peer.pid) if peer.pid else None
    output = _wrk(peer, settings, settings.duration)
    result = parse_wrk(output)
    if cpu_before is not None and peer.pid and result["requests"]:
        spent = cpu_seconds(peer.pid) - cpu_before
        result["proxy_cpu_s"] = round(spent, 3)
        result["proxy_cpu_us_per_request"] = round(spent * 1e6 / result["requests"], 1)
    result["errors_seen"] = result["non_2xx_3xx"] > 0 or any(result["socket_errors"].values())
    result["wrk_output"] = output
    return result


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per peer from several rounds: medians, errors summed, every round kept."""
    combined: dict[str, Any] = {
        key: round(statistics.median(r[key] for r in rounds), 3)
        for key in ("requests_per_s", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "proxy_cpu_us_per_request")
        if all(key in r for r in rounds)
    }
    combined["requests"] = sum(r["requests"] or 0 for r in rounds)
    combined["non_2xx_3xx"] = sum(r["non_2xx_3xx"] for r in rounds)
    combined["socket_errors"] = {
        kind: sum(r["socket_errors"][kind] for r in rounds) for kind in ("connect", "read", "write", "timeout")
    }
    combined["errors_seen"] = any(r["errors_seen"] for r in rounds)
    combined["rounds"] = [
        {k: v for k, v in r.items() if k != "wrk_output" or r["errors_seen"]} for r in rounds
    ]
    return combined


def run_keepalive(
    peers: dict[str, Peer], settings: KeepaliveSettings, rounds: int = 1
) -> dict[str, dict[str, Any]]:
    """Measure every peer once per round, peers interleaved, so a busy moment on the machine hits them alike."""
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
    failed: dict[str, dict[str, Any]] = {}
    for number in range(1, rounds + 1):
        for name, peer in peers.items():
            if name in failed:
                continue
            print(
                f"  keep-alive round {number}/{rounds}: {name} "
                f"({settings.connections} connections, {settings.duration:g}s) ...",
                flush=True,
            )
            try:
                measured[name].append(measure_peer(peer, settings))
            except (RuntimeError, ValueError, OSError) as error:
                failed[name] = {"error": str(error)}
    return {name: failed.get(name) or _combine(measured[name]) for name in peers}


def ratios(results: dict[str, dict[str, Any]], subject: str = "gateway") -> dict[str, float]:
    """The subject's requests/s divided by each other peer's."""
    mine = results.get(subject, {}).get("requests_per_s")
    if not mine:
        return {}
    return {
        name: round(mine / result["requests_per_s"], 3)
        for name, result in results.items()
        if name != subject and result.get("requests_per_s")
    }


def cpu_ratios(results: dict[str, dict[str, Any]], subject: str = "gateway") -> dict[str, float]:
    """Each other proxy's CPU per request over the subject's: the requests/s ratio to expect
    if every proxy were held back by its own CPU alone, and steadier than requests/s when
    other work on the machine disturbs a run."""
    key = "proxy_cpu_us_per_request"
    mine = results.get(subject, {}).get(key)
    if not mine:
        return {}
    return {
        name: round(result[key] / mine, 3)
        for name, result in results.items()
        if name != subject and result.get(key)
    }
