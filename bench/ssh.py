"""
The SSH side, side by side with OpenSSH alone: ``python bench/ssh.py``
starts a throwaway sshd (standing in for a container) and the gateway's SSH
factory behind a sniffing listener, both on loopback, then measures in the
same run

 - ``scp`` of a 256 MiB file up and down, directly to the sshd and through
   the gateway, peers interleaved, one warm-up each, the median of
   C{--repeats}: MB/s (10^6 bytes/s), the gateway's ratio to direct (issue 5's
   target: at least 0.5), its CPU seconds per GiB and peak RSS; every copy is
   checked by SHA-256;
 - 50 concurrent ``ssh ... true`` logins through the gateway, and directly
   for reference: how many succeeded, the wall time, each login's median and
   slowest time.

Pinning as in run.py: the gateway on the first CPU, sshd and the clients on
the others.  The figures go to C{bench/results/<timestamp>-ssh.json}.  Until
``twistd edd-gateway`` takes SSH options, the gateway runs as this file's
C{serve} mode (the same factory and sniffer the service wires); C{run_ssh}
is the entry point for run.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from _procs import ProcessSet, RssSampler, cpu_seconds, free_port, pinned, usable_cpus, wait_listening  # noqa: E402

CONTAINER = "bench1"
TARGET_RATIO = 0.5


@dataclass
class Settings:
    size_mib: int = 256
    repeats: int = 3
    logins: int = 50
    pin: str = "split"
    python: str = sys.executable


def ssh_options(work: Path) -> list[str]:
    return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=60",
            "-i", str(work / "user")]


def write_key(path: Path) -> str:
    from edd_gateway.ssh.hostkey import load_or_create_key, public_text

    return public_text(load_or_create_key(str(path), write_public=True), path.name)


def prepare(work: Path, size: int, sshd_port: int) -> None:
    """Keys, the sshd configuration and the file to copy."""
    user = write_key(work / "user")
    write_key(work / "sshd_host_key")
    client = write_key(work / "client")  # the gateway's client key, loaded again by the gateway
    (work / "authorized_keys").write_text(f"{client}\n{user}\n")
    (work / "sshd_config").write_text("\n".join([
        f"Port {sshd_port}", "ListenAddress 127.0.0.1", f"HostKey {work / 'sshd_host_key'}", "PidFile none",
        f"AuthorizedKeysFile {work / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "Subsystem sftp internal-sftp", "MaxStartups 500", "MaxSessions 100", "LogLevel ERROR", "",
    ]))
    with open(work / "data", "wb") as file:
        for _ in range(size >> 20):
            file.write(os.urandom(1 << 20))


def login_name(peer: str) -> str:
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
    return user if peer == "direct" else (CONTAINER if user == "root" else f"{user}.{CONTAINER}")


def scp(work: Path, peer: str, port: int, source: str, destination: str, cpus: Sequence[int] | None) -> float:
    argv = ["scp", *ssh_options(work), "-P", str(port), source, destination]
    started = time.monotonic()
    completed = subprocess.run(pinned(argv, cpus), capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"scp through {peer} failed: {completed.stderr.strip()}")
    return elapsed


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def transfers(work: Path, ports: dict[str, int], settings: Settings, cpus: Sequence[int] | None,
              gateway_pid: int) -> dict[str, Any]:
    size = settings.size_mib << 20
    expected = sha256(work / "data")
    samples: dict[str, dict[str, list[float]]] = {peer: {"up": [], "down": []} for peer in ports}
    cpu = {"up": 0.0, "down": 0.0}
    peak_rss = 0
    for round_number in range(settings.repeats + 1):  # round 0 is the warm-up
        for peer, port in ports.items():
            remote = f"{login_name(peer)}@127.0.0.1:{work / ('remote-' + peer)}"
            for direction, source, destination in (("up", str(work / "data"), remote),
                                                   ("down", remote, str(work / ("back-" + peer)))):
                before = cpu_seconds(gateway_pid)
                with RssSampler(gateway_pid) as rss:
                    seconds = scp(work, peer, port, source, destination, cpus)
                peak_rss = max(peak_rss, rss.peak_kib)
                if round_number:
                    samples[peer][direction].append(size / seconds / 1e6)
                    if peer == "gateway":
                        cpu[direction] += cpu_seconds(gateway_pid) - before
            if sha256(work / ("back-" + peer)) != expected:
                raise RuntimeError(f"the file copied through {peer} came back different")
            os.unlink(work / ("back-" + peer))
    result: dict[str, Any] = {"size_mib": settings.size_mib, "peers": {}}
    for peer, by_direction in samples.items():
        result["peers"][peer] = {direction: {"mb_per_s": round(statistics.median(values), 1),
                                             "samples": [round(v, 1) for v in values]}
                                 for direction, values in by_direction.items()}
    gib = size * settings.repeats / (1 << 30)
    result["gateway_ratio"] = {
        direction: round(result["peers"]["gateway"][direction]["mb_per_s"]
                         / result["peers"]["direct"][direction]["mb_per_s"], 2) for direction in ("up", "down")}
    result["gateway_cpu_s_per_gib"] = {direction: round(seconds / gib, 2) for direction, seconds in cpu.items()}
    result["gateway_peak_rss_mib"] = round(peak_rss / 1024, 1)
    return result


def logins(work: Path, peer: str, port: int, count: int, cpus: Sequence[int] | None) -> dict[str, Any]:
    argv = pinned(["ssh", *ssh_options(work), "-p", str(port), f"{login_name(peer)}@127.0.0.1", "true"], cpus)

    def one(_: int) -> tuple[bool, float, str]:
        started = time.monotonic()
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return completed.returncode == 0, time.monotonic() - started, completed.stderr.strip()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        outcomes = list(pool.map(one, range(count)))
    wall = time.monotonic() - started
    times = sorted(seconds for _, seconds, _ in outcomes)
    errors = sorted({error for ok, _, error in outcomes if not ok})
    return {"concurrent": count, "succeeded": sum(ok for ok, _, _ in outcomes), "wall_s": round(wall, 2),
            "login_p50_s": round(statistics.median(times), 2), "login_max_s": round(times[-1], 2),
            "errors": errors[:5]}


def run_ssh(settings: Settings, procs: ProcessSet, work: Path) -> dict[str, Any]:
    """Start sshd and the gateway in C{work}, measure, and return the figures."""
    cpus = usable_cpus()
    split = settings.pin == "split" and len(cpus) > 1
    gateway_cpus, load_cpus = (cpus[:1], cpus[1:]) if split else (None, None)
    sshd_port, gateway_port = free_port(), free_port()
    prepare(work, settings.size_mib << 20, sshd_port)
    sshd_path = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if sshd_path is None:
        raise RuntimeError("sshd is not installed (Debian: openssh-server)")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = procs.start("sshd", [sshd_path, "-D", "-e", "-f", str(work / "sshd_config")], cpus=load_cpus)
    wait_listening(sshd, sshd_port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    gateway = procs.start("gateway", [settings.python, str(Path(__file__).resolve()), "serve", "--work", str(work),
                                      "--port", str(gateway_port), "--sshd-port", str(sshd_port)],
                          cpus=gateway_cpus, env=env)
    wait_listening(gateway, gateway_port)
    ports = {"direct": sshd_port, "gateway": gateway_port}
    return {
        "pin": f"gateway on CPU {gateway_cpus[0]}; sshd and clients on {load_cpus}" if split else "none",
        "scp": transfers(work, ports, settings, load_cpus, gateway.pid),
        "logins": {peer: logins(work, peer, port, settings.logins, load_cpus) for peer, port in ports.items()},
    }


def serve(work: Path, port: int, sshd_port: int) -> None:
    """The gateway's SSH side alone, as the service wires it: a sniffing listener handing SSH to the factory."""
    from edd_gateway.tap import install_reactor

    install_reactor()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from edd_gateway.sniff import SniffingFactory, Verdict
    from edd_gateway.ssh import MemoryHostKeyPins, SSHSettings, build_ssh_factory
    from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    user_key = (work / "user.pub").read_text().strip()
    container = Container(CONTAINER, "bench", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(user_key,))
    directory = ContainerDirectory(ContainerSnapshot({CONTAINER: container}, ready=True))
    factory = build_ssh_factory(directory, MemoryHostKeyPins(), host_key_path=str(work / "gateway_host_key"),
                                client_key_path=str(work / "client"), reactor=reactor,
                                settings=SSHSettings(ssh_port=sshd_port))
    sniffer = SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name=f"tcp:{port}",
                              default=Verdict.SSH)
    reactor.listenTCP(port, sniffer, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def render(figures: dict[str, Any]) -> str:
    copied, logged = figures["scp"], figures["logins"]
    lines = [f"scp of {copied['size_mib']} MiB (median MB/s)    up      down", "-" * 46]
    for peer, row in copied["peers"].items():
        lines.append(f"{peer:<34}{row['up']['mb_per_s']:>6}  {row['down']['mb_per_s']:>8}")
    ratio = copied["gateway_ratio"]
    lines.append(f"{'gateway / direct':<34}{ratio['up']:>6}  {ratio['down']:>8}   (target >= {TARGET_RATIO})")
    cpu = copied["gateway_cpu_s_per_gib"]
    lines.append(f"gateway CPU s/GiB: up {cpu['up']}, down {cpu['down']}; peak RSS {copied['gateway_peak_rss_mib']}"
                 " MiB")
    lines.append("")
    for peer, row in logged.items():
        lines.append(f"{row['concurrent']} concurrent logins, {peer}: {row['succeeded']} ok in {row['wall_s']} s "
                     f"(each: median {row['login_p50_s']} s, slowest {row['login_max_s']} s)")
    gateway = logged["gateway"]
    verdict = min(ratio.values()) >= TARGET_RATIO and gateway["succeeded"] == gateway["concurrent"]
    lines.append(f"acceptance: {'PASS' if verdict else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logins", type=int, default=50)
    parser.add_argument("--pin", choices=("split", "none"), default="split")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the gateway")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sshd-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.work, args.port, args.sshd_port)
        return 0
    settings = Settings(args.size_mib, args.repeats, args.logins, args.pin, args.python)
    # A tmpfs keeps the disk out of the figures when there is one.
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="edd-bench-ssh-", dir=scratch))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        with ProcessSet(work) as procs:
            figures = run_ssh(settings, procs, work)
        figures["load_average"] = [round(load, 2) for load in os.getloadavg()]
    finally:
        logs = args.results_dir / f"{stamp}-ssh-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in work.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(work, ignore_errors=True)
    path = args.results_dir / f"{stamp}-ssh.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(render(figures))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
