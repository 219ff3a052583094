"""
Process plumbing for the benchmarks: free loopback ports, starting programs
pinned to chosen CPUs, waiting until they listen, stopping every one of them
(even on Ctrl-C or an error), and reading a process tree's CPU time and
resident memory from ``/proc``.

Every program a benchmark starts goes through L{ProcessSet}, so that leaving
its ``with`` block, for whatever reason, stops them all: each runs in its own
session and is stopped by its own process-group id, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

LOOPBACK = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A program exited or never listened; the message holds its log's tail."""


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """C{argv} run under C{taskset} on C{cpus} (unchanged when C{cpus} is None)."""
    if not cpus or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", ",".join(str(cpu) for cpu in cpus), *argv]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Started:
    """One program started by a L{ProcessSet}."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None


@dataclass
class ProcessSet:
    """The programs a run started; leaving the C{with} block stops them all."""

    log_dir: Path
    started: list[Started] = field(default_factory=list)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: Sequence[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                pinned(argv, cpus),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        started = Started(name, process, log_path)
        self.started.append(started)
        return started

    def stop(self, started: Started, grace: float = 5.0) -> None:
        if started.running():
            _signal_group(started.pid, signal.SIGTERM)
            try:
                started.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(started.pid, signal.SIGKILL)
                started.process.wait(grace)
        # Children left behind in the session (an nginx worker whose master
        # died first) share the group id: make sure none outlives the run.
        _signal_group(started.pid, signal.SIGKILL)
        if started in self.started:
            self.started.remove(started)

    def stop_all(self) -> None:
        for started in reversed(list(self.started)):
            self.stop(started)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def wait_listening(started: Started, port: int, timeout: float = 20.0) -> None:
    """Return once C{port} accepts connections; raise L{StartError} if the program dies or is too slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not started.running():
            raise StartError(
                f"{started.name} exited with {started.process.returncode}:\n{log_tail(started.log_path)}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"{started.name} did not listen on {port} within {timeout}s:\n{log_tail(started.log_path)}")


def process_tree(pid: int) -> list[int]:
    """C{pid} and all its descendants (threads' children included)."""
    tree = [pid]
    index = 0
    while index < len(tree):
        tree.extend(_children(tree[index]))
        index += 1
    return tree


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by C{pid} and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def rss_kib(pid: int) -> int | None:
    """C{VmRSS} of one process in KiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


class RssSampler:
    """Samples one process's RSS every C{interval} seconds in a thread, keeping every sample."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples_kib: list[int] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            rss = rss_kib(self.pid)
            if rss is not None:
                self.samples_kib.append(rss)
            if self._stopping.wait(self.interval):
                return

    @property
    def peak_kib(self) -> int:
        return max(self.samples_kib, default=0)


def run_tool(argv: Sequence[str], *, cpus: Sequence[int] | None = None, timeout: float) -> str:
    """Run a short-lived tool (wrk, curl) to completion and return its stdout; stderr goes into errors."""
    try:
        completed = subprocess.run(
            pinned(argv, cpus),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            text=True,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:g}s") from None
    if completed.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited with {completed.returncode}: {completed.stderr.strip() or completed.stdout.strip()}"
        )
    return completed.stdout
