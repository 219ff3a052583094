"""
TLS side by side: ``python bench/tls.py`` measures, in one run, the gateway
and nginx (one worker) terminating TLS with the same certificate in front of
the same backend, and the gateway's TLS passthrough against nginx's stream
module (haproxy in TCP mode when the module is missing), then prints a table
with the acceptance ratios and writes ``bench/results/tls-<timestamp>.json``.

- handshakes/s: wrk sending ``Connection: close`` requests, so every request
  is a new TCP connection and a TLS handshake; wrk keeps its TLS session
  across reconnects, so after the first these are resumed TLS 1.3
  handshakes (PSK with a fresh X25519 exchange), for both peers alike;
- keep-alive HTTPS requests/s: wrk over N kept-alive TLS connections;
- passthrough: curl downloading the big file from a TLS backend (nginx with
  the same certificate) through each peer, median MB/s of a few repeats.

Every peer runs pinned to the first CPU, the backend, wrk and curl to the
others; the peers are measured in interleaved rounds and medians reported.
The certificate is a P-256 ECDSA one made by the gateway's own helper, for
``bench.local``, ``pass.local`` and ``127.0.0.1`` (wrk sends the URL's host,
an address, as SNI).  Everything started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from string import Template
from typing import Any, Callable, NoReturn, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from _procs import LOOPBACK, ProcessSet, Started, cpu_seconds, free_port, log_tail, run_tool, usable_cpus, wait_listening  # noqa: E402
from backend import nginx_path, nginx_user_line, start_backend  # noqa: E402
from keepalive import parse_wrk  # noqa: E402
import _interpreter  # noqa: E402

from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory  # noqa: E402

HOST = "bench.local"
PASS_HOST = "pass.local"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
TARGETS = {"handshakes": 0.5, "keepalive": 0.30, "passthrough": 0.8}

# The same TLS policy as the gateway: TLS 1.2 and 1.3, forward-secret AEAD
# suites, a session cache (the gateway resumes sessions too).
NGINX_TLS = Template("""daemon off;
worker_processes 1;
pid $workdir/$name.pid;
error_log $workdir/$name.error.log warn;
$user_line
$stream_module_line
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $workdir/nginx-tls-body;
    proxy_temp_path $workdir/nginx-tls-proxy;
    fastcgi_temp_path $workdir/nginx-tls-fastcgi;
    uwsgi_temp_path $workdir/nginx-tls-uwsgi;
    scgi_temp_path $workdir/nginx-tls-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_session_cache shared:TLS:10m;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $certificate;
        ssl_certificate_key $key;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $$host;
            proxy_set_header X-Forwarded-For $$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
$stream_block
""")

NGINX_STREAM = Template("""stream {
    server {
        listen 127.0.0.1:$stream_port;
        proxy_pass 127.0.0.1:$tls_backend_port;
    }
}""")

# The passthrough backend: nginx serving the big file over TLS itself.
NGINX_TLS_BACKEND = Template("""daemon off;
worker_processes 1;
pid $workdir/nginx-tls-backend.pid;
error_log $workdir/nginx-tls-backend.error.log warn;
$user_line
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $workdir/nginx-tlsb-body;
    proxy_temp_path $workdir/nginx-tlsb-proxy;
    fastcgi_temp_path $workdir/nginx-tlsb-fastcgi;
    uwsgi_temp_path $workdir/nginx-tlsb-uwsgi;
    scgi_temp_path $workdir/nginx-tlsb-scgi;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $certificate;
        ssl_certificate_key $key;
        root $docroot;
        location = /big { }
    }
}
""")

HAPROXY_TCP = Template("""global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend passthrough
    bind 127.0.0.1:$stream_port
    default_backend tls
backend tls
    server b1 127.0.0.1:$tls_backend_port
""")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=("handshakes", "keepalive", "passthrough"),
                        help="run only this part (repeatable); default: all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk measurement (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up per measurement (default 2)")
    parser.add_argument("--size-mib", type=int, default=256, help="passthrough download size (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="passthrough downloads per peer (default 3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with Twisted for the gateway")
    parser.add_argument("--no-fresh", dest="fresh", action="store_false",
                        help="measure one process per peer in every round (default: a new process each round)")
    parser.add_argument("--pin", choices=("split", "none"), default="split",
                        help="split: peers on the first CPU, the rest on the others (default); none: no pinning")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help="where the JSON goes")
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def write_certificate(directory: Path) -> tuple[Path, Path]:
    now = datetime.now(timezone.utc)
    certificate, key = self_signed_certificate(
        [HOST, PASS_HOST, LOOPBACK], now - timedelta(hours=1), now + timedelta(days=30)
    )
    write_secret_directory(str(directory), [certificate], key)
    return directory / "tls.crt", directory / "tls.key"


def twistd(python: str) -> str:
    beside = Path(python).parent / "twistd"
    return str(beside) if beside.exists() else (shutil.which("twistd") or "twistd")


def start_gateway(procs: ProcessSet, workdir: Path, python: str, backend_port: int, tls_backend_port: int,
                  secret: Path, cpus: Sequence[int] | None, name: str = "gateway",
                  extra: str = "") -> tuple[Started, int]:
    port = free_port()
    routes = workdir / "routes.yaml"
    routes.write_text(
        "routes:\n"
        f'  - {{host: {HOST}, path: /, target: "127.0.0.1:{backend_port}"}}\n'
        f'  - {{host: {PASS_HOST}, path: /, target: "127.0.0.1:{tls_backend_port}", tls: passthrough}}\n'
    )
    command = (f"{twistd(python)} -n --pidfile= --logfile={workdir / (name + '.log')} edd-gateway "
               f"--routes {routes} --tls-dir {secret} --listen tcp:{port}:interface=127.0.0.1 "
               f"--admin none --no-access-log {extra}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    started = procs.start(f"{name}-tls", shlex.split(command), cpus=cpus, env=env, cwd=workdir)
    wait_listening(started, port)
    return started, port


def start_nginx_tls(procs: ProcessSet, workdir: Path, backend_port: int, tls_backend_port: int,
                    certificate: Path, key: Path, cpus: Sequence[int] | None,
                    name: str = "nginx-tls", stream: bool = True) -> tuple[Started, int, int | None, str]:
    """
    nginx terminating TLS (and, with the stream module and C{stream}, passing
    TLS through): (process, port, stream port, note).
    """
    nginx = nginx_path()
    if nginx is None:
        raise RuntimeError("nginx is not installed")
    port = free_port()
    stream_port: int | None = None
    stream_block, module_line, note = "", "", ""
    if not stream:
        pass
    elif STREAM_MODULE.exists():
        stream_port = free_port()
        module_line = f"load_module {STREAM_MODULE};"
        stream_block = NGINX_STREAM.substitute(stream_port=stream_port, tls_backend_port=tls_backend_port)
    else:
        note = "nginx's stream module is missing (Debian: libnginx-mod-stream): passthrough is compared with haproxy"
    config = workdir / f"{name}.conf"
    config.write_text(NGINX_TLS.substitute(
        name=name, workdir=workdir, user_line=nginx_user_line(), stream_module_line=module_line, backend_port=backend_port,
        port=port, certificate=certificate, key=key, stream_block=stream_block,
    ))
    argv = [nginx, "-p", str(workdir), "-c", str(config), "-e", str(workdir / f"{name}.error.log")]
    started = procs.start(name, argv, cpus=cpus, cwd=workdir)
    wait_listening(started, port)
    return started, port, stream_port, note


def start_haproxy_tcp(procs: ProcessSet, workdir: Path, tls_backend_port: int,
                      cpus: Sequence[int] | None) -> tuple[Started, int]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    config = workdir / "haproxy-tcp.cfg"
    config.write_text(HAPROXY_TCP.substitute(stream_port=port, tls_backend_port=tls_backend_port))
    started = procs.start("haproxy-tcp", [haproxy, "-db", "-f", str(config)], cpus=cpus, cwd=workdir)
    wait_listening(started, port)
    return started, port


def start_tls_backend(procs: ProcessSet, workdir: Path, docroot: Path, certificate: Path, key: Path,
                      cpus: Sequence[int] | None) -> int:
    nginx = nginx_path()
    if nginx is None:
        raise RuntimeError("nginx is not installed")
    port = free_port()
    config = workdir / "nginx-tls-backend.conf"
    config.write_text(NGINX_TLS_BACKEND.substitute(
        workdir=workdir, user_line=nginx_user_line(), port=port, certificate=certificate, key=key, docroot=docroot,
    ))
    argv = [nginx, "-p", str(workdir), "-c", str(config), "-e", str(workdir / "nginx-tls-backend.error.log")]
    wait_listening(procs.start("nginx-tls-backend", argv, cpus=cpus, cwd=workdir), port)
    return port


def wrk(port: int, args: argparse.Namespace, seconds: float, close: bool, cpus: Sequence[int] | None) -> str:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", f"Host: {HOST}", *(["-H", "Connection: close"] if close else []),
            f"https://{LOOPBACK}:{port}/small"]
    return run_tool(argv, cpus=cpus, timeout=seconds + 60)


Peer = tuple[Started, int]


def measure_wrk(peers: dict[str, Callable[[], Peer]], procs: ProcessSet, args: argparse.Namespace, close: bool,
                cpus: Sequence[int] | None) -> dict[str, Any]:
    """
    Requests/s per peer (medians of interleaved rounds) and the peer's CPU per
    request.  With C{--fresh} (the default) every round measures a newly
    started process of each peer: one process's memory layout can make it
    10-20% faster or slower than the next (seen on virtual machines), and a
    median over one process per peer would carry that luck into the ratio.
    """
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
    kind = "handshakes" if close else "keep-alive"
    kept: dict[str, Peer] = {}
    for number in range(1, args.rounds + 1):
        for name, start in peers.items():
            print(f"  {kind} round {number}/{args.rounds}: {name} ...", flush=True)
            peer = kept.get(name) or start()
            started, port = peer
            if args.fresh:
                kept.pop(name, None)
            else:
                kept[name] = peer
            if args.warmup > 0:
                wrk(port, args, args.warmup, close, cpus)
            before = cpu_seconds(started.pid)
            result = parse_wrk(wrk(port, args, args.duration, close, cpus))
            spent = cpu_seconds(started.pid) - before
            if result["requests"]:
                result["peer_cpu_us_per_request"] = round(spent * 1e6 / result["requests"], 1)
            rounds[name].append(result)
            if args.fresh:
                procs.stop(started)
    summary: dict[str, Any] = {}
    for name, results in rounds.items():
        summary[name] = {
            "requests_per_s": round(statistics.median(r["requests_per_s"] for r in results), 1),
            "p50_ms": round(statistics.median(r.get("p50_ms", 0) for r in results), 3),
            "p99_ms": round(statistics.median(r.get("p99_ms", 0) for r in results), 3),
            "peer_cpu_us_per_request": round(statistics.median(r.get("peer_cpu_us_per_request", 0) for r in results), 1),
            "errors": sum(r["non_2xx_3xx"] + sum(r["socket_errors"].values()) for r in results),
            "rounds_requests_per_s": [r["requests_per_s"] for r in results],
        }
    return summary


def download(port: int, size: int, cpus: Sequence[int] | None) -> float:
    argv = ["curl", "--silent", "--show-error", "--insecure", "--output", "/dev/null", "--max-time", "300",
            "--resolve", f"{PASS_HOST}:{port}:{LOOPBACK}", "--write-out", "%{http_code} %{size_download} %{speed_download}",
            f"https://{PASS_HOST}:{port}/big"]
    status, downloaded, speed = run_tool(argv, cpus=cpus, timeout=330).split()
    if status != "200" or int(downloaded) != size:
        raise RuntimeError(f"status {status}, {downloaded} of {size} bytes")
    return float(speed) / 1e6


def measure_passthrough(peers: dict[str, tuple[Started | None, int]], size: int, repeats: int,
                        cpus: Sequence[int] | None) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in peers}
    cpu: dict[str, float] = {name: 0.0 for name in peers}
    for name, (_, port) in peers.items():
        download(port, size, cpus)  # warm-up: page cache, TLS session setup paths
    for number in range(1, repeats + 1):
        for name, (started, port) in peers.items():
            print(f"  passthrough {size >> 20} MiB, repeat {number}/{repeats}: {name} ...", flush=True)
            before = cpu_seconds(started.pid) if started else 0.0
            samples[name].append(download(port, size, cpus))
            cpu[name] += (cpu_seconds(started.pid) - before) if started else 0.0
    gib = repeats * size / (1 << 30)
    return {
        name: {
            "mb_per_s": round(statistics.median(values), 1),
            "samples_mb_per_s": [round(v, 1) for v in values],
            **({"peer_cpu_s_per_gib": round(cpu[name] / gib, 3)} if peers[name][0] else {}),
        }
        for name, values in samples.items()
    }


def ratio(results: dict[str, Any], key: str, reference: str) -> float | None:
    mine, theirs = results.get("gateway", {}).get(key), results.get(reference, {}).get(key)
    return round(mine / theirs, 3) if mine and theirs else None


def measure(args: argparse.Namespace, procs: ProcessSet, workdir: Path, results: dict[str, Any]) -> None:
    parts = args.only or ["handshakes", "keepalive", "passthrough"]
    cpus = usable_cpus()
    peer_cpus, load_cpus = (cpus[:1], cpus[1:]) if args.pin == "split" and len(cpus) > 1 else (None, None)
    results["settings"]["cpus"] = {"peers": peer_cpus, "load": load_cpus}
    size = args.size_mib << 20
    certificate, key = write_certificate(workdir / "secret")
    print("starting the backends and the peers ...", flush=True)
    backend = start_backend(procs, workdir, "nginx", size, load_cpus)
    tls_backend_port = start_tls_backend(procs, workdir, backend.big_path.parent, certificate, key, load_cpus)
    gateway = start_gateway(procs, workdir, args.python, backend.port, tls_backend_port, workdir / "secret", peer_cpus)
    nginx, nginx_port, stream_port, note = start_nginx_tls(
        procs, workdir, backend.port, tls_backend_port, certificate, key, peer_cpus
    )
    if note:
        results["notes"].append(note)
    for name, (_, port) in {"gateway": gateway, "nginx": (nginx, nginx_port)}.items():
        parse = parse_wrk(wrk(port, args, 1, False, load_cpus))
        if parse["non_2xx_3xx"] or not parse["requests"]:
            raise RuntimeError(f"{name} does not answer 200 over HTTPS: {parse}")

    def fresh_gateway() -> Peer:
        return start_gateway(procs, workdir, args.python, backend.port, tls_backend_port, workdir / "secret",
                             peer_cpus, name="gateway-round")

    def fresh_nginx() -> Peer:
        started, port, _, _ = start_nginx_tls(procs, workdir, backend.port, tls_backend_port, certificate, key,
                                              peer_cpus, name="nginx-tls-round", stream=False)
        return started, port

    terminating: dict[str, Callable[[], Peer]] = {"gateway": fresh_gateway, "nginx": fresh_nginx}
    if not args.fresh:
        terminating = {"gateway": lambda: gateway, "nginx": lambda: (nginx, nginx_port)}
    if "handshakes" in parts:
        measured = measure_wrk(terminating, procs, args, True, load_cpus)
        results["handshakes"] = {"peers": measured, "gateway_ratio": ratio(measured, "requests_per_s", "nginx")}
    if "keepalive" in parts:
        measured = measure_wrk(terminating, procs, args, False, load_cpus)
        results["keepalive"] = {"peers": measured, "gateway_ratio": ratio(measured, "requests_per_s", "nginx")}
    if "passthrough" in parts:
        reference = "nginx-stream"
        if stream_port is None:
            haproxy, stream_port = start_haproxy_tcp(procs, workdir, tls_backend_port, peer_cpus)
            reference, stream_peer = "haproxy-tcp", (haproxy, stream_port)
        else:
            stream_peer = (nginx, stream_port)
        peers = {"direct": (None, tls_backend_port), "gateway": gateway, reference: stream_peer}
        measured = measure_passthrough(peers, size, args.repeats, load_cpus)
        results["passthrough"] = {"peers": measured, "reference": reference,
                                  "gateway_ratio": ratio(measured, "mb_per_s", reference)}
    results["gateway_log_tail"] = log_tail(workdir / "gateway.log", 10)


def render(results: dict[str, Any]) -> str:
    lines = []
    for part, key, unit in (("handshakes", "requests_per_s", "new TLS connections/s"),
                            ("keepalive", "requests_per_s", "keep-alive HTTPS requests/s"),
                            ("passthrough", "mb_per_s", "MB/s through TLS passthrough")):
        if part not in results:
            continue
        lines.append(f"{part}: {unit}")
        for name, figures in results[part]["peers"].items():
            cost = figures.get("peer_cpu_us_per_request") or figures.get("peer_cpu_s_per_gib")
            cost_text = ""
            if "peer_cpu_us_per_request" in figures:
                cost_text = f"  ({cost} us CPU/request, p99 {figures['p99_ms']} ms, errors {figures['errors']})"
            elif "peer_cpu_s_per_gib" in figures:
                cost_text = f"  ({cost} s CPU/GiB)"
            lines.append(f"  {name:14} {figures[key]:>10}{cost_text}")
        got, target = results[part]["gateway_ratio"], TARGETS[part]
        verdict = "n/a" if got is None else ("PASS" if got >= target else "FAIL")
        lines.append(f"  gateway ratio {got} (target >= {target}): {verdict}")
    lines.extend(f"note: {note}" for note in results["notes"])
    lines.append(f"gateway interpreter: {_interpreter.summary(results['gateway_interpreter'])}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_before": [round(load, 2) for load in os.getloadavg()],
        "gateway_interpreter": _interpreter.describe(args.python),
        "notes": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="edd-bench-tls-"))
    try:
        with ProcessSet(workdir) as procs:
            measure(args, procs, workdir, results)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        logs = args.results_dir / f"tls-{stamp}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in workdir.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    path = args.results_dir / f"tls-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(render(results))
    print(f"\nresults: {path}\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
