"""
Soak test of the real gateway: ``python bench/soak.py`` starts, on loopback
and free ports, a backend (``_soak_backend.py``: HTTP ``/small`` and
``/echo``, and a WebSocket echo), a throwaway OpenSSH ``sshd`` standing in
for a container, and ``twistd -n edd-gateway`` with its access log on (into
its log file, as in production) and an admin endpoint; then it runs
C{--rounds} identical rounds of C{--duration} seconds, each with

 - C{--http-clients} concurrent keep-alive HTTP clients (raw asyncio
   sockets, responses parsed with httptools), each sending a request every
   ~C{--http-interval} s (every C{--echo-every}-th a POST of up to 16 KiB the
   backend echoes), reconnecting every 50-150 requests;
 - C{--websockets} concurrent WebSockets echoing 1-8 KiB text and binary
   messages every ~C{--ws-interval} s, each closed cleanly and opened again
   after 15-30 s;
 - C{--ssh-sessions} concurrent OpenSSH ``ssh CONTAINER cat`` sessions
   through the gateway's SSH listener, echoing a 4 KiB line every
   ~C{--ssh-interval} s, each ended (end of input) and opened again after
   15-25 s;

every answer checked byte for byte and every error counted by kind, the
clients' source addresses spread over 127.0.0.1-127.0.0.N.  The gateway's
descriptors (by kind: client, backend, sshd, listener...), RSS, threads and
CPU are sampled every second by a process of their own.  After each round
the clients close, the soak waits (at most C{--settle} s) for the gateway's
descriptors to come back to the baseline taken before the first round, and
asks the gateway for its Python memory (``_soak_gateway.py`` runs twistd
with a SIGUSR2 probe: allocated blocks and live objects after a collection,
and the types that collection found in reference cycles).

Verdicts (exit status 1 when one fails):

 - no unexpected error: no client error, no HTTP status other than 200/101
   and no SSH outcome other than ``relayed`` in the access log, no error,
   warning or traceback in the gateway's log;
 - descriptors back: after every round, no descriptor facing a client, a
   WebSocket backend or the sshd, and at most baseline + C{--fd-tolerance}
   in all (idle pooled backend connections close after the gateway's
   C{--pool-idle-timeout}, which the soak sets to 10 s);
 - RSS flat after the first round: the first round sets the allocator's
   high-water mark, so RSS after the last round may not exceed the highest
   RSS after an earlier round by more than C{--rss-tolerance-mib}; a leak
   grows again every round;
 - Python heap flat after the first round: allocated blocks after a
   collection, after the last round, within 1% (at least 2,000 blocks) of
   after the first.

Figures: a table on stdout and C{bench/results/<timestamp>-soak.json}, the
programs' logs in C{<timestamp>-soak-logs/} (the gateway's gzipped).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from _procs import ProcessSet, Started, cpu_seconds, free_port, log_tail, wait_listening  # noqa: E402
from _soak_load import HOST, Target, run_round  # noqa: E402

CONTAINER = "soak1"
#: Descriptor kinds that are connections (everything but listeners, files, pipes and the reactor's own).
CONNECTION_KINDS = {"client-http", "client-ssh", "admin", "backend-http", "backend-ws", "container-sshd", "tcp-other"}
_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--duration", type=float, default=60.0, help="seconds of load in each round (default 60)")
    add("--rounds", type=int, default=2, help="identical rounds; RSS after the last is compared with the first "
        "(default 2)")
    add("--http-clients", type=int, default=1000, help="concurrent keep-alive HTTP clients (default 1000)")
    add("--websockets", type=int, default=100, help="concurrent WebSockets (default 100)")
    add("--ssh-sessions", type=int, default=20, help="concurrent SSH sessions (default 20)")
    add("--http-interval", type=float, default=1.0, help="mean seconds between one client's requests (1.0)")
    add("--ws-interval", type=float, default=0.5, help="mean seconds between one WebSocket's messages (0.5)")
    add("--ssh-interval", type=float, default=0.5, help="mean seconds between one SSH session's lines (0.5)")
    add("--echo-every", type=int, default=10, help="every Nth HTTP request is a POST echoed back (10; 0: none)")
    add("--ramp", type=float, default=3.0, help="clients start spread over this many seconds (3)")
    add("--sources", type=int, default=9, help="client source addresses 127.0.0.1..127.0.0.N (9)")
    add("--settle", type=float, default=30.0, help="seconds to wait for descriptors to return after a round (30)")
    add("--fd-tolerance", type=int, default=3, help="descriptors above baseline still counted as back (3)")
    add("--rss-tolerance-mib", type=float, default=4.0,
        help="RSS after the last round may exceed RSS after the first by this much (4)")
    add("--pool-idle-timeout", type=float, default=10.0,
        help="the gateway's --pool-idle-timeout, so idle backend connections close within --settle (10)")
    add("--no-access-log", action="store_true", help="run the gateway without its access log")
    add("--python", default=sys.executable, help="the interpreter that runs the gateway (default: this one)")
    add("--results-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


# -- the gateway's descriptors, memory and CPU from /proc --------------------------------------------------------


@dataclass
class Ports:
    http: int
    ssh: int
    admin: int
    backend_http: int
    backend_ws: int
    sshd: int


def _tcp_table(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for every TCP socket in the process's namespace."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                            _TCP_STATES.get(state, state))
    return table


def descriptors(pid: int, ports: Ports) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The process's descriptors by kind, and its TCP sockets by state."""
    kinds: collections.Counter[str] = collections.Counter()
    states: collections.Counter[str] = collections.Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds, states
    links = []
    for name in names:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    table = _tcp_table(pid) if any(link.startswith("socket:") for link in links) else {}
    for link in links:
        if link.startswith("socket:["):
            found = table.get(link[8:-1])
            if found is None:
                kinds["socket-other"] += 1
                continue
            local, remote, state = found
            states[state] += 1
            if state == "LISTEN":
                kinds["listener"] += 1
            elif local == ports.http:
                kinds["client-http"] += 1
            elif local == ports.ssh:
                kinds["client-ssh"] += 1
            elif local == ports.admin:
                kinds["admin"] += 1
            elif remote == ports.backend_http:
                kinds["backend-http"] += 1
            elif remote == ports.backend_ws:
                kinds["backend-ws"] += 1
            elif remote == ports.sshd:
                kinds["container-sshd"] += 1
            else:
                kinds["tcp-other"] += 1
        elif link.startswith("pipe:"):
            kinds["pipe"] += 1
        elif link.startswith("anon_inode:"):
            kinds["anon-inode"] += 1
        else:
            kinds["file"] += 1
    return kinds, states


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def snapshot(pid: int, ports: Ports) -> dict[str, Any]:
    kinds, states = descriptors(pid, ports)
    status = _status(pid)
    return {"t": time.monotonic(), "fds": sum(kinds.values()), "fd_kinds": dict(sorted(kinds.items())),
            "tcp_states": dict(sorted(states.items())), "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
            "hwm_mib": round(status.get("VmHWM", 0) / 1024, 1), "threads": status.get("Threads", 0),
            "cpu_s": cpu_seconds(pid)}


def _public(sample: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in sample.items() if key not in ("t",)}


def cpu_with_children(pid: int) -> float:
    """CPU seconds of C{pid}, its live descendants, and the children it has waited for (sshd's sessions)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return cpu_seconds(pid) + (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def sample_forever(pid: int, ports: Ports, output: Path, interval: float = 1.0) -> None:
    """The sampler's own process (``soak.py _sample``): a snapshot every C{interval} s as a JSON line, until killed."""
    started = time.monotonic()
    previous = snapshot(pid, ports)
    with open(output, "a") as out:
        for tick in range(1, 1_000_000):
            time.sleep(max(0.0, started + tick * interval - time.monotonic()))
            current = snapshot(pid, ports)
            elapsed = current["t"] - previous["t"]
            current["cpu_pct"] = round(100 * (current["cpu_s"] - previous["cpu_s"]) / elapsed, 1) if elapsed else 0
            current["load1"] = round(os.getloadavg()[0], 2)
            out.write(json.dumps(current) + "\n")
            out.flush()
            previous = current


class Sampler:
    """
    Every second while a round runs, the gateway's snapshot and its CPU share, taken by a process of its own
    (``soak.py _sample``) so that reading /proc neither holds up the clients nor waits for them.
    """

    def __init__(self, procs: ProcessSet, work: Path, number: int, gateway: int, ports: Ports,
                 duration: float) -> None:
        self.procs, self.duration = procs, duration
        self.output = work / f"samples-{number}.jsonl"
        self.started = time.monotonic()
        argv = [sys.executable, str(Path(__file__).resolve()), "_sample", str(gateway), json.dumps(vars(ports)),
                str(self.output)]
        self.process = procs.start(f"sampler-{number}", argv)
        self.samples: list[dict[str, Any]] = []

    def stop(self) -> None:
        self.procs.stop(self.process)
        try:
            lines = self.output.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                sample = json.loads(line)
            except ValueError:
                continue  # a line cut by the stop
            sample["at_s"] = round(sample["t"] - self.started, 1)
            self.samples.append(sample)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        cpu = [sample["cpu_pct"] for sample in self.samples]
        # While every client runs (the clients all close at the deadline: a burst of CLOSE_WAIT then is normal).
        steady = [sample for sample in self.samples if sample["at_s"] <= self.duration] or self.samples
        return {
            "samples": len(self.samples),
            "fds_peak": max(sample["fds"] for sample in self.samples),
            "client_sockets_peak": max(sample["fd_kinds"].get("client-http", 0) + sample["fd_kinds"].get(
                "client-ssh", 0) for sample in self.samples),
            "backend_http_sockets_peak": max(sample["fd_kinds"].get("backend-http", 0) for sample in self.samples),
            "close_wait_peak_under_load": max(sample["tcp_states"].get("CLOSE_WAIT", 0) for sample in steady),
            "close_wait_peak_at_stop": max(sample["tcp_states"].get("CLOSE_WAIT", 0) for sample in self.samples),
            "rss_peak_mib": max(sample["rss_mib"] for sample in self.samples),
            "threads_peak": max(sample["threads"] for sample in self.samples),
            "cpu_pct_mean": round(statistics.mean(cpu), 1),
            "cpu_pct_peak": max(cpu),
            "load1_max": max(sample["load1"] for sample in self.samples),
        }


# -- the gateway's own account: access log, error lines, metrics -------------------------------------------------

_ACCESS = re.compile(r"\[edd_gateway\.access#info\] (\S+) (.*)$")
_HTTP_STATUS = re.compile(r'^"[^"]*" (\d{3}) ')
_SSH_OUTCOME = re.compile(r"^ssh \S+ (\S+) ")
_PROBLEM = re.compile(r"#(error|critical|warn)\]|Traceback|Unhandled")


def read_gateway_log(path: Path, offset: int) -> tuple[dict[str, Any], int]:
    """What the gateway logged since C{offset}: access lines by kind and outcome, and its problem lines."""
    with open(path, "rb") as log:
        log.seek(offset)
        text = log.read()
        end = log.tell()
    http: collections.Counter[str] = collections.Counter()
    tunnels: collections.Counter[str] = collections.Counter()
    ssh: collections.Counter[str] = collections.Counter()
    sources: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    problem_examples: list[str] = []
    for raw in text.decode("utf-8", "replace").splitlines():
        access = _ACCESS.search(raw)
        if access:
            client, rest = access.groups()
            sources[client] += 1
            if rest.startswith('"'):
                status = _HTTP_STATUS.match(rest)
                http[status.group(1) if status else "?"] += 1
            elif rest.startswith("ssh "):
                outcome = _SSH_OUTCOME.match(rest)
                ssh[outcome.group(1) if outcome else "?"] += 1
            else:
                tunnels[rest.split(" ", 1)[0]] += 1
            continue
        if _PROBLEM.search(raw):
            # The namespace and level, without the timestamp, is the kind.
            kind = re.sub(r"^\S+ ", "", raw)[:120]
            problems[re.sub(r"\d+", "N", kind)[:90]] += 1
            if len(problem_examples) < 20:
                problem_examples.append(raw[:400])
    return {"http_status": dict(http), "tunnels": dict(tunnels), "ssh_outcomes": dict(ssh),
            "client_addresses": len(sources), "problem_lines": dict(problems),
            "problem_examples": problem_examples}, end


def metrics(admin_port: int) -> dict[str, float]:
    """The gateway's counters and gauges of interest from /metrics (series -> value)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError as problem:
        return {"error": str(problem)}  # type: ignore[dict-item]
    wanted = ("edd_gateway_connections_total", "edd_gateway_connections_active", "edd_gateway_http_requests_total",
              "edd_gateway_tunnels_total", "edd_gateway_ssh_logins_total", "edd_gateway_ssh_sessions_total")
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {series: after[series] - before.get(series, 0.0) for series in after
            if not series.startswith("edd_gateway_connections_active") and after[series] != before.get(series, 0.0)}


# -- set-up ------------------------------------------------------------------------------------------------------


def raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise SystemExit(f"the open-file limit is {soft}; the soak needs about {needed} (raise the hard limit)")
    return soft


def source_addresses(count: int) -> list[str]:
    """127.0.0.1..127.0.0.N, each checked bindable (Linux routes all of 127/8 to loopback)."""
    found = []
    for index in range(1, count + 1):
        address = f"127.0.0.{index}"
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        found.append(address)
    return found or ["127.0.0.1"]


def write_key(path: Path) -> str:
    from edd_gateway.ssh.hostkey import load_or_create_key, public_text

    return public_text(load_or_create_key(str(path), write_public=True), path.name)


def login_name() -> str:
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
    return CONTAINER if user == "root" else f"{user}.{CONTAINER}"


def gateway_help(python: str, env: dict[str, str]) -> str:
    completed = subprocess.run([python, "-c", "from twisted.scripts.twistd import run; run()", "edd-gateway",
                                "--help"], capture_output=True, text=True, env=env, timeout=60)
    return completed.stdout + completed.stderr


def _option_default(help_text: str, option: str) -> float | None:
    """The C{[default: N]} of C{option} in twistd's help (None when the gateway has no such option)."""
    found = re.search(re.escape(option) + r"=(.*?)\[default:\s*([0-9.]+)\]", help_text, re.DOTALL)
    return float(found.group(2)) if found else None


def admission_options(help_text: str, args: argparse.Namespace, sources: int) -> tuple[list[str], list[str]]:
    """
    Per-address admission limits, where the gateway has them: kept at their defaults when the soak's load per
    source address stays well inside them (so the admission accounting is soaked too), raised otherwise -- the
    soak's few loopback addresses stand in for over a thousand clients.  The options passed, and notes.
    """
    per_source = -(-(args.http_clients + args.websockets + args.ssh_sessions) // sources)
    extra: list[str] = []
    notes: list[str] = []
    cap = _option_default(help_text, "--max-connections-per-ip")
    if cap is not None and cap and per_source > cap / 2:
        extra += ["--max-connections-per-ip", str(2 * per_source)]
    rate, burst = (_option_default(help_text, "--connection-rate-per-ip"),
                   _option_default(help_text, "--connection-burst-per-ip"))
    if rate and burst is not None and per_source > (burst + rate * args.ramp) / 2:
        extra += ["--connection-rate-per-ip", str(round(max(rate, 2 * per_source / max(args.ramp, 1.0)))),
                  "--connection-burst-per-ip", str(round(max(burst, 2 * per_source)))]
    if cap is not None or rate is not None:
        notes.append(f"per-address admission: {per_source} connections per source address at most; gateway "
                     f"defaults {cap:g} open, {rate or 0:g}/s (burst {burst or 0:g}); "
                     + (f"passed {' '.join(extra)}" if extra else "defaults kept"))
    elif re.search(r"per[- ]ip|per client", help_text, re.IGNORECASE):
        notes.append("the gateway's --help mentions a per-IP limit the soak does not know: check the errors")
    return extra, notes


def git_state() -> dict[str, Any]:
    """The commit the gateway ran from, and the files changed in the tree (figures on a dirty tree say so)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if line[3:].startswith(("edd_gateway/", "twisted/"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "gateway_files_changed_or_new": changed}


@dataclass
class Rig:
    procs: ProcessSet
    work: Path
    gateway: Started
    backend: Started
    sshd: Started
    ports: Ports
    target: Target
    notes: list[str]
    gateway_argv: list[str]


def start_rig(procs: ProcessSet, work: Path, args: argparse.Namespace, sources: list[str]) -> Rig:
    notes: list[str] = []
    ports = Ports(http=free_port(), ssh=free_port(), admin=free_port(), backend_http=free_port(),
                  backend_ws=free_port(), sshd=free_port())
    # Keys: the user's, sshd's host key, and the gateway's client key sshd trusts.
    user = write_key(work / "user")
    write_key(work / "sshd_host_key")
    client = write_key(work / "client")
    (work / "authorized_keys").write_text(f"{client}\n")
    (work / "sshd_config").write_text("\n".join([
        f"Port {ports.sshd}", "ListenAddress 127.0.0.1", f"HostKey {work / 'sshd_host_key'}", "PidFile none",
        f"AuthorizedKeysFile {work / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PrintMotd no", "MaxStartups 500", "MaxSessions 100", "LogLevel ERROR",
        # bash sources ~/.bashrc for commands run by sshd unless it is a nested shell: the soak's sessions run
        # `cat`, and the machine's own shell start-up (whatever it prints) is no part of what is measured.
        "SetEnv SHLVL=1", "",
    ]))
    sshd_path = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    ssh_path = shutil.which("ssh")
    if sshd_path is None or ssh_path is None:
        raise SystemExit("the soak needs OpenSSH's ssh and sshd (Debian: openssh-client, openssh-server)")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    sshd = procs.start("sshd", [sshd_path, "-D", "-e", "-f", str(work / "sshd_config")])
    backend = procs.start("backend", [args.python, str(BENCH_DIR / "_soak_backend.py"), str(ports.backend_http),
                                      str(ports.backend_ws)])
    wait_listening(sshd, ports.sshd)
    wait_listening(backend, ports.backend_http)
    wait_listening(backend, ports.backend_ws)

    (work / "routes.yaml").write_text(json.dumps({"routes": [
        {"host": HOST, "path": "/", "target": f"127.0.0.1:{ports.backend_http}"},
        {"host": HOST, "path": "/ws", "target": f"127.0.0.1:{ports.backend_ws}"},
    ]}))
    (work / "containers.yaml").write_text(json.dumps({"containers": [
        {"id": CONTAINER, "user_id": "soak", "external_ip": "127.0.0.1", "ssh_enabled": True, "ssh_keys": [user]},
    ]}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDD_SOAK_PROBE": str(work / "probe.jsonl"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    extra, admission_notes = admission_options(gateway_help(args.python, env), args, len(sources))
    notes += admission_notes
    if args.no_access_log:
        extra.append("--no-access-log")
    # twistd, in a process that also answers the soak's memory probe (SIGUSR2): see _soak_gateway.py.
    argv = [args.python, str(BENCH_DIR / "_soak_gateway.py"), "-n", "--pidfile=", "--logfile=-",
            "edd-gateway", "--routes", str(work / "routes.yaml"),
            "--listen", f"tcp:{ports.http}:interface=127.0.0.1",
            "--admin", f"tcp:{ports.admin}:interface=127.0.0.1",
            "--containers", str(work / "containers.yaml"), "--state-file", str(work / "pins.json"),
            "--ssh-listen", f"tcp:{ports.ssh}:interface=127.0.0.1", "--ssh-port", str(ports.sshd),
            "--ssh-host-key", str(work / "gateway_host_key"), "--ssh-client-key", str(work / "client"),
            "--pool-idle-timeout", str(args.pool_idle_timeout), *extra]
    gateway = procs.start("gateway", argv, env=env, cwd=work)
    wait_listening(gateway, ports.http)
    wait_listening(gateway, ports.ssh)
    wait_ready(gateway, ports.admin)

    ssh_argv = [ssh_path, "-F", "/dev/null", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={work / 'known_hosts'}", "-o", "HostKeyAlias=edd-gateway-soak",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=30", "-i", str(work / "user")]
    target = Target(ports.http, ports.ssh, sources, ssh_argv, f"{login_name()}@127.0.0.1")
    shown = [part.replace(str(work), "WORK") for part in argv[argv.index("-n"):]]
    return Rig(procs, work, gateway, backend, sshd, ports, target, notes, ["twistd", *shown])


def wait_ready(gateway: Started, admin_port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not gateway.running():
            raise SystemExit(f"the gateway exited:\n{log_tail(gateway.log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway was not ready within {timeout} s:\n{log_tail(gateway.log_path)}")


def smoke(rig: Rig) -> None:
    """One of each before the baseline: a failure here is a set-up problem, not a soak result."""
    request = urllib.request.Request(f"http://127.0.0.1:{rig.ports.http}/small", headers={"Host": HOST})
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise SystemExit(f"GET /small through the gateway: {response.status}")
    done = subprocess.run([*rig.target.ssh_argv, "-p", str(rig.ports.ssh), rig.target.ssh_destination, "echo ok"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or done.stdout != "ok\n":
        raise SystemExit(f"ssh through the gateway failed ({done.returncode}): {done.stderr.strip()}\n"
                         f"{log_tail(rig.gateway.log_path)}")


async def probe_gateway(rig: Rig, timeout: float = 15.0) -> dict[str, Any]:
    """The gateway's Python memory (allocated blocks, tracked objects, by type), from _soak_gateway.py's probe."""
    path = rig.work / "probe.jsonl"
    seen = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(rig.gateway.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > seen:
            try:
                return json.loads(lines[seen])
            except ValueError:
                pass  # still being written
        await asyncio.sleep(0.2)
    return {"error": f"no answer to the memory probe within {timeout:g} s"}


def memory_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in ("types", "time")}


async def rss_after_trim(rig: Rig) -> dict[str, Any]:
    """After the last round: free heap handed back with malloc_trim, and the RSS left (what the allocator kept)."""
    (rig.work / "probe.jsonl.trim").touch()
    record = await probe_gateway(rig)
    await asyncio.sleep(0.5)
    return {"malloc_trim_returned": record.get("malloc_trim"),
            "rss_mib": _status(rig.gateway.pid).get("VmRSS", 0) / 1024}


def type_growth(first: dict[str, Any], last: dict[str, Any], top: int = 15) -> dict[str, int]:
    """The object types whose live count grew most from C{first} to C{last} probe."""
    before, after = first.get("types", {}), last.get("types", {})
    growth = {name: after.get(name, 0) - before.get(name, 0) for name in set(before) | set(after)}
    return dict(sorted(((name, change) for name, change in growth.items() if change), key=lambda item: -item[1])[:top])


# -- a round -----------------------------------------------------------------------------------------------------


async def settle(rig: Rig, baseline: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], float, bool]:
    """Poll (bounded) until the gateway's descriptors are back to baseline; the last snapshot, the wait, the verdict."""
    started = time.monotonic()
    client_side_gone = None
    while True:
        current = snapshot(rig.gateway.pid, rig.ports)
        if client_side_gone is None and not set(current["fd_kinds"]) & (CONNECTION_KINDS - {"backend-http"}):
            client_side_gone = round(time.monotonic() - started, 1)
        if current["fds"] <= baseline["fds"] or time.monotonic() - started > args.settle:
            break
        await asyncio.sleep(0.5)
    # When every socket but the pool's idle backend connections was gone (None: not within the wait).
    current["client_side_gone_s"] = client_side_gone
    # Idle backend connections may outlive the wait (the pool's idle timeout); anything facing a client may not.
    back = (current["fds"] <= baseline["fds"] + args.fd_tolerance
            and not set(current["fd_kinds"]) & (CONNECTION_KINDS - {"backend-http"}))
    return current, time.monotonic() - started, back


async def one_round(number: int, rig: Rig, baseline: dict[str, Any], args: argparse.Namespace,
                    log_offset: int) -> tuple[dict[str, Any], int]:
    others = {"backend": rig.backend.pid, "sshd": rig.sshd.pid, "soak clients and ssh": os.getpid()}
    cpu_before = {name: cpu_with_children(pid) for name, pid in others.items()}
    gateway_cpu_before = cpu_seconds(rig.gateway.pid)
    metrics_before = metrics(rig.ports.admin)
    sampler = Sampler(rig.procs, rig.work, number, rig.gateway.pid, rig.ports, args.duration)
    print(f"round {number}: {args.http_clients} HTTP clients, {args.websockets} WebSockets, "
          f"{args.ssh_sessions} SSH sessions for {args.duration:g} s ...", flush=True)
    tally, wall = await run_round(rig.target, args.duration, args.http_clients, args.websockets, args.ssh_sessions,
                                  args.http_interval, args.ws_interval, args.ssh_interval, args.echo_every, args.ramp)
    sampler.stop()
    gateway_cpu = cpu_seconds(rig.gateway.pid) - gateway_cpu_before
    cpu_others = {name: round(cpu_with_children(pid) - cpu_before[name], 1) for name, pid in others.items()}
    after, settle_s, settled = await settle(rig, baseline, args)
    memory = await probe_gateway(rig)
    metrics_after = metrics(rig.ports.admin)
    log, log_offset = read_gateway_log(rig.gateway.log_path, log_offset)
    unexpected_status = {status: count for status, count in log["http_status"].items()
                         if status not in ("200", "101")}
    unexpected_ssh = {outcome: count for outcome, count in log["ssh_outcomes"].items() if outcome != "relayed"}
    result = {
        "round": number,
        "wall_s": round(wall, 1),
        "counts": dict(sorted(tally.counts.items())),
        "rates": {"http_requests_per_s": round(tally.counts["http_requests"] / args.duration, 1),
                  "ws_messages_per_s": round(tally.counts["ws_messages"] / args.duration, 1),
                  "ssh_lines_per_s": round(tally.counts["ssh_lines"] / args.duration, 1)},
        "latency_ms": tally.percentiles(),
        "client_errors": dict(sorted(tally.errors.items())),
        "client_error_examples": tally.examples,
        "gateway_log": log,
        "gateway_metrics_delta": metrics_delta(metrics_before, metrics_after),
        "gateway_connections_active_after": {series: value for series, value in metrics_after.items()
                                             if series.startswith("edd_gateway_connections_active")},
        "during": sampler.summary(),
        "gateway_cpu_s": round(gateway_cpu, 1),
        "gateway_cpu_pct_of_one_core": round(100 * gateway_cpu / wall, 1),
        "other_cpu_s": cpu_others,
        "after": _public(after),
        "after_python_memory": memory,
        "settle_s": round(settle_s, 1),
        "fds_back": settled,
        "unexpected": {"client_errors": sum(tally.errors.values()), "http_status": unexpected_status,
                       "ssh_outcomes": unexpected_ssh, "gateway_problem_lines": sum(log["problem_lines"].values())},
        "samples": [{key: value for key, value in _public(sample).items() if key != "cpu_s"}
                    for sample in sampler.samples],
    }
    return result, log_offset


def unexpected_total(result: dict[str, Any]) -> int:
    unexpected = result["unexpected"]
    return (unexpected["client_errors"] + sum(unexpected["http_status"].values())
            + sum(unexpected["ssh_outcomes"].values()) + unexpected["gateway_problem_lines"])


async def soak(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    smoke(rig)
    await asyncio.sleep(2)
    log_offset = rig.gateway.log_path.stat().st_size
    # The baseline: once the smoke test's connections are gone and the idle backend connection it left expired.
    deadline = time.monotonic() + 2 * args.pool_idle_timeout + 10
    while True:
        baseline = snapshot(rig.gateway.pid, rig.ports)
        if not set(baseline["fd_kinds"]) & CONNECTION_KINDS or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    baseline_memory = await probe_gateway(rig)
    print(f"baseline: {baseline['fds']} fds {baseline['fd_kinds']}, RSS {baseline['rss_mib']} MiB, "
          f"{baseline['threads']} threads, Python heap {baseline_memory.get('allocated_blocks_after_collect')} "
          "blocks", flush=True)
    rounds = []
    probes = [baseline_memory]
    for number in range(1, args.rounds + 1):
        result, log_offset = await one_round(number, rig, baseline, args, log_offset)
        probes.append(result["after_python_memory"])
        result["after_python_memory"] = memory_summary(result["after_python_memory"])
        rounds.append(result)
        print(render_round(result), flush=True)
    rss_after = [result["after"]["rss_mib"] for result in rounds]
    trimmed = await rss_after_trim(rig)
    trimmed["rss_mib"] = round(trimmed["rss_mib"], 1)
    heap = [probe.get("allocated_blocks_after_collect", 0) for probe in probes]
    heap_growth = heap[-1] - heap[1] if len(heap) > 2 else 0
    verdicts = {
        "no_unexpected_errors": all(unexpected_total(result) == 0 for result in rounds),
        "fds_back_to_baseline": all(result["fds_back"] for result in rounds),
        # The first round sets the allocator's high-water mark; a leak grows again in every later round.
        "rss_flat_after_first_round": len(rounds) < 2 or rss_after[-1] - max(rss_after[:-1]) <= args.rss_tolerance_mib,
        "python_heap_flat_after_first_round": heap_growth <= max(2000, 0.01 * heap[1]) if len(heap) > 2 else True,
    }
    return {"baseline": _public(baseline), "baseline_python_memory": memory_summary(baseline_memory),
            "rounds": rounds, "verdicts": verdicts,
            "rss_growth_mib": {"after_first_round_vs_baseline": round(rss_after[0] - baseline["rss_mib"], 1),
                               "after_last_round_vs_first": round(rss_after[-1] - rss_after[0], 1)},
            "after_last_round_malloc_trim": trimmed,
            "python_heap_blocks": {"baseline": heap[0], "after_rounds": heap[1:],
                                   "after_last_round_vs_first": heap_growth},
            "object_types_grown_first_to_last_round": type_growth(probes[1], probes[-1]) if len(probes) > 2 else {},
            "object_types_grown_baseline_to_first_round": type_growth(probes[0], probes[1])}


# -- output ------------------------------------------------------------------------------------------------------


def render_round(result: dict[str, Any]) -> str:
    counts, during, after = result["counts"], result["during"], result["after"]
    rates = result["rates"]
    lines = [
        f"round {result['round']} ({result['wall_s']} s):",
        f"  HTTP       {counts.get('http_requests', 0):>9,} requests ({rates['http_requests_per_s']:,}/s, "
        f"{counts.get('http_echo_requests', 0):,} echoed POSTs), {counts.get('http_connections', 0):,} connections",
        f"  WebSocket  {counts.get('ws_messages', 0):>9,} messages ({rates['ws_messages_per_s']:,}/s, "
        f"{counts.get('ws_bytes', 0) / 1e6:.1f} MB each way), {counts.get('ws_connections', 0):,} connections, "
        f"{counts.get('ws_closed_cleanly', 0):,} closed cleanly",
        f"  SSH        {counts.get('ssh_lines', 0):>9,} lines echoed ({counts.get('ssh_bytes', 0) / 1e6:.1f} MB each "
        f"way), {counts.get('ssh_sessions', 0)} sessions, {counts.get('ssh_sessions_clean', 0)} ended cleanly",
        "  latency ms (p50/p99/max): " + ", ".join(f"{kind} {row['p50']}/{row['p99']}/{row['max']}"
                                                   for kind, row in result["latency_ms"].items()),
        f"  client errors: {result['client_errors'] or 'none'}",
        f"  gateway access log: HTTP {result['gateway_log']['http_status']}, tunnels {result['gateway_log']['tunnels']}"
        f", SSH {result['gateway_log']['ssh_outcomes']}",
        f"  gateway problem lines: {result['gateway_log']['problem_lines'] or 'none'}",
        f"  in reference cycles after the round: {result['after_python_memory'].get('collected')} objects "
        f"{dict(list(result['after_python_memory'].get('garbage_types', {}).items())[:8])}",
        f"  gateway during: fds peak {during.get('fds_peak')} (client sockets {during.get('client_sockets_peak')}, "
        f"backend HTTP {during.get('backend_http_sockets_peak')}, CLOSE_WAIT peak "
        f"{during.get('close_wait_peak_under_load')} under load, {during.get('close_wait_peak_at_stop')} at stop), "
        f"RSS peak {during.get('rss_peak_mib')} MiB, threads peak {during.get('threads_peak')}",
        f"  gateway CPU: {result['gateway_cpu_s']} s = {result['gateway_cpu_pct_of_one_core']}% of a core "
        f"(1 s samples: peak {during.get('cpu_pct_peak')}%); others {result['other_cpu_s']}; "
        f"load1 max {during.get('load1_max')}",
        f"  after {result['settle_s']} s (all but idle backend connections gone after "
        f"{after.get('client_side_gone_s')} s): {after['fds']} fds {after['fd_kinds']}, RSS {after['rss_mib']} MiB, "
        f"{after['threads']} threads -> {'back to baseline' if result['fds_back'] else 'NOT BACK'}",
    ]
    return "\n".join(lines)


def render_summary(figures: dict[str, Any]) -> str:
    baseline = figures["baseline"]
    lines = ["", f"{'':<22}{'fds':>6}{'RSS MiB':>10}{'threads':>9}", "-" * 47,
             f"{'baseline':<22}{baseline['fds']:>6}{baseline['rss_mib']:>10}{baseline['threads']:>9}"]
    for result in figures["rounds"]:
        during, after = result["during"], result["after"]
        lines.append(f"{'round %d peak' % result['round']:<22}{during.get('fds_peak', 0):>6}"
                     f"{during.get('rss_peak_mib', 0):>10}{during.get('threads_peak', 0):>9}")
        lines.append(f"{'round %d after' % result['round']:<22}{after['fds']:>6}{after['rss_mib']:>10}"
                     f"{after['threads']:>9}")
    lines.append("")
    for name, ok in figures["verdicts"].items():
        lines.append(f"{name.replace('_', ' '):<40}{'PASS' if ok else 'FAIL'}")
    growth = figures["rss_growth_mib"]
    lines.append(f"RSS: {growth['after_first_round_vs_baseline']:+} MiB after round 1 vs baseline (allocator "
                 f"high-water), {growth['after_last_round_vs_first']:+} MiB after the last round vs the first; "
                 f"{figures['after_last_round_malloc_trim']['rss_mib']} MiB once malloc_trim(0) gave free heap back")
    heap = figures["python_heap_blocks"]
    lines.append(f"Python heap (allocated blocks after a collection): baseline {heap['baseline']:,}, after each round "
                 f"{', '.join(f'{blocks:,}' for blocks in heap['after_rounds'])}")
    if figures["object_types_grown_first_to_last_round"]:
        grown = figures["object_types_grown_first_to_last_round"]
        lines.append(f"object types grown from round 1 to the last: {grown}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["_sample"]:
        sample_forever(int(argv[1]), Ports(**json.loads(argv[2])), Path(argv[3]))
        return 0
    args = parse_args(argv)
    connections = args.http_clients + args.websockets + 2 * args.ssh_sessions
    open_files = raise_open_files(2 * connections + 256)
    sources = source_addresses(args.sources)
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="edd-soak-", dir=scratch))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    load_before = [round(load, 2) for load in os.getloadavg()]
    figures: dict[str, Any] = {}
    try:
        with ProcessSet(work) as procs:
            rig = start_rig(procs, work, args, sources)
            try:
                import uvloop
                runner = uvloop.run
            except ImportError:
                runner = asyncio.run  # type: ignore[assignment]
            figures = runner(soak(rig, args))
            figures["gateway_exit"] = "running at the end" if rig.gateway.running() else (
                f"exited {rig.gateway.process.returncode} during the soak")
    finally:
        logs = args.results_dir / f"{stamp}-soak-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in work.glob("*.log"):
            if log.name == "gateway.log":
                with open(log, "rb") as source, gzip.open(logs / "gateway.log.gz", "wb") as target:
                    shutil.copyfileobj(source, target)
            else:
                shutil.copy(log, logs / log.name)
        shutil.rmtree(work, ignore_errors=True)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                if key not in ("python", "results_dir")}
    figures = {"command": "python bench/soak.py " + " ".join(argv), "settings": settings,
               "gateway_command": rig.gateway_argv, "notes": rig.notes, "sources": sources,
               "open_file_limit": open_files, "cpus": len(os.sched_getaffinity(0)), "git": git_state(),
               "load_average_before": load_before,
               "load_average_after": [round(load, 2) for load in os.getloadavg()], **figures}
    path = args.results_dir / f"{stamp}-soak.json"
    path.write_text(json.dumps(figures, indent=1) + "\n")
    print(render_summary(figures))
    print(f"\nresults: {path}\nlogs: {logs}")
    return 0 if all(figures["verdicts"].values()) and figures["gateway_exit"] == "running at the end" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
