"""
Memory after attacks: ``python bench/attacks.py`` starts, on loopback and
free ports, the soak's backend (``_soak_backend.py``) and ``twistd -n
edd-gateway`` (through ``_soak_gateway.py``, which answers a memory probe),
then runs C{--rounds} (3) identical rounds of slowhttptest's attacks from
four addresses (L{edd_gateway.testing.AttackSettings}: 250 connections
each, 127.0.0.2, .3, .5, .6), each attack for C{--seconds} (15):

 - slow bodies of 8 KiB, 10 bytes a second (read whole before a backend
   connection is taken);
 - slow bodies of 1 MiB whose first 70,000 bytes come at once (past the
   body buffer: streamed, at most --body-streams-per-client per address);
 - slowloris (a head never finished);
 - slow read (32 pipelined GETs, read one socket read a second).

After each round the attackers close, the bench waits (at most 30 s) for
the gateway's descriptors to come back to the count before the first round,
asks the gateway for its Python memory (allocated blocks, live objects by
type, after a full collection) and reads its RSS.  Verdict: RSS after the
last round within 10 MiB of RSS after the first (the first round sets the
allocator's high-water mark; growth round over round is a leak).  Figures in
C{bench/results/<timestamp>-attacks.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from _procs import ProcessSet, Started, free_port, log_tail, rss_kib, wait_listening  # noqa: E402

HOST = "attacks.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6")
TOLERANCE_MIB = 10
ATTACKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("slow-body-8k", {"kind": "slow-body", "body_size": 8192, "path": "/echo"}),
    ("slow-body-1m-streamed", {"kind": "slow-body", "body_size": 1 << 20, "first": 70_000, "path": "/echo"}),
    ("slowloris", {"kind": "slowloris", "path": "/small"}),
    ("slow-read", {"kind": "slow-read", "path": "/small"}),
)


def descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def start(procs: ProcessSet, work: Path, python: str) -> tuple[Started, int]:
    backend_port, ws_port, http_port = free_port(), free_port(), free_port()
    backend = procs.start("backend", [python, str(BENCH_DIR / "_soak_backend.py"), str(backend_port), str(ws_port)])
    wait_listening(backend, backend_port)
    (work / "routes.yaml").write_text(json.dumps({"routes": [
        {"host": HOST, "path": "/", "target": f"127.0.0.1:{backend_port}"}]}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDD_SOAK_PROBE": str(work / "probe.jsonl"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [python, str(BENCH_DIR / "_soak_gateway.py"), "-n", "--pidfile=", "--logfile=-", "edd-gateway",
            "--routes", str(work / "routes.yaml"), "--listen", f"tcp:{http_port}:interface=127.0.0.1",
            "--admin", "none", "--no-access-log", "--state-file", str(work / "pins.json"),
            "--pool-idle-timeout", "5"]
    gateway = procs.start("gateway", argv, env=env, cwd=work)
    wait_listening(gateway, http_port)
    return gateway, http_port


def probe(gateway: Started, work: Path, timeout: float = 15.0) -> dict[str, Any]:
    """The gateway's Python memory, from _soak_gateway.py's SIGUSR2 probe."""
    path = work / "probe.jsonl"
    seen = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(gateway.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > seen:
            try:
                return json.loads(lines[seen])
            except ValueError:
                pass
        time.sleep(0.2)
    return {"error": "no answer to the memory probe"}


def run_rounds(gateway: Started, port: int, work: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """The attack rounds, in a Twisted reactor of this process."""
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import deferToThread

    from edd_gateway.testing import AttackSettings, start_attack

    figures: dict[str, Any] = {"rounds": []}

    async def settle(baseline: int) -> int:
        deadline = time.monotonic() + 30
        count = descriptors(gateway.pid)
        while count > baseline + 2 and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.5, lambda: None)
            count = descriptors(gateway.pid)
        return count

    async def main() -> None:
        baseline_fds = descriptors(gateway.pid)
        figures["before"] = {"rss_mib": round((rss_kib(gateway.pid) or 0) / 1024, 1), "descriptors": baseline_fds,
                             "memory": summary(await deferToThread(probe, gateway, work))}
        for number in range(1, rounds + 1):
            attacks = []
            for name, settings in ATTACKS:
                attack = start_attack(reactor, port, AttackSettings(addresses=ADDRESSES, host=HOST, **settings))
                await task.deferLater(reactor, seconds, lambda: None)
                attacks.append({"attack": name, "holding": attack.holding(), "opened": sum(attack.opened.values()),
                                "answers": dict(attack.answers),
                                "gateway_rss_mib": round((rss_kib(gateway.pid) or 0) / 1024, 1)})
                attack.stop()
            fds = await settle(baseline_fds)
            memory = await deferToThread(probe, gateway, work)
            record = {"round": number, "attacks": attacks, "descriptors_after": fds,
                      "rss_mib": round((rss_kib(gateway.pid) or 0) / 1024, 1), "memory": summary(memory)}
            figures["rounds"].append(record)
            figures.setdefault("_types", []).append(memory.get("types", {}))
            print(f"round {number}: RSS {record['rss_mib']} MiB, descriptors {fds} (before: {baseline_fds}), "
                  f"{record['memory']}", flush=True)

    outcome: list[Any] = []
    done = ensureDeferred(main())
    done.addBoth(outcome.append).addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if outcome and hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    return figures


def summary(memory: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in memory.items() if key not in ("types", "time")}


def growth(first: dict[str, int], last: dict[str, int], top: int = 10) -> dict[str, int]:
    changes = {name: last.get(name, 0) - first.get(name, 0) for name in set(first) | set(last)}
    return dict(sorted(((n, c) for n, c in changes.items() if c), key=lambda item: -item[1])[:top])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="each attack's duration in a round")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the gateway")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edd-bench-attacks-"))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        with ProcessSet(work) as procs:
            gateway, port = start(procs, work, args.python)
            figures = run_rounds(gateway, port, work, args.rounds, args.seconds)
    except Exception:
        print(log_tail(work / "gateway.log"))
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(figures, args.results_dir, stamp)


def report(figures: dict[str, Any], results_dir: Path, stamp: str) -> int:
    types = figures.pop("_types", [])
    rss = [record["rss_mib"] for record in figures["rounds"]]
    figures["rss_growth_after_first_round_mib"] = round(rss[-1] - rss[0], 1)
    figures["type_growth_after_first_round"] = growth(types[0], types[-1]) if types else {}
    verdict = figures["rss_growth_after_first_round_mib"] <= TOLERANCE_MIB
    figures["verdict"] = "PASS" if verdict else "FAIL"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stamp}-attacks.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"RSS before {figures['before']['rss_mib']} MiB; after each round {rss}; growth after the first "
          f"{figures['rss_growth_after_first_round_mib']} MiB (at most {TOLERANCE_MIB}): {figures['verdict']}")
    print(f"live objects that grew after the first round: {figures['type_growth_after_first_round']}")
    print(f"results: {path}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
