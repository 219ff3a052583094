"""
What a run reports: the machine and tool versions, the tables printed at the
end, the pass/fail summary against issue 2's acceptance targets, and the
JSON file written to ``bench/results/<timestamp>.json``.

The acceptance checks are data (L{TARGETS}) so that later benchmarks add
their own rows without touching the printing code.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from proxies import REPO_ROOT


def _first_line(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (completed.stdout + completed.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20,
    }


def versions(python: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "nginx": _first_line(["nginx", "-v"]) or _first_line(["/usr/sbin/nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]) or _first_line(["/usr/sbin/haproxy", "-v"]),
        "wrk": _first_line(["wrk", "--version"]),
        "curl": _first_line(["curl", "--version"]),
        "python": _first_line([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "twisted": _first_line([python, "-c", "import twisted; print(twisted.__version__)"]),
        "uvloop": _first_line([python, "-c", "import uvloop; print(uvloop.__version__)"]),
        "gateway_commit": _first_line(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], env),
    }


@dataclass(frozen=True)
class Target:
    """One acceptance target: how to read the figure from the results, and the rule it must meet."""

    name: str
    rule: str
    value: Callable[[dict[str, Any]], float | None]
    passes: Callable[[float], bool]


def _dig(results: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _at(*keys: str) -> Callable[[dict[str, Any]], Any]:
    return lambda results: _dig(results, *keys)


TARGETS = (
    Target("keep-alive rps vs nginx", ">= 0.30", _at("keepalive", "gateway_ratio", "nginx"), lambda v: v >= 0.30),
    Target("keep-alive rps vs twisted.web.proxy", ">= 6",
           _at("keepalive", "gateway_ratio", "twisted"), lambda v: v >= 6),
    Target("keep-alive p99 latency (ms)", "< 10", _at("keepalive", "peers", "gateway", "p99_ms"), lambda v: v < 10),
    Target("keep-alive errors (non-2xx + socket)", "== 0", lambda r: _gateway_errors(r), lambda v: v == 0),
    Target("download MB/s vs nginx", ">= 0.8", _at("transfer", "gateway_ratio", "download"), lambda v: v >= 0.8),
    Target("upload MB/s vs nginx", ">= 0.8", _at("transfer", "gateway_ratio", "upload"), lambda v: v >= 0.8),
    Target("slow reader RSS growth (MiB)", "< 32", lambda r: _slow_growth(r), lambda v: v < 32),
)


def _gateway_errors(results: dict[str, Any]) -> float | None:
    gateway = _dig(results, "keepalive", "peers", "gateway")
    if not gateway or "socket_errors" not in gateway:
        return None
    return gateway["non_2xx_3xx"] + sum(gateway["socket_errors"].values())


def _slow_growth(results: dict[str, Any]) -> float | None:
    slow = results.get("slow")
    if not slow or not slow.get("complete"):
        return None
    return slow["growth_mib"]


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for target in TARGETS:
        value = target.value(results)
        passed = None if value is None else target.passes(value)
        checks.append({"target": target.name, "rule": target.rule, "value": value, "passed": passed})
    return checks


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def keepalive_table(part: dict[str, Any]) -> str:
    rows = []
    for name, peer in part["peers"].items():
        if "error" in peer:
            rows.append([name, "error", *[""] * 5])
            continue
        errors = peer["non_2xx_3xx"] + sum(peer["socket_errors"].values())
        rows.append([
            name, _num(peer["requests_per_s"], 0), _num(peer.get("p50_ms"), 2), _num(peer.get("p99_ms"), 2),
            _num(peer.get("proxy_cpu_us_per_request"), 1), str(errors), _num(part["gateway_ratio"].get(name), 2),
        ])  # fmt: skip
    header = ["peer", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "errors", "gateway / peer"]
    return _table(header, rows)


def transfer_table(part: dict[str, Any]) -> str:
    rows = []
    for name, peer in part["peers"].items():
        row = [name]
        for direction in ("download", "upload"):
            row.append("error" if "error" in peer[direction] else _num(peer[direction]["mb_per_s"]))
        for direction in ("download", "upload"):
            row.append(_num(part["gateway_ratio_by_peer"].get(name, {}).get(direction), 2))
        for key in ("proxy_cpu_s_per_gib", "peak_rss_mib"):
            digits = 2 if key == "proxy_cpu_s_per_gib" else 1
            row.extend(_num(peer[direction].get(key), digits) for direction in ("download", "upload"))
        rows.append(row)
    header = [
        "peer", "down MB/s", "up MB/s", "gateway / peer down", "up",
        "proxy CPU s/GiB down", "up", "peak RSS MiB down", "up",
    ]  # fmt: skip
    return _table(header, rows)


def render_text(results: dict[str, Any]) -> str:
    parts = [f"machine: {results['machine']['cores']} cores ({results['machine']['cpu_model']}), "
             f"pinning: {results['settings']['pin_description']}, "
             f"load average before {results['load_average_before'][0]}"]  # fmt: skip
    for name, problem in results.get("peer_errors", {}).items():
        parts.append(f"peer {name} left out: {problem}")
    for note in results.get("notes", []):
        parts.append(f"note: {note}")
    if "keepalive" in results:
        settings = results["settings"]
        parts.append(
            f"\nkeep-alive /small, wrk -t{settings['threads']} -c{settings['connections']} "
            f"-d{settings['duration']:g}s, "
            f"median of {settings['rounds']} rounds"
        )
        parts.append(keepalive_table(results["keepalive"]))
        cpu_ratio = results["keepalive"].get("gateway_cpu_ratio", {})
        if cpu_ratio:
            listed = ", ".join(f"{name} {ratio:.2f}" for name, ratio in cpu_ratio.items())
            parts.append(f"  CPU per request, peer / gateway (the rps ratio if each were CPU-bound): {listed}")
        for name, peer in results["keepalive"]["peers"].items():
            if "error" in peer:
                parts.append(f"  {name}: {peer['error']}")
            elif peer.get("errors_seen"):
                parts.append(f"  {name}: wrk saw errors:\n{peer['wrk_output']}")
    if "transfer" in results:
        parts.append(f"\n{results['settings']['size_mib']} MiB transfers (median of {results['settings']['repeats']})")
        parts.append(transfer_table(results["transfer"]))
        for name, peer in results["transfer"]["peers"].items():
            for direction, figures in peer.items():
                if "error" in figures:
                    parts.append(f"  {name} {direction}: {figures['error']}")
    slow = results.get("slow")
    if slow and "error" not in slow:
        parts.append(
            f"\nslow reader through {slow['peer']}: {slow['bytes']:,} bytes, status {slow['status']}, "
            f"limit {slow['limit_mb_per_s']} MB/s (direct {slow['direct_mb_per_s']} MB/s), {slow['seconds']} s; "
            f"RSS baseline {slow['baseline_rss_mib']} MiB, peak {slow['peak_rss_mib']} MiB, "
            f"growth {slow['growth_mib']} MiB"
        )
    elif slow:
        parts.append(f"\nslow reader: {slow['error']}")
    parts.append(f"\nacceptance (gateway, {results['machine']['cores']} cores):")
    for check in results["acceptance"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[check["passed"]]
        parts.append(f"  {verdict}  {check['target']}: {_num(check['value'], 2)} (target {check['rule']})")
    return "\n".join(parts)


def write_json(results: dict[str, Any], directory: Path, stamp: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
