"""
The peers measured side by side, each in front of the same backend: direct
(no proxy), the gateway, twisted.web.proxy, nginx and haproxy (the last two
when installed). L{start_peers} starts them pinned to the proxy CPUs and
checks each answers 200 with the backend's body before it is measured.

A peer that fails to start or to answer is recorded with its error and left
out of the measurements, so one broken peer never hides the others' figures.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from _procs import ProcessSet, StartError, Started, free_port, log_tail, wait_listening
from backend import PEERS, SMALL_BODY, Backend, nginx_path, nginx_user_line, render

BENCH_HOST = "bench.local"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GATEWAY_CMD = "{twistd} -n --pidfile= edd-gateway --routes {routes} --listen tcp:{port}:interface=127.0.0.1 --admin none --no-access-log"
PEER_ORDER = ("direct", "gateway", "twisted", "nginx", "haproxy")


@dataclass
class Peer:
    """One way to reach the backend: a port, and the process to account CPU/RSS to (None for direct)."""

    name: str
    port: int
    started: Started | None

    @property
    def pid(self) -> int | None:
        return self.started.pid if self.started else None


@dataclass
class PeerSetup:
    """What every peer starter needs."""

    procs: ProcessSet
    workdir: Path
    backend: Backend
    cpus: Sequence[int] | None
    python: str
    gateway_cmd: str


def twistd_path(python: str) -> str:
    """The twistd next to C{python} (a virtualenv's), else the one on PATH."""
    beside = Path(python).parent / "twistd"
    if beside.exists():
        return str(beside)
    return shutil.which("twistd") or "twistd"


def _env_with_repo() -> dict[str, str]:
    """Children see this checkout first, so the gateway runs from it even when not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start_gateway(setup: PeerSetup) -> Peer:
    port = free_port()
    routes = setup.workdir / "routes.yaml"
    routes.write_text(
        f'routes:\n  - {{host: {BENCH_HOST}, path: /, target: "127.0.0.1:{setup.backend.port}"}}\n'
    )
    command = setup.gateway_cmd.format(
        twistd=twistd_path(setup.python), python=setup.python, routes=routes, port=port, bench=PEERS.parent
    )
    started = setup.procs.start(
        "gateway", shlex.split(command), cpus=setup.cpus, env=_env_with_repo(), cwd=setup.workdir
    )
    return Peer("gateway", port, started)


def start_twisted(setup: PeerSetup) -> Peer:
    port = free_port()
    argv = [setup.python, str(PEERS / "twisted_proxy.py"), str(port), str(setup.backend.port)]
    started = setup.procs.start("twisted", argv, cpus=setup.cpus, cwd=setup.workdir)
    return Peer("twisted", port, started)


def start_nginx(setup: PeerSetup) -> Peer:
    nginx = nginx_path()
    if nginx is None:
        raise StartError("nginx is not installed")
    port = free_port()
    config = render(
        "nginx-proxy.conf",
        setup.workdir / "nginx-proxy.conf",
        workdir=setup.workdir,
        port=port,
        backend_port=setup.backend.port,
        user_line=nginx_user_line(),
    )
    argv = [nginx, "-p", str(setup.workdir), "-c", str(config), "-e", str(setup.workdir / "nginx-proxy.error.log")]
    return Peer("nginx", port, setup.procs.start("nginx", argv, cpus=setup.cpus, cwd=setup.workdir))


def start_haproxy(setup: PeerSetup) -> Peer:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if haproxy is None:
        raise StartError("haproxy is not installed")
    port = free_port()
    config = render(
        "haproxy.cfg", setup.workdir / "haproxy.cfg", port=port, backend_port=setup.backend.port
    )
    argv = [haproxy, "-db", "-f", str(config)]
    return Peer("haproxy", port, setup.procs.start("haproxy", argv, cpus=setup.cpus, cwd=setup.workdir))


STARTERS: dict[str, Callable[[PeerSetup], Peer]] = {
    "gateway": start_gateway,
    "twisted": start_twisted,
    "nginx": start_nginx,
    "haproxy": start_haproxy,
}


def answers_small(port: int, attempts: int = 20) -> str | None:
    """None when C{port} answers C{GET /small} with 200 and the backend's body; else what went wrong."""
    problem = "no answer"
    for _ in range(attempts):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/small", headers={"Host": BENCH_HOST})
            response = connection.getresponse()
            body = response.read()
            if response.status == 200 and body == SMALL_BODY.encode():
                return None
            problem = f"status {response.status}, body {body[:200]!r}"
        except (OSError, http.client.HTTPException) as error:
            problem = f"{type(error).__name__}: {error}"
        finally:
            connection.close()
        time.sleep(0.1)
    return problem


def start_peers(setup: PeerSetup, wanted: Sequence[str]) -> tuple[dict[str, Peer], dict[str, str]]:
    """Start every wanted peer; return the ones answering 200, and an error for each that does not."""
    peers: dict[str, Peer] = {}
    errors: dict[str, str] = {}
    for name in PEER_ORDER:
        if name not in wanted:
            continue
        if name == "direct":
            peers[name] = Peer("direct", setup.backend.port, None)
            continue
        try:
            peer = STARTERS[name](setup)
            assert peer.started is not None
            wait_listening(peer.started, peer.port)
        except StartError as error:
            errors[name] = str(error)
            continue
        problem = answers_small(peer.port)
        if problem is None:
            peers[name] = peer
        else:
            errors[name] = (
                f"GET /small did not answer 200 with the backend's body: {problem}\n{log_tail(peer.started.log_path)}"
            )
            setup.procs.stop(peer.started)
    return peers, errors
