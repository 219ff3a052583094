"""
Instructions per request, for comparing code changes: ``python
bench/instructions.py REF [REF ...]`` runs, for each git ref (``HEAD``, a
commit, a branch; the working tree as ``.``), the gateway of that ref under
``valgrind --tool=callgrind`` in front of the bench's backend (nginx), warms
it up with wrk, zeroes the counters, drives C{--seconds} of ``wrk -c10`` at
C{--path} (``/small``: keep-alive GETs), dumps the counters and divides the
instructions executed (user space) by wrk's request count, for each of
C{--modes}: C{plain} (keep-alive HTTP), C{https} (keep-alive HTTPS, the
gateway terminating TLS with a P-256 certificate of its own helper) and
C{resumed} (HTTPS with C{Connection: close}: wrk keeps its TLS session, so
every request after the first is a new connection and a resumed TLS 1.3
handshake) and C{h2} (HTTP/2 on terminated TLS: C{h2load -c50 -m10}, a
fixed C{--h2-requests} after its own warm-up, since h2load counts requests,
not seconds) and C{h2-paths} (1,000 distinct paths, as a browser's
requests differ, taken in turn on one connection with 10 streams in
flight: h2load's connections all send the same paths in the same order, so
with more of them each would find what the one before it left in the
gateway's bounded tables, as no two browsers' requests would).  Wall-clock
figures move 2-3x between machines of this kind; instruction counts do not,
so a change is judged by these.

Each ref is checked out with ``git worktree`` into the run's temporary
directory and run from there (PYTHONPATH), with this interpreter's
packages.  Figures go to C{bench/results/<timestamp>-instructions.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from _procs import ProcessSet, free_port, log_tail, wait_listening  # noqa: E402
from backend import start_backend  # noqa: E402

HOST = "bench.test"


MODES = ("plain", "https", "resumed", "h2", "h2-paths")
DISTINCT_PATHS = 1000


def h2load(port: int, path: str, requests: int, distinct: bool = False) -> int:
    """
    Requests h2load completed of C{requests} (50 connections, 10 streams in
    flight on each); if C{distinct}, one connection taking
    L{DISTINCT_PATHS} paths in turn.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".urls") as urls:
        urls.write("".join(f"https://{HOST}:{port}{path}?n={n}\n" for n in range(DISTINCT_PATHS)))
        urls.flush()
        where = ["-i", urls.name] if distinct else [f"https://{HOST}:{port}{path}"]
        out = subprocess.run(["h2load", "-n", str(requests), "-c1" if distinct else "-c50", "-m10",
                              f"--connect-to=127.0.0.1:{port}",
                              *where], capture_output=True, text=True, timeout=900)
    match = re.search(r"(\d+) succeeded", out.stdout)
    if not match:
        raise RuntimeError(f"h2load printed no count: {out.stdout} {out.stderr}")
    return int(match.group(1))


def drive(port: int, path: str, seconds: float, mode: str, h2_requests: int) -> int:
    """The mode's load on the gateway: requests completed."""
    if mode.startswith("h2"):
        return h2load(port, path, h2_requests, distinct=mode == "h2-paths")
    return wrk(port, path, seconds, mode)


def wrk(port: int, path: str, seconds: float, mode: str = "plain") -> int:
    """Requests wrk completed in C{seconds}."""
    scheme = "http" if mode == "plain" else "https"
    close = ["-H", "Connection: close"] if mode == "resumed" else []
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds:g}s", "-H", f"Host: {HOST}", *close,
                          f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"(\d+) requests in", out.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no request count: {out.stdout} {out.stderr}")
    return int(match.group(1))


def checkout(ref: str, into: Path) -> Path:
    if ref == ".":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(into), ref], check=True)
    return into


def write_certificate(directory: Path) -> Path:
    """A certificate for the bench's host and 127.0.0.1 (wrk's SNI), in a Kubernetes-style secret directory."""
    from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory

    now = datetime.now(timezone.utc)
    certificate, key = self_signed_certificate([HOST, "127.0.0.1"], now - timedelta(hours=1), now + timedelta(days=7))
    directory.mkdir(parents=True, exist_ok=True)
    write_secret_directory(str(directory), [certificate], key)
    return directory


def measure(ref: str, source: Path, work: Path, procs: ProcessSet, backend_port: int, path: str,
            seconds: float, mode: str = "plain", h2_requests: int = 5000) -> dict[str, Any]:
    port = free_port()
    routes = work / f"routes-{port}.yaml"
    routes.write_text(json.dumps({"routes": [{"host": HOST, "path": "/", "target": f"127.0.0.1:{backend_port}"}]}))
    out = work / f"callgrind-{port}.out"
    env = {**os.environ, "PYTHONPATH": str(source)}
    twistd = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *twistd, "-n", "--pidfile=",
            "edd-gateway", "--routes", str(routes), "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--admin", "none", "--no-access-log", "--state-file", str(work / f"pins-{port}.json")]
    if mode != "plain":
        argv += ["--tls-dir", str(write_certificate(work / "tls"))]
    if mode.startswith("h2"):
        # 500 streams in flight want as many backend connections: kept idle
        # between bursts (as bench/http2.py does), not reconnected.
        argv += ["--pool-max-idle", "512"]
    gateway = procs.start(f"gateway-{port}", argv, env=env, cwd=source)
    wait_listening(gateway, port, timeout=300)
    drive(port, path, 10, mode, 1000)  # warm-up
    subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
    requests = drive(port, path, seconds, mode, h2_requests)
    subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True)
    procs.stop(gateway)
    dumps = sorted(work.glob(f"callgrind-{port}.out*"), key=lambda p: p.stat().st_mtime)
    total = 0
    for dump in dumps:
        match = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
        if match and ".out." in dump.name:
            total = int(match.group(1))  # the dump after zeroing
    if not total:
        raise RuntimeError(f"no callgrind dump for {ref}:\n{log_tail(gateway.log_path)}")
    return {"ref": ref, "mode": mode, "commit": subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                                                 capture_output=True, text=True).stdout.strip(),
            "requests": requests, "instructions": total, "per_request": round(total / requests)}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("refs", nargs="+")
    parser.add_argument("--path", default="/small")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--h2-requests", type=int, default=5000, help="h2 mode: requests measured (5000)")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    wants_h2load = any(mode.startswith("h2") for mode in args.modes.split(","))
    tools = ("valgrind", "callgrind_control", "wrk", *(["h2load"] if wants_h2load else []))
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: valgrind, wrk, nghttp2-client)")
    work = Path(tempfile.mkdtemp(prefix="edd-bench-instructions-"))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    rows = []
    try:
        with ProcessSet(work) as procs:
            backend = start_backend(procs, work, "auto", 1 << 20, None)
            sources = [checkout(ref, work / f"tree-{number}") for number, ref in enumerate(args.refs)]
            for mode in args.modes.split(","):
                for ref, source in zip(args.refs, sources):
                    rows.append(measure(ref, source, work, procs, backend.port, args.path, args.seconds, mode,
                                        args.h2_requests))
                    print(f"{mode:8} {ref} ({rows[-1]['commit']}): {rows[-1]['per_request']:,} instructions per "
                          f"request ({rows[-1]['requests']} requests)", flush=True)
    finally:
        for number in range(len(args.refs)):
            tree = work / f"tree-{number}"
            if tree.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{stamp}-instructions.json"
    path.write_text(json.dumps({"path": args.path, "seconds": args.seconds, "runs": rows}, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
