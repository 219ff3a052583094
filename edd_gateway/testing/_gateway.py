"""
The real gateway under test: L{GatewayProcess} runs C{twistd -n
edd-gateway} from this checkout as a subprocess on a free loopback port,
with its stdout and stderr in a log file the tests attach to failures, and
stops it with SIGTERM (SIGKILL past a bound); L{routes_yaml} writes the
routes file it is started with.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import yaml

import edd_gateway

from .tools import free_port, poll_until, reactor_or_installed


def routes_yaml(routes: Sequence[dict[str, Any]]) -> str:
    """A routes file holding C{routes}."""
    return yaml.safe_dump({"routes": list(routes)}, sort_keys=False)


class GatewayProcess:
    """
    ``twistd -n edd-gateway`` in a subprocess, listening on a free loopback
    port, its stdout and stderr in C{gateway.log} of C{workdir};
    C{twistd_args} go to twistd itself, before C{edd-gateway} (C{--logger=...}).
    """

    def __init__(self, workdir: str, reactor: Any = None, twistd_args: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "gateway.log"
        self.clock = reactor_or_installed(reactor)
        self.port = 0
        #: The admin endpoint's port (/healthz, /readyz, /metrics), when start chose it.
        self.admin_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.twistd_args = list(twistd_args)

    @staticmethod
    def project_root() -> str:
        """The directory holding C{edd_gateway/} and C{twisted/plugins/}."""
        return str(Path(edd_gateway.__file__).resolve().parent.parent)

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.project_root(), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile=-", *self.twistd_args, "edd-gateway", *args]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def admin_url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    async def start(self, args: Sequence[str] = (), timeout: float = 15.0, attempts: int = 3) -> None:
        """Start with C{args} plus a C{--listen} on a free port; wait until it accepts."""
        for attempt in range(attempts):
            self.port = free_port()
            extra = ["--listen", f"tcp:{self.port}:interface=127.0.0.1"]
            if not any(str(arg).startswith("--drain-timeout") for arg in args):
                # Cleanup stops the gateway with connections still open: a
                # short drain keeps stop() well within its bound.
                extra += ["--drain-timeout", "2"]
            self.admin_port = 0
            if not any(str(arg).startswith("--admin") for arg in args):
                # Never the fixed default port: tests run gateways side by side.
                self.admin_port = free_port()
                extra += ["--admin", f"tcp:{self.admin_port}:interface=127.0.0.1"]
            argv = self.command([*args, *extra])
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(argv, cwd=self.workdir, env=self.environment(),
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                await poll_until(self._accepting, f"the gateway to listen on port {self.port}", timeout,
                                 reactor=self.clock)
                return
            except AssertionError:
                # Another process may take the free port before the gateway
                # binds it; only that is worth another try.
                if attempt + 1 == attempts or "Address already in use" not in self.log_text():
                    raise

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.process.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        if self.admin_port:
            # The kernel accepts on a listening socket before the reactor
            # runs; an answer from the admin endpoint means it does, so
            # signals sent from now on are handled at once.
            try:
                with urllib.request.urlopen(self.admin_url("/healthz"), timeout=1) as answer:
                    answer.read()
            except OSError:
                return False
        return True

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout}; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await poll_until(lambda: process.poll() is not None, "the gateway to exit on SIGTERM",
                                 timeout, reactor=self.clock)
            except AssertionError:
                process.kill()
                process.wait(5)
                raise AssertionError(f"the gateway did not exit within {timeout} s of SIGTERM: killed") from None
        return process.returncode
