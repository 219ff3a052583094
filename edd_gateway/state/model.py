"""
What the gateway knows of one user container, and the directory interface
every consumer (HTTP and TLS container routing, SSH) reads it through.

Snapshots are immutable: a source builds a new L{ContainerSnapshot} and
swaps it into the L{ContainerDirectory} in one assignment, so a connection
never sees half an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

RUNNING = "running"


@dataclass(frozen=True, slots=True)
class IngressRule:
    """Traffic to the container's public C{port} goes to its C{target_port}."""

    port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class Container:
    """
    One user container, as the compute service describes it.

    @ivar id: the container id; also the first label of its host name
        (C{<id>.<container-domain>}) and the SSH user name.
    @ivar external_ip: where its ports are reached (None until assigned).
    @ivar ingress: public port -> rule.
    @ivar ssh_keys: its owner's uploaded public keys, in OpenSSH text form
        (C{"ssh-ed25519 AAAA... comment"}).
    @ivar namespace: its Kubernetes namespace (C{compute-<user_id>-<id>}),
        where its C{lb} service is reached from inside the cluster.
    """

    id: str
    user_id: str
    status: str
    external_ip: str | None = None
    name: str = ""
    ssh_enabled: bool = False
    https_enabled: bool = False
    ingress: Mapping[int, IngressRule] = field(default_factory=dict)
    ssh_keys: tuple[str, ...] = ()
    namespace: str = ""

    @property
    def running(self) -> bool:
        return self.status == RUNNING


@dataclass(frozen=True, slots=True)
class ContainerSnapshot:
    """All containers at one moment; C{ready} is false until a source has
    loaded at least once (the gateway then reports not-ready for them)."""

    containers: Mapping[str, Container] = field(default_factory=dict)
    ready: bool = False

    def get(self, container_id: str) -> Container | None:
        return self.containers.get(container_id)


class ContainerDirectory:
    """
    The current snapshot, swapped atomically by sources; observers run after
    each swap (caches to invalidate, metrics).
    """

    def __init__(self, snapshot: ContainerSnapshot | None = None) -> None:
        self._snapshot = snapshot or ContainerSnapshot()
        self.observers: list[Callable[[ContainerSnapshot], object]] = []

    @property
    def current(self) -> ContainerSnapshot:
        return self._snapshot

    def get(self, container_id: str) -> Container | None:
        return self._snapshot.containers.get(container_id)

    def swap(self, snapshot: ContainerSnapshot) -> None:
        self._snapshot = snapshot
        for observer in list(self.observers):
            observer(snapshot)

    def replace(self, container_id: str, container: Container | None) -> None:
        """Swap in a snapshot where one container changed (or is gone)."""
        containers = dict(self._snapshot.containers)
        if container is None:
            containers.pop(container_id, None)
        else:
            containers[container_id] = container
        self.swap(ContainerSnapshot(containers, self._snapshot.ready))


@dataclass(frozen=True, slots=True)
class HostKeyPin:
    """
    The SSH host key the gateway trusts for one container (trust on first
    use), stored by the container sources (C{get_pin}/C{set_pin}/C{clear_pin}).

    @ivar host_key: the key in OpenSSH text form.
    @ivar container_created: what the caller recorded about the container's
        incarnation when pinning (e.g. its creation time), so that a container
        recreated under the same id can be told apart; opaque here.
    """

    container_id: str
    host_key: str
    container_created: str | None = None
