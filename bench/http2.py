"""
HTTP/2 side by side: ``python bench/http2.py`` measures, in one run, the
gateway and nginx (one worker, ``listen ... ssl http2``) terminating TLS
with the same certificate in front of the same nginx backend, with
``h2load -c50 -m10`` (50 connections, 10 streams in flight on each; issue
16's target: the gateway at least 0.25 x nginx), and the same load over
HTTP/1.1 (``h2load --h1``, one request at a time per connection) so that
an HTTP/1.1 change shows beside it.  With ``--paths N``, also HTTP/2
with N distinct paths taken in turn, as a browser's requests differ (one
path repeated is the gateway's best case: a repeated request's header
block and view are kept).

The peers are pinned to the first CPU, the backend and h2load to the
others, measured in interleaved rounds (``--repeats``, 3), medians reported;
the figures go to ``bench/results/<timestamp>-http2.json``.  Everything
started is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _procs import ProcessSet, free_port, run_tool, usable_cpus, wait_listening  # noqa: E402
from backend import nginx_path, nginx_user_line, start_backend  # noqa: E402
from tls import HOST, NGINX_TLS, start_gateway, write_certificate  # noqa: E402

TARGET_RATIO = 0.25
IDLE_BACKEND_CONNECTIONS = 512
_FINISHED = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
_SUCCEEDED = re.compile(r"(\d+) succeeded, (\d+) failed, (\d+) errored")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40_000, help="requests per h2load run (40000)")
    parser.add_argument("--clients", type=int, default=50, help="h2load -c (50)")
    parser.add_argument("--streams", type=int, default=10, help="h2load -m, HTTP/2 only (10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--python", default=sys.executable, help="the Python whose twistd runs the gateway")
    parser.add_argument("--paths", type=int, default=0,
                        help="also HTTP/2 with this many distinct paths, as a browser's requests differ (0: not)")
    return parser.parse_args(argv)


def start_nginx_h2(procs: ProcessSet, workdir: Path, backend_port: int, certificate: Path, key: Path,
                   cpus: Sequence[int] | None) -> int:
    nginx = nginx_path()
    if nginx is None:
        raise SystemExit("nginx is not installed (Debian: nginx-light)")
    port = free_port()
    config = workdir / "nginx-h2.conf"
    text = NGINX_TLS.substitute(
        name="nginx-h2", workdir=workdir, user_line=nginx_user_line(), stream_module_line="",
        backend_port=backend_port, port=port, certificate=certificate, key=key, stream_block="",
    )
    # nginx 1.22's spelling; 1.25 and later also take "http2 on;".
    text = text.replace("keepalive 64;", f"keepalive {IDLE_BACKEND_CONNECTIONS};")
    config.write_text(text.replace(f"listen 127.0.0.1:{port} ssl;", f"listen 127.0.0.1:{port} ssl http2;"))
    started = procs.start("nginx-h2", [nginx, "-p", str(workdir), "-c", str(config)], cpus=cpus, cwd=workdir)
    wait_listening(started, port)
    return port


def h2load(port: int, args: argparse.Namespace, h1: bool, cpus: Sequence[int] | None,
           paths: Path | None = None) -> dict[str, Any]:
    """One h2load run; with C{paths}, a file of URLs h2load takes in turn (C{-i})."""
    tool = shutil.which("h2load")
    if tool is None:
        raise SystemExit("h2load is not installed (Debian: nghttp2-client)")
    # The URL's host is the SNI name and the authority the routes match;
    # --connect-to sends the connections to loopback.
    urls = ["-i", str(paths)] if paths is not None else [f"https://{HOST}:{port}/small"]
    argv = [tool, "-n", str(args.requests), "-c", str(args.clients), f"--connect-to=127.0.0.1:{port}",
            *(["--h1"] if h1 else ["-m", str(args.streams)]), *urls]
    out = run_tool(argv, cpus=cpus, timeout=300)
    finished, succeeded = _FINISHED.search(out), _SUCCEEDED.search(out)
    if finished is None or succeeded is None:
        raise RuntimeError(f"h2load printed no result: {out[-800:]}")
    ok, failed, errored = (int(n) for n in succeeded.groups())
    return {"requests_per_s": float(finished.group(1)), "succeeded": ok, "failed": failed + errored}


def measure(args: argparse.Namespace, procs: ProcessSet, workdir: Path) -> dict[str, Any]:
    cpus = usable_cpus()
    peer_cpus, load_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else (None, None)
    certificate, key = write_certificate(workdir / "secret")
    backend = start_backend(procs, workdir, "nginx", 1 << 20, load_cpus)
    # 500 requests in flight (50 connections x 10 streams) need as many
    # backend connections: both peers keep up to 512 idle between bursts.
    gateway_port = start_gateway(procs, workdir, args.python, backend.port, backend.port, workdir / "secret",
                                 peer_cpus, extra=f"--pool-max-idle {IDLE_BACKEND_CONNECTIONS}")[1]
    peers = {"gateway": gateway_port, "nginx": start_nginx_h2(procs, workdir, backend.port, certificate, key,
                                                             peer_cpus)}
    protocols = ("h2", "h1", "h2-paths") if args.paths else ("h2", "h1")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {protocol: [] for protocol in protocols} for p in peers}
    paths = {}
    for name, port in peers.items():  # warm-up, unrecorded
        h2load(port, argparse.Namespace(**{**vars(args), "requests": 2000}), False, load_cpus)
        paths[name] = workdir / f"paths-{name}"
        # The query makes each path distinct; the backend answers the same small file for all.
        paths[name].write_text("".join(f"https://{HOST}:{port}/small?n={n}\n" for n in range(args.paths)))
    for round_ in range(args.repeats):
        for protocol in protocols:
            for name, port in peers.items():
                run = h2load(port, args, protocol == "h1", load_cpus,
                             paths[name] if protocol == "h2-paths" else None)
                runs[name][protocol].append(run)
                print(f"round {round_ + 1} {protocol} {name}: {run['requests_per_s']:.0f} req/s"
                      f" ({run['failed']} failed)", flush=True)
    results: dict[str, Any] = {"settings": {**vars(args), "cpus": {"peers": peer_cpus, "load": load_cpus}}}
    for protocol in protocols:
        medians = {name: statistics.median(r["requests_per_s"] for r in runs[name][protocol]) for name in peers}
        results[protocol] = {"median_requests_per_s": medians, "runs": {n: runs[n][protocol] for n in peers},
                             "gateway_ratio": medians["gateway"] / medians["nginx"]}
    return results


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edd-bench-h2-") as tmp, ProcessSet(Path(tmp)) as procs:
        results = measure(args, procs, Path(tmp))
    out = BENCH_DIR / "results" / f"{time.strftime('%Y%m%dT%H%M%S')}-http2.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    labels = [("h2", f"HTTP/2, h2load -c{args.clients} -m{args.streams}"),
              ("h1", f"HTTP/1.1, h2load --h1 -c{args.clients}")]
    if args.paths:
        labels.append(("h2-paths", f"HTTP/2, {args.paths} distinct paths"))
    for protocol, label in labels:
        medians = results[protocol]["median_requests_per_s"]
        print(f"{label}: gateway {medians['gateway']:.0f} req/s, nginx {medians['nginx']:.0f} req/s, "
              f"ratio {results[protocol]['gateway_ratio']:.3f}")
    verdict = "PASS" if results["h2"]["gateway_ratio"] >= TARGET_RATIO else "FAIL"
    print(f"acceptance (HTTP/2 >= {TARGET_RATIO} x nginx): {verdict}\nresults: {out}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
