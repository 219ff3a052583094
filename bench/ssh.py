"""
The SSH side, side by side with OpenSSH alone: ``python bench/ssh.py``
starts a throwaway sshd (standing in for a container) and the gateway's SSH
factory behind a sniffing listener, both on loopback, then measures in the
same run, for each cipher of L{edd_gateway.ssh.algorithms.CIPHERS} (or
C{--ciphers}):

 - ``scp`` of a C{--size-mib} (256) MiB file up and down, and the same bytes
   streamed over one connection (C{ssh host 'cat > /dev/null' < file} up,
   C{ssh host 'cat file' > /dev/null} down), directly to the sshd and
   through the gateway, with the user's ssh forced to the cipher (C{-c}) and
   the gateway offering it alone on both of its sides; peers interleaved,
   one warm-up round, the median of C{--repeats} (5): MB/s (10^6 bytes/s), the
   gateway's ratio to direct (issue 13's target: at least 0.9), its CPU
   seconds per GiB and peak RSS; every scp copy is checked by SHA-256.  The
   CTR ciphers use hmac-sha2-256-etm everywhere (L{CTR_MAC});
 - 50 concurrent ``ssh ... true`` logins through the gateway in its default
   configuration, and directly for reference: how many succeeded, the wall
   time, each login's median and slowest time.

Pinning as in run.py: the gateway on the first CPU, sshd and the clients on
the others.  The figures go to C{bench/results/<timestamp>-ssh.json}.  The
gateway runs as this file's C{serve} mode: the factory and sniffer the
service wires, with no HTTP or state around them.
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
TARGET_RATIO = 0.9
CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr",
           "aes192-ctr", "aes128-ctr")
#: The MAC of the CTR runs, on every hop (the user's ssh, the gateway's two
#: sides, direct): the one a stock OpenSSH client agrees with the gateway
#: (its preference puts SHA-256 before SHA-512, and it has no umac here).
CTR_MAC = "hmac-sha2-256-etm@openssh.com"
KINDS = ("scp", "stream")


@dataclass
class Settings:
    size_mib: int = 256
    repeats: int = 5
    logins: int = 50
    pin: str = "split"
    python: str = sys.executable
    ciphers: Sequence[str] = CIPHERS


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


def forced(cipher: str) -> list[str]:
    """The user's ssh options that force C{cipher} (and, for CTR, the MAC the gateway offers)."""
    return ["-c", cipher] + (["-o", f"MACs={CTR_MAC}"] if cipher.endswith("-ctr") else [])


def run(argv: list[str], what: str, cpus: Sequence[int] | None, stdin: Any = None, stdout: Any = None) -> float:
    """Seconds C{argv} took; it must succeed."""
    started = time.monotonic()
    completed = subprocess.run(pinned(argv, cpus), stdin=stdin, stdout=stdout or subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=900)
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed: {completed.stderr.decode(errors='replace').strip()}")
    return elapsed


def transfer(work: Path, peer: str, port: int, cipher: str, kind: str, direction: str,
             cpus: Sequence[int] | None) -> float:
    """Seconds to move the data file one way, by scp or streamed over one ssh."""
    login = f"{login_name(peer)}@127.0.0.1"
    what = f"{kind} {direction} -c {cipher} through {peer}"
    if kind == "scp":
        remote = f"{login}:{work / ('remote-' + peer)}"
        source, destination = ((str(work / "data"), remote) if direction == "up"
                               else (remote, str(work / ("back-" + peer))))
        return run(["scp", *ssh_options(work), *forced(cipher), "-P", str(port), source, destination], what, cpus)
    command = "cat > /dev/null" if direction == "up" else f"cat {work / 'data'}"
    argv = ["ssh", *ssh_options(work), *forced(cipher), "-p", str(port), login, command]
    with open(work / "data", "rb") if direction == "up" else open(os.devnull, "rb") as stdin:
        return run(argv, what, cpus, stdin=stdin)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def one_cipher(work: Path, ports: dict[str, int], cipher: str, settings: Settings, cpus: Sequence[int] | None,
               gateway_pid: int) -> dict[str, Any]:
    """scp and stream, up and down, direct and through the gateway (offering C{cipher} alone)."""
    size = settings.size_mib << 20
    expected = sha256(work / "data")
    cases = [(kind, direction) for kind in KINDS for direction in ("up", "down")]
    samples: dict[tuple[str, str, str], list[float]] = {(p, k, d): [] for p in ports for k, d in cases}
    cpu = {case: 0.0 for case in cases}
    peak_rss = 0
    for round_number in range(settings.repeats + 1):  # round 0 is the warm-up
        for kind, direction in cases:
            for peer, port in ports.items():
                before = cpu_seconds(gateway_pid)
                with RssSampler(gateway_pid) as rss:
                    seconds = transfer(work, peer, port, cipher, kind, direction, cpus)
                peak_rss = max(peak_rss, rss.peak_kib)
                if round_number:
                    samples[peer, kind, direction].append(size / seconds / 1e6)
                    if peer == "gateway":
                        cpu[kind, direction] += cpu_seconds(gateway_pid) - before
                if kind == "scp" and direction == "down":
                    if sha256(work / ("back-" + peer)) != expected:
                        raise RuntimeError(f"the file copied through {peer} with {cipher} came back different")
                    os.unlink(work / ("back-" + peer))
    gib = size * settings.repeats / (1 << 30)
    row: dict[str, Any] = {"gateway_peak_rss_mib": round(peak_rss / 1024, 1)}
    for kind, direction in cases:
        direct = statistics.median(samples["direct", kind, direction])
        through = statistics.median(samples["gateway", kind, direction])
        row[f"{kind}_{direction}"] = {
            "direct_mb_s": round(direct, 1), "gateway_mb_s": round(through, 1), "ratio": round(through / direct, 3),
            "gateway_cpu_s_per_gib": round(cpu[kind, direction] / gib, 2),
            "samples": {peer: [round(v, 1) for v in samples[peer, kind, direction]] for peer in ports}}
    return row


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
    sshd_port = free_port()
    prepare(work, settings.size_mib << 20, sshd_port)
    sshd_path = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if sshd_path is None:
        raise RuntimeError("sshd is not installed (Debian: openssh-server)")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = procs.start("sshd", [sshd_path, "-D", "-e", "-f", str(work / "sshd_config")], cpus=load_cpus)
    wait_listening(sshd, sshd_port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def gateway(name: str, *extra: str) -> tuple[Any, int]:
        port = free_port()
        started = procs.start(name, [settings.python, str(Path(__file__).resolve()), "serve", "--work", str(work),
                                     "--port", str(port), "--sshd-port", str(sshd_port), *extra],
                              cpus=gateway_cpus, env=env)
        wait_listening(started, port)
        return started, port

    ciphers: dict[str, Any] = {}
    for cipher in settings.ciphers:
        process, port = gateway(f"gateway-{cipher}", "--cipher", cipher)
        ciphers[cipher] = one_cipher(work, {"direct": sshd_port, "gateway": port}, cipher, settings, load_cpus,
                                     process.pid)
        procs.stop(process)
    process, port = gateway("gateway")
    ports = {"direct": sshd_port, "gateway": port}
    return {
        "pin": f"gateway on CPU {gateway_cpus[0]}; sshd and clients on {load_cpus}" if split else "none",
        "size_mib": settings.size_mib, "repeats": settings.repeats, "ciphers": ciphers,
        "logins": {peer: logins(work, peer, peer_port, settings.logins, load_cpus) for peer, peer_port in ports.items()},
    }


def serve(work: Path, port: int, sshd_port: int, cipher: str | None) -> None:
    """
    The gateway's SSH side alone, as the service wires it: a sniffing
    listener handing SSH to the factory; with C{cipher}, offering it alone
    (and the first MAC) on both of its sides.
    """
    from edd_gateway.tap import install_reactor

    install_reactor()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from edd_gateway.front.classify import Verdict
    from edd_gateway.front.sniff import SniffingFactory
    from edd_gateway.ssh import MemoryHostKeyPins, SSHSettings, build_ssh_factory
    from edd_gateway.ssh.algorithms import Algorithms
    from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    user_key = (work / "user.pub").read_text().strip()
    container = Container(CONTAINER, "bench", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(user_key,))
    directory = ContainerDirectory(ContainerSnapshot({CONTAINER: container}, ready=True))
    settings = SSHSettings(ssh_port=sshd_port)
    if cipher is not None:
        settings = SSHSettings(ssh_port=sshd_port, algorithms=Algorithms(ciphers=(cipher.encode(),),
                                                                         macs=(CTR_MAC.encode(),)))
    factory = build_ssh_factory(directory, MemoryHostKeyPins(), host_key_path=str(work / "gateway_host_key"),
                                client_key_path=str(work / "client"), reactor=reactor, settings=settings)
    sniffer = SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name=f"tcp:{port}",
                              default=Verdict.SSH)
    reactor.listenTCP(port, sniffer, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def render(figures: dict[str, Any]) -> str:
    lines = [f"{figures['size_mib']} MiB, median MB/s of {figures['repeats']}; gateway / direct (target >= "
             f"{TARGET_RATIO})", ""]
    header = f"{'cipher':<31}" + "".join(f"{kind + ' ' + direction:>22}" for kind in KINDS
                                          for direction in ("up", "down"))
    lines += [header, "-" * len(header)]
    ratios = []
    for cipher, row in figures["ciphers"].items():
        cells = []
        for kind in KINDS:
            for direction in ("up", "down"):
                cell = row[f"{kind}_{direction}"]
                ratios.append(cell["ratio"])
                cells.append(f"{cell['gateway_mb_s']:>7}/{cell['direct_mb_s']:<7} {cell['ratio']:>5}")
        lines.append(f"{cipher:<31}" + "".join(f"{cell:>22}" for cell in cells))
    lines.append("")
    for cipher, row in figures["ciphers"].items():
        cpu = ", ".join(f"{case} {row[case]['gateway_cpu_s_per_gib']}" for case in row if case != "gateway_peak_rss_mib")
        lines.append(f"gateway CPU s/GiB with {cipher}: {cpu}; peak RSS {row['gateway_peak_rss_mib']} MiB")
    lines.append("")
    logged = figures["logins"]
    for peer, row in logged.items():
        lines.append(f"{row['concurrent']} concurrent logins, {peer}: {row['succeeded']} ok in {row['wall_s']} s "
                     f"(each: median {row['login_p50_s']} s, slowest {row['login_max_s']} s)")
    gateway = logged["gateway"]
    verdict = min(ratios) >= TARGET_RATIO and gateway["succeeded"] == gateway["concurrent"]
    lines.append(f"acceptance: {'PASS' if verdict else 'FAIL'} (lowest ratio {min(ratios)})")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=Settings.repeats)
    parser.add_argument("--logins", type=int, default=50)
    parser.add_argument("--pin", choices=("split", "none"), default="split")
    parser.add_argument("--ciphers", default=",".join(CIPHERS), help="comma-separated, of the gateway's ciphers")
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
    settings = Settings(args.size_mib, args.repeats, args.logins, args.pin, args.python, args.ciphers.split(","))
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
