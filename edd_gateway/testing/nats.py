"""
A throwaway nats-server for tests (L{ThrowawayNats}): listening on
127.0.0.1 on a random port (never the machine's own on 4222), a child of the
test process, stopped and restarted on the same port for fault tests, and
nats-py clients for the test's side of the conversation that are closed at
cleanup (trial cannot see asyncio's sockets, so an unclosed client would go
unnoticed).  Without nats-server a test skips with the reason, or fails
when integration is required.

For the compute service's side: L{add_compute_stream} creates the C{COMPUTE}
JetStream stream, and L{compute_event} / L{compute_message} encode its
protobuf events with the gateway's own message classes, e.g.::

    subject, body = compute_message("container", "abc", "started", external_ip="10.0.0.7")
    await client.jetstream().publish(subject, body)   # or client.publish
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from typing import Any

from edd_gateway.state.events_pb import MESSAGES, message_class
from edd_gateway.state.jetstream import STREAM

from .tools import ProcessRun, as_deferred, free_port, poll_until, reactor_or_installed, require_tool, run_process

__all__ = ["ThrowawayNats", "add_compute_stream", "compute_event", "compute_message", "start_nats"]

_READY = b"Server is ready"


class ThrowawayNats:
    """One nats-server owned by a test, with JetStream unless C{jetstream=False}."""

    def __init__(self, reactor: Any = None, *, jetstream: bool = True) -> None:
        self._reactor = reactor_or_installed(reactor)
        self.jetstream = jetstream
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
        argv = [self.program, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            argv += ["-js", "-sd", self.directory]
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


async def start_nats(test: Any, reactor: Any = None, *, jetstream: bool = True) -> ThrowawayNats:
    """A started server, stopped at C{test}'s cleanup."""
    server = ThrowawayNats(reactor, jetstream=jetstream)
    test.addCleanup(server.cleanup)
    await server.start()
    return server


async def add_compute_stream(client: Any, **config: Any) -> Any:
    """Create the compute service's stream (C{COMPUTE}, subjects C{compute.>}) with nats-py C{client}."""
    config.setdefault("subjects", ["compute.>"])
    return await as_deferred(client.jetstream().add_stream(name=STREAM, **config))


def compute_event(kind: str, action: str, *, metadata: dict[str, Any] | None = None, **fields: Any) -> bytes:
    """
    The protobuf body the compute service publishes on
    C{compute.<kind>.<id>.<action>} (C{kind}: C{container}, C{ingress} or
    C{sshkey}), e.g. C{compute_event("sshkey", "created", key_id=3,
    user_id=42, name="laptop")}.  Fields are the message's (a misspelt one
    raises C{ValueError}); C{metadata} fills C{EventMetadata}, whose
    C{event_id}, C{timestamp}, C{source} and C{version} get plausible values
    when not given.
    """
    now = time.time()
    meta: dict[str, Any] = {"event_id": str(uuid.uuid4()), "source": "compute-service", "version": 1,
                            "timestamp": {"seconds": int(now), "nanos": int(now % 1 * 1e9)}}
    meta.update(metadata or {})
    meta.setdefault("entity_id", str(fields.get("container_id") or fields.get("key_id") or ""))
    message = message_class(kind, action)(metadata=MESSAGES["EventMetadata"](**meta), **fields)
    return bytes(message.SerializeToString())


def compute_message(kind: str, entity_id: str | int, action: str, **fields: Any) -> tuple[str, bytes]:
    """
    The subject and protobuf body of one compute event about C{entity_id}
    (a container id, or an SSH key id for C{sshkey}), which also fills the
    body's C{container_id} / C{key_id} unless given.
    """
    if kind == "sshkey":
        fields.setdefault("key_id", int(entity_id))
    else:
        fields.setdefault("container_id", str(entity_id))
    return f"compute.{kind}.{entity_id}.{action}", compute_event(kind, action, **fields)
