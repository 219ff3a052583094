"""
Reading containers from the compute service's tables: the SQL (all of it,
or some containers by id) and the pure assembly of rows into L{Container}s.

A full read runs its three SELECTs in one read-only REPEATABLE READ
transaction, so a container, its ingress rules and its owner's keys come
from the same moment even while the compute service writes.  A refresh of
a few containers (what a hint names) is one SELECT whose subqueries gather
each container's rules and its owner's keys: one statement is one snapshot
already, and one round trip instead of six (BEGIN, SET, three SELECTs,
COMMIT) is most of the time a hint takes to be served.  NULLs in the
compute tables get the tables' own defaults, so a half-filled row reads as
the compute service would mean it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edd_gateway.state.model import Container, IngressRule

__all__ = ["BEGIN_SNAPSHOT", "all_container_statements", "build_containers", "build_refreshed", "refresh_statement"]

BEGIN_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

_CONTAINERS = (
    "SELECT id, COALESCE(user_id, ''), COALESCE(name, ''), COALESCE(status, 'pending'), external_ip,"
    " COALESCE(ssh_enabled, false), COALESCE(https_enabled, false), COALESCE(namespace, '') FROM containers"
)
_RULES = "SELECT container_id, port, COALESCE(target_port, 80) FROM ingress_rules WHERE port IS NOT NULL"
_KEYS = (
    "SELECT user_id, public_key FROM ssh_keys WHERE public_key IS NOT NULL"
    " AND user_id IN (SELECT user_id FROM containers{where})"
    " ORDER BY id"
)

Statement = tuple[str, tuple[Any, ...]]


def all_container_statements() -> tuple[Statement, Statement, Statement]:
    """Containers, ingress rules and owners' keys, for every container."""
    return (_CONTAINERS, ()), (_RULES, ()), (_KEYS.format(where=""), ())


_REFRESH = (
    "SELECT c.id, COALESCE(c.user_id, ''), COALESCE(c.name, ''), COALESCE(c.status, 'pending'), c.external_ip,"
    " COALESCE(c.ssh_enabled, false), COALESCE(c.https_enabled, false), COALESCE(c.namespace, ''),"
    " ARRAY(SELECT ARRAY[r.port, COALESCE(r.target_port, 80)] FROM ingress_rules r"
    " WHERE r.container_id = c.id AND r.port IS NOT NULL ORDER BY r.port),"
    " ARRAY(SELECT k.public_key FROM ssh_keys k WHERE k.user_id = c.user_id AND k.public_key IS NOT NULL"
    " ORDER BY k.id)"
    " FROM containers c WHERE c.id = ANY(%s)"
)


def refresh_statement(ids: Sequence[str]) -> Statement:
    """The containers C{ids}, each row with its rules and its owner's keys, in one statement."""
    return _REFRESH, (list(ids),)


def build_refreshed(rows: Iterable[Sequence[Any]]) -> dict[str, Container]:
    """The containers of L{refresh_statement}'s rows (the full read's assembly, fed from them)."""
    container_rows: list[Sequence[Any]] = []
    rule_rows: list[Sequence[Any]] = []
    key_rows: list[Sequence[Any]] = []
    users: set[Any] = set()
    for row in rows:
        container_rows.append(row[:8])
        rule_rows.extend((row[0], port, target_port) for port, target_port in row[8])
        if row[1] not in users:
            users.add(row[1])
            key_rows.extend((row[1], key) for key in row[9])
    return build_containers(container_rows, rule_rows, key_rows)


def build_containers(
    container_rows: Iterable[Sequence[Any]],
    rule_rows: Iterable[Sequence[Any]],
    key_rows: Iterable[Sequence[Any]],
) -> dict[str, Container]:
    """
    Assemble rows (in the column order of the statements above) into
    containers by id; rules of unknown containers and impossible ports are
    dropped, keys are shared by every container of their owner.
    """
    rules: dict[str, dict[int, IngressRule]] = {}
    for container_id, port, target_port in rule_rows:
        if _port_ok(port) and _port_ok(target_port):
            rules.setdefault(container_id, {})[port] = IngressRule(port, target_port)
    keys: dict[str, list[str]] = {}
    for user_id, public_key in key_rows:
        text = public_key.strip()
        if text:
            keys.setdefault(user_id, []).append(text)
    containers = {}
    for container_id, user_id, name, status, external_ip, ssh_enabled, https_enabled, namespace in container_rows:
        address = (external_ip or "").strip() or None
        containers[container_id] = Container(
            id=container_id,
            user_id=user_id,
            status=status,
            external_ip=address,
            name=name,
            ssh_enabled=bool(ssh_enabled),
            https_enabled=bool(https_enabled),
            ingress=rules.get(container_id, {}),
            ssh_keys=tuple(keys.get(user_id, ())) if user_id else (),
            namespace=namespace,
        )
    return containers


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and 1 <= port <= 65535
