"""
The compute service, as far as its tables go (L{ComputeService}): it writes
C{containers}, C{ingress_rules} and C{ssh_keys} rows the way the compute
service does, one transaction per action, over one txpostgres connection of
its own, and says when each commit returned (C{time.monotonic()}) so a test
can measure how long the gateway takes to see it.  What it writes follows
the compute service's migrations (C{COMPUTE_SCHEMA}): ids of 8 hex
characters, namespaces C{compute-<user_id>-<id>}, status C{pending} at
creation, C{created_at} set once, C{stopped_at} at each stop, a 443 rule
carrying C{https_enabled}, keys stored as whole authorized_keys lines with
their MD5 colon-hex fingerprint.  L{start_compute} gives a test one,
connected, closed at its cleanup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from twisted.internet.defer import ensureDeferred

from .tools import reactor_or_installed

__all__ = ["STATUSES", "ComputeService", "NewContainer", "NewSSHKey", "md5_fingerprint", "start_compute"]

#: Every status the compute service writes.
STATUSES = ("pending", "initializing", "running", "stopped", "failed", "not_found")
#: The public port whose rule the compute service mirrors in C{containers.https_enabled}.
HTTPS_PORT = 443


def md5_fingerprint(public_key_line: str) -> str:
    """
    The compute service's C{ssh_keys.fingerprint} of an authorized_keys line:
    MD5 of the key blob in colon hex (C{3b:2f:...}), as C{ssh-keygen -E md5 -l}
    prints it without its C{MD5:} prefix.
    """
    fields = public_key_line.split()
    if len(fields) < 2:
        raise ValueError(f"not an authorized_keys line (expected 'TYPE BASE64 [COMMENT]'): {public_key_line!r}")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except binascii.Error:
        raise ValueError(f"the key of {public_key_line!r} is not base64") from None
    return ":".join(f"{byte:02x}" for byte in hashlib.md5(blob).digest())


@dataclass(frozen=True)
class NewContainer:
    """A container row just created; C{committed} is C{time.monotonic()} once its COMMIT returned."""

    id: str
    namespace: str
    committed: float


@dataclass(frozen=True)
class NewSSHKey:
    """An C{ssh_keys} row just created."""

    id: int
    fingerprint: str
    committed: float


Cursor = Any


class ComputeService:
    """
    Writes the compute service's rows on C{dsn} (the compute database), each
    action in its own transaction; every method returns the moment its
    COMMIT returned, in C{time.monotonic()} seconds (or a record holding it).

    One connection, opened by L{connect}: a server restart breaks it, and
    L{reconnect} opens another.
    """

    def __init__(self, dsn: str, reactor: Any = None) -> None:
        self.dsn = dsn
        self._reactor = reactor_or_installed(reactor)
        self._connection: Any = None

    async def connect(self) -> None:
        from txpostgres import txpostgres

        connection = txpostgres.Connection(self._reactor)
        await connection.connect(self.dsn)
        self._connection = connection

    async def reconnect(self) -> None:
        self.close()
        await self.connect()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.pollable() is not None and not connection.pollable().closed:
            connection.close()

    # Containers

    async def create_container(self, user_id: str, name: str, *, image: str | None = "ubuntu:24.04",
                               memory_mb: int = 512, storage_gb: int = 5, instance_type: str = "nano",
                               owner_username: str = "", ssh_enabled: bool = False,
                               container_id: str | None = None) -> NewContainer:
        """A new container, C{pending}, with a fresh 8-hex id (or C{container_id}) and its namespace."""
        cid = container_id or secrets.token_hex(4)
        namespace = f"compute-{user_id}-{cid}"
        committed = await self._transaction(lambda cursor: cursor.execute(
            "INSERT INTO containers (id, user_id, name, namespace, status, memory_mb, storage_gb, image,"
            " ssh_enabled, owner_username, instance_type) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s)",
            (cid, user_id, name, namespace, memory_mb, storage_gb, image, ssh_enabled, owner_username,
             instance_type)))
        return NewContainer(cid, namespace, committed)

    async def set_status(self, container_id: str, status: str) -> float:
        if status not in STATUSES:
            raise ValueError(f"the compute service never writes status {status!r} (it writes {', '.join(STATUSES)})")
        return await self._update("UPDATE containers SET status = %s WHERE id = %s", (status, container_id))

    async def start(self, container_id: str, external_ip: str) -> float:
        """Running at C{external_ip}; C{created_at} stays what it was."""
        return await self._update("UPDATE containers SET status = 'running', external_ip = %s WHERE id = %s",
                                  (external_ip, container_id))

    async def stop(self, container_id: str) -> float:
        return await self._update("UPDATE containers SET status = 'stopped', stopped_at = now() WHERE id = %s",
                                  (container_id,))

    async def delete(self, container_id: str) -> float:
        """The row goes; its ingress rules go with it (ON DELETE CASCADE)."""
        return await self._update("DELETE FROM containers WHERE id = %s", (container_id,))

    async def set_ssh_enabled(self, container_id: str, enabled: bool) -> float:
        return await self._update("UPDATE containers SET ssh_enabled = %s WHERE id = %s", (enabled, container_id))

    # Ingress rules

    async def add_ingress(self, container_id: str, port: int, target_port: int = 80) -> float:
        """A rule for public C{port}; a 443 rule also turns C{https_enabled} on, in the same transaction."""
        async def work(cursor: Cursor) -> None:
            await cursor.execute("INSERT INTO ingress_rules (container_id, port, target_port, created_at)"
                                 " VALUES (%s, %s, %s, now())", (container_id, port, target_port))
            if port == HTTPS_PORT:
                await cursor.execute("UPDATE containers SET https_enabled = true WHERE id = %s", (container_id,))

        return await self._transaction(lambda cursor: ensureDeferred(work(cursor)))

    async def remove_ingress(self, container_id: str, port: int) -> float:
        """The rule goes; removing the 443 rule turns C{https_enabled} off."""
        async def work(cursor: Cursor) -> None:
            await cursor.execute("DELETE FROM ingress_rules WHERE container_id = %s AND port = %s",
                                 (container_id, port))
            _found(cursor, f"container {container_id} has no rule for port {port}")
            if port == HTTPS_PORT:
                await cursor.execute("UPDATE containers SET https_enabled = false WHERE id = %s", (container_id,))

        return await self._transaction(lambda cursor: ensureDeferred(work(cursor)))

    # SSH keys

    async def add_ssh_key(self, user_id: str, name: str, public_key_line: str) -> NewSSHKey:
        """C{public_key_line} stored whole (comment included), with its MD5 fingerprint; the new key's id."""
        line = public_key_line.strip()
        fingerprint = md5_fingerprint(line)
        ids: list[int] = []

        async def work(cursor: Cursor) -> None:
            await cursor.execute("INSERT INTO ssh_keys (user_id, name, public_key, fingerprint, created_at)"
                                 " VALUES (%s, %s, %s, %s, now()) RETURNING id", (user_id, name, line, fingerprint))
            ids.append(cursor.fetchone()[0])

        committed = await self._transaction(lambda cursor: ensureDeferred(work(cursor)))
        return NewSSHKey(ids[0], fingerprint, committed)

    async def delete_ssh_key(self, key_id: int) -> float:
        return await self._update("DELETE FROM ssh_keys WHERE id = %s", (key_id,))

    # The transaction

    async def _update(self, statement: str, params: tuple[Any, ...]) -> float:
        async def work(cursor: Cursor) -> None:
            await cursor.execute(statement, params)
            _found(cursor, f"no row for {statement!r} with {params!r}")

        return await self._transaction(lambda cursor: ensureDeferred(work(cursor)))

    async def _transaction(self, work: Callable[[Cursor], Awaitable[Any]]) -> float:
        if self._connection is None:
            raise RuntimeError("ComputeService.connect() first")
        await self._connection.runInteraction(work)
        return time.monotonic()


def _found(cursor: Cursor, missing: str) -> None:
    """The compute service answers 404 and writes nothing; a test naming a row that is not there has a bug."""
    if cursor.rowcount == 0:
        raise LookupError(missing)


async def start_compute(test: Any, dsn: str, reactor: Any = None) -> ComputeService:
    """A connected L{ComputeService} on C{dsn}, closed at C{test}'s cleanup."""
    compute = ComputeService(dsn, reactor)
    await compute.connect()
    test.addCleanup(compute.close)
    return compute
