"""
Reading containers from the compute service's tables: the SQL (all of it,
or some containers by id) and the pure assembly of rows into L{Container}s.

Each read runs its three SELECTs in one read-only REPEATABLE READ
transaction, so a container, its ingress rules and its owner's keys come
from the same moment even while the compute service writes.  NULLs in the
compute tables get the tables' own defaults, so a half-filled row reads as
the compute service would mean it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edd_gateway.state.model import Container, IngressRule

__all__ = ["BEGIN_SNAPSHOT", "all_container_statements", "build_containers", "container_statements"]

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


def container_statements(ids: Sequence[str]) -> tuple[Statement, Statement, Statement]:
    """The same three reads, restricted to the containers C{ids}."""
    wanted = (list(ids),)
    return (
        (f"{_CONTAINERS} WHERE id = ANY(%s)", wanted),
        (f"{_RULES} AND container_id = ANY(%s)", wanted),
        (_KEYS.format(where=" WHERE id = ANY(%s)"), wanted),
    )


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
