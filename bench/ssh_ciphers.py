"""
SSH throughput per cipher, through the gateway and directly to sshd:
``python bench/ssh_ciphers.py`` starts a throwaway sshd (the container) and,
for each cipher, the gateway's SSH side offering that cipher alone on both
of its sides (this file's C{serve} mode, as bench/ssh.py's), then streams
C{--size-mib} (64) MiB up (C{ssh -c CIPHER host 'cat > /dev/null' < file})
and down (C{ssh -c CIPHER host 'cat file' > /dev/null}) through the gateway
and straight to the sshd, peers interleaved, the median of C{--repeats}.
MB/s are 10^6 bytes/s of payload; the gateway's CPU seconds per GiB are its
process's user+system time.  Pinning as in bench/ssh.py (the gateway on the
first CPU, sshd and the clients on the others).  The CTR ciphers use the
gateway's first MAC (hmac-sha2-512-etm) on both hops, also the user's
(C{-m}), so the direct run uses it too.  Figures go to
C{bench/results/<timestamp>-ssh-ciphers.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from _procs import ProcessSet, cpu_seconds, free_port, pinned, usable_cpus, wait_listening  # noqa: E402
from ssh import CONTAINER, login_name, prepare, ssh_options  # noqa: E402

CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr",
           "aes192-ctr", "aes128-ctr")
CTR_MAC = "hmac-sha2-512-etm@openssh.com"


def stream(work: Path, peer: str, port: int, cipher: str, direction: str, cpus: Sequence[int] | None) -> float:
    """Seconds to move the data file one way over one SSH connection."""
    forced = ["-c", cipher] + (["-m", CTR_MAC] if cipher.endswith("-ctr") else [])
    target = f"{login_name(peer)}@127.0.0.1"
    remote = "cat > /dev/null" if direction == "up" else f"cat {work / 'data'}"
    argv = pinned(["ssh", *ssh_options(work), *forced, "-p", str(port), target, remote], cpus)
    with open(work / "data", "rb") if direction == "up" else open(os.devnull, "rb") as stdin, \
            open(os.devnull, "wb") as stdout:
        started = time.monotonic()
        completed = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=600)
        elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"ssh -c {cipher} through {peer} failed: {completed.stderr.decode().strip()}")
    return elapsed


def measure(work: Path, procs: ProcessSet, sshd_port: int, size_mib: int, repeats: int, python: str,
            ciphers: Sequence[str]) -> dict[str, Any]:
    cpus = usable_cpus()
    gateway_cpus, load_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else (None, None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    size = size_mib << 20
    results: dict[str, Any] = {}
    for cipher in ciphers:
        port = free_port()
        gateway = procs.start(f"gateway-{cipher}", [python, str(Path(__file__).resolve()), "serve", "--work",
                                                    str(work), "--port", str(port), "--sshd-port", str(sshd_port),
                                                    "--cipher", cipher], cpus=gateway_cpus, env=env)
        wait_listening(gateway, port)
        samples: dict[str, dict[str, list[float]]] = {p: {"up": [], "down": []} for p in ("direct", "gateway")}
        cpu = {"up": 0.0, "down": 0.0}
        for round_number in range(repeats + 1):  # round 0 warms up
            for direction in ("up", "down"):
                for peer, peer_port in (("direct", sshd_port), ("gateway", port)):
                    before = cpu_seconds(gateway.pid)
                    seconds = stream(work, peer, peer_port, cipher, direction, load_cpus)
                    if round_number:
                        samples[peer][direction].append(size / seconds / 1e6)
                        if peer == "gateway":
                            cpu[direction] += cpu_seconds(gateway.pid) - before
        procs.stop(gateway)
        row: dict[str, Any] = {}
        for direction in ("up", "down"):
            direct = statistics.median(samples["direct"][direction])
            through = statistics.median(samples["gateway"][direction])
            row[direction] = {"direct_mb_s": round(direct, 1), "gateway_mb_s": round(through, 1),
                              "ratio": round(through / direct, 2),
                              "gateway_cpu_s_per_gib": round(cpu[direction] / (size * repeats / (1 << 30)), 2),
                              "samples": {p: [round(v, 1) for v in samples[p][direction]] for p in samples}}
        results[cipher] = row
    return {"size_mib": size_mib, "repeats": repeats,
            "pin": f"gateway on CPU {gateway_cpus[0]}; sshd and clients on {load_cpus}" if gateway_cpus else "none",
            "ciphers": results}


def serve(work: Path, port: int, sshd_port: int, cipher: str) -> None:
    """The gateway's SSH side offering C{cipher} alone (and the first MAC), on both of its sides."""
    from edd_gateway.tap import install_reactor

    install_reactor()
    from twisted.internet import reactor

    from edd_gateway.sniff import SniffingFactory, Verdict
    from edd_gateway.ssh import MemoryHostKeyPins, SSHSettings, build_ssh_factory
    from edd_gateway.ssh.algorithms import Algorithms
    from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot

    user_key = (work / "user.pub").read_text().strip()
    container = Container(CONTAINER, "bench", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(user_key,))
    directory = ContainerDirectory(ContainerSnapshot({CONTAINER: container}, ready=True))
    settings = SSHSettings(ssh_port=sshd_port, algorithms=Algorithms(ciphers=(cipher.encode(),),
                                                                     macs=(CTR_MAC.encode(),)))
    factory = build_ssh_factory(directory, MemoryHostKeyPins(), host_key_path=str(work / "gateway_host_key"),
                                client_key_path=str(work / "client"), reactor=reactor, settings=settings)
    sniffer = SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name=f"tcp:{port}",
                              default=Verdict.SSH)
    reactor.listenTCP(port, sniffer, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def render(figures: dict[str, Any]) -> str:
    lines = [f"{figures['size_mib']} MiB over one SSH connection, median of {figures['repeats']} (MB/s)",
             f"{'cipher':<32}{'up direct':>10}{'gateway':>9}{'ratio':>7}{'down direct':>13}{'gateway':>9}"
             f"{'ratio':>7}{'CPU s/GiB up/down':>20}", "-" * 107]
    for cipher, row in figures["ciphers"].items():
        up, down = row["up"], row["down"]
        lines.append(f"{cipher:<32}{up['direct_mb_s']:>10}{up['gateway_mb_s']:>9}{up['ratio']:>7}"
                     f"{down['direct_mb_s']:>13}{down['gateway_mb_s']:>9}{down['ratio']:>7}"
                     f"{up['gateway_cpu_s_per_gib']:>12}/{down['gateway_cpu_s_per_gib']}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ciphers", default=",".join(CIPHERS))
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the gateway")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sshd-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cipher", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.work, args.port, args.sshd_port, args.cipher)
        return 0
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="edd-bench-ssh-ciphers-", dir=scratch))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        sshd_port = free_port()
        prepare(work, args.size_mib << 20, sshd_port)
        sshd_path = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
        if sshd_path is None:
            raise RuntimeError("sshd is not installed (Debian: openssh-server)")
        os.makedirs("/run/sshd", exist_ok=True)
        with ProcessSet(work) as procs:
            cpus = usable_cpus()
            sshd = procs.start("sshd", [sshd_path, "-D", "-e", "-f", str(work / "sshd_config")],
                               cpus=cpus[1:] if len(cpus) > 1 else None)
            wait_listening(sshd, sshd_port)
            figures = measure(work, procs, sshd_port, args.size_mib, args.repeats, args.python,
                              args.ciphers.split(","))
        figures["load_average"] = [round(load, 2) for load in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{stamp}-ssh-ciphers.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(render(figures))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
