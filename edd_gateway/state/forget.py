"""
The operator's side of the SSH host-key pins: C{python -m edd_gateway
forget-host-key CONTAINER_ID} drops one container's pin, so that its next
login pins the key it presents then (after an intended change of the
container's key while it runs, which the gateway refuses).

Synchronous and reactor-free (this runs outside the gateway): PostgreSQL
through psycopg2 (C{gateway_ssh_host_keys}, which a running gateway reads at
every login), or the local state file through L{LocalPinStore}, under the
same lock as the gateway's writes (a running gateway sees the file changed
at its next login).  Every failure is a L{ForgetError} whose message is one
line that never repeats the DSN.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from typing import Any

from edd_gateway.state.localfile import LocalPinStore, PinStoreError

__all__ = ["ForgetError", "fingerprint_of", "forget_in_database", "forget_in_file", "normalize_container_id"]

# The SSH user names' and the containers file's rule; ids are lower case.
_CONTAINER_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CONNECT_TIMEOUT = 10


class ForgetError(Exception):
    """The pin store cannot be reached, read or written; the message is one line for the operator."""


def normalize_container_id(text: str) -> str:
    """C{text} as the gateway keys pins (lower case); ValueError when it is no container id."""
    container_id = text.strip().lower()
    if _CONTAINER_ID.fullmatch(container_id) is None:
        raise ValueError(f"{text!r} is not a container id (letters, digits and inner hyphens, at most 63)")
    return container_id


def fingerprint_of(host_key: str) -> str:
    """C{SHA256:...} of an OpenSSH public key line, as C{ssh-keygen -l} prints it."""
    fields = host_key.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (IndexError, binascii.Error):
        return "(unreadable key)"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def forget_in_file(path: str, container_id: str) -> str | None:
    """Drop the pin of C{container_id} from the state file at C{path}; the key it held, or None."""
    try:
        pin = LocalPinStore(path).forget(container_id)
    except PinStoreError as error:
        raise ForgetError(str(error).splitlines()[0]) from None
    return pin.host_key if pin is not None else None


def forget_in_database(dsn: str, container_id: str, connect: Callable[..., Any] | None = None) -> str | None:
    """
    Delete the row of C{container_id} from C{gateway_ssh_host_keys}; the key
    it held, or None (no row, or no such table: no gateway ever pinned there).

    @raise ValueError: C{dsn} is not a DSN.
    """
    import psycopg2
    from psycopg2 import errors
    from psycopg2.extensions import parse_dsn

    try:
        settings = parse_dsn(dsn)
    except psycopg2.Error:
        # libpq's reason quotes pieces of the DSN, which may hold a password.
        raise ValueError("not a PostgreSQL DSN (key=value ...) or postgresql:// URL") from None
    extra: dict[str, Any] = {} if "connect_timeout" in settings else {"connect_timeout": _CONNECT_TIMEOUT}
    try:
        connection = (connect or psycopg2.connect)(dsn, **extra)
    except psycopg2.Error as error:
        raise ForgetError(f"cannot connect to the database: {_first_line(error)}") from None
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = '10s'")
            cursor.execute("DELETE FROM gateway_ssh_host_keys WHERE container_id = %s RETURNING host_key",
                           (container_id,))
            row = cursor.fetchone()
    except errors.UndefinedTable:
        return None
    except psycopg2.Error as error:
        raise ForgetError(f"the database refused: {_first_line(error)}") from None
    finally:
        connection.close()
    return row[0] if row is not None else None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
