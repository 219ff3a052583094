"""
Containers for tests: snapshots of the directory built in memory (a web
container with its ingress rules under a test domain), and rows inserted
straight into the compute service's tables on a throwaway PostgreSQL (the
compute service's own writes, transaction by transaction, are
L{edd_gateway.testing.ComputeService}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edd_gateway.state.model import Container, ContainerSnapshot, IngressRule

if TYPE_CHECKING:
    from .postgres import ThrowawayPostgres

__all__ = ["DOMAIN", "insert_container", "snapshot", "web"]

DOMAIN = "compute.cloud.test"


def web(cid: str = "web1", status: str = "running", ip: str | None = "127.0.1.7",
        rules: dict[int, int] | None = None) -> Container:
    ingress = {port: IngressRule(port, target) for port, target in (rules or {80: 8080, 8000: 9000}).items()}
    return Container(cid, "u1", status, ip, ingress=ingress)


def snapshot(*containers: Container, ready: bool = True) -> ContainerSnapshot:
    return ContainerSnapshot({c.id: c for c in containers}, ready=ready)


async def insert_container(server: ThrowawayPostgres, container_id: str, *, status: str = "running",
                           ip: str | None = "127.0.1.2", ports: dict[int, int] | None = None, user: str = "u1",
                           dbname: str | None = None) -> None:
    await server.execute(
        "INSERT INTO containers (id, user_id, name, namespace, status, external_ip, ssh_enabled)"
        " VALUES (%s, %s, %s, %s, %s, %s, true)",
        (container_id, user, f"name of {container_id}", f"compute-{user}-{container_id}", status, ip), dbname=dbname)
    for port, target in (ports or {}).items():
        await server.execute("INSERT INTO ingress_rules (container_id, port, target_port) VALUES (%s, %s, %s)",
                             (container_id, port, target), dbname=dbname)
