"""
A throwaway nats-server for tests (L{ThrowawayNats}): listening on
127.0.0.1 on a random port (never the machine's own on 4222), a child of the
test process, stopped and restarted on the same port for fault tests, and
nats-py clients for the test's side of the conversation that are closed at
cleanup (trial cannot see asyncio's sockets, so an unclosed client would go
unnoticed).  Without nats-server a test skips with the reason, or fails
when integration is required.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from ._tools import ProcessRun, as_deferred, free_port, poll_until, reactor_or_installed, require_tool, run_process

__all__ = ["ThrowawayNats", "start_nats"]

_READY = b"Server is ready"


class ThrowawayNats:
    """One nats-server owned by a test."""

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor_or_installed(reactor)
        self.program = require_tool("nats-server")
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="edd-gateway-nats-")
        self._run: ProcessRun | None = None
        self._clients: list[Any] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.exit_code is None

    async def start(self) -> None:
        argv = [self.program, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.directory]
        run = self._run = run_process(argv, timeout=3600, reactor=self._reactor)
        await poll_until(lambda: _READY in run.err or run.exit_code is not None, "nats-server to start",
                         timeout=20, reactor=self._reactor)
        if _READY not in run.err:
            raise RuntimeError(f"nats-server exited with {run.exit_code}: {bytes(run.err).decode(errors='replace')}")

    async def stop(self) -> None:
        run, self._run = self._run, None
        if run is not None and run.exit_code is None:
            run.transport.signalProcess("TERM")
            await run.result()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def client(self, **options: Any) -> Any:
        """A connected nats-py client (quiet, quick to reconnect), closed at cleanup."""
        import nats

        options.setdefault("error_cb", _quiet)
        options.setdefault("reconnect_time_wait", 0.2)
        options.setdefault("max_reconnect_attempts", -1)
        connection = await as_deferred(nats.connect(self.url, **options))
        self._clients.append(connection)
        return connection

    async def cleanup(self) -> None:
        clients, self._clients = self._clients, []
        for connection in clients:
            if not connection.is_closed:
                await as_deferred(connection.close())
        try:
            await self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


async def _quiet(error: Exception) -> None:
    """The test's client expects the server restarts it causes; nats-py would print each one."""


async def start_nats(test: Any, reactor: Any = None) -> ThrowawayNats:
    """A started server, stopped at C{test}'s cleanup."""
    server = ThrowawayNats(reactor)
    test.addCleanup(server.cleanup)
    await server.start()
    return server
