"""
The local containers source, for the embedded default and for development
without PostgreSQL: containers (with their ingress rules and their owners'
SSH keys) listed in a YAML file given by C{--containers FILE}.

L{LocalContainersSource} loads the file at start and reloads it when it
changes (the same polling L{FileWatcher} as the routes file); a refused
version is logged as C{file:line: reason} and the last good snapshot stays.
SSH host-key pins are kept in a small JSON state file (L{LocalPinStore}),
which C{python -m edd_gateway forget-host-key} edits too.  The file's format
is in docs/state.md; its parser in L{_containers_file}.

Importing this module installs no reactor (the operator command imports it).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edd_gateway.state._containers_file import (
    CONTAINER_KEYS,
    ContainersFileError,
    ContainersProblem,
    load_containers_file,
    load_containers_text,
)
from edd_gateway.state.model import ContainerDirectory, HostKeyPin
from edd_gateway.files.watch import FileWatcher

__all__ = [
    "CONTAINER_KEYS", "DEFAULT_STATE_FILE", "ContainersFileError", "ContainersProblem", "LocalContainersSource",
    "LocalPinStore", "PinStoreError", "load_containers_file", "load_containers_text",
]

_log = Logger()

#: Without --database: where the containers' pinned SSH host keys are kept
#: (C{--state-file}'s default, relative to the working directory).
DEFAULT_STATE_FILE = os.path.join("edd-gateway-state", "ssh", "pinned-host-keys.json")


class PinStoreError(Exception):
    """The pin state file cannot be read or written: pins fail closed."""


class LocalPinStore:
    """
    SSH host-key pins kept in a JSON file (C{{"<container id>": {"host_key":
    ..., "container_created": ...}}}), or in memory when C{path} is None.

    The file is rewritten whole (to a temporary file renamed over it) on
    every change, under a lock (C{FILE.lock}) shared with the operator
    command, so neither loses the other's change: a handful of pins, changed
    at a container's first SSH login, so blocking file I/O in the reactor
    thread costs less than a thread hop.  What was read is kept only while
    the file is the same one (same inode, size and times, checked at every
    call): a pin the operator forgot is forgotten at the next login.  A
    corrupt file fails every call rather than being treated as empty, which
    would silently re-trust every host key.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._pins: dict[str, HostKeyPin] = {}
        self._stamp: tuple[int, ...] | None = None

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        try:
            return succeed(self._loaded().get(container_id))
        except PinStoreError:
            return fail()

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        pin = HostKeyPin(container_id, host_key, container_created)
        try:
            with self._locked():
                pins = dict(self._loaded())
                if pins.get(container_id) != pin:
                    pins[container_id] = pin
                    self._save(pins)
        except PinStoreError:
            return fail()
        return succeed(None)

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        try:
            forgotten = self.forget(container_id)
        except PinStoreError:
            return fail()
        return succeed(forgotten is not None)

    def forget(self, container_id: str) -> HostKeyPin | None:
        """
        Drop the pin of C{container_id} now and return it (None when there
        was none: the file is then left as it is, or not created).

        @raise PinStoreError: the file cannot be read or written.
        """
        if self.path is not None and self._stat() is None:
            return None  # no file, no pin: nothing to create
        with self._locked():
            pins = dict(self._loaded())
            pin = pins.pop(container_id, None)
            if pin is not None:
                self._save(pins)
        return pin

    def prune(self, keep: Collection[str]) -> Deferred[int]:
        """Forget the pins of every container not in C{keep}; how many went."""
        try:
            with self._locked():
                pins = self._loaded()
                kept = {container_id: pin for container_id, pin in pins.items() if container_id in keep}
                if len(kept) != len(pins):
                    self._save(kept)
        except PinStoreError:
            return fail()
        return succeed(len(pins) - len(kept))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        try:
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise PinStoreError(f"cannot lock the SSH pin file {self.path}: {error}") from error
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _loaded(self) -> dict[str, HostKeyPin]:
        if self.path is None:
            return self._pins
        stamp = self._stat()
        if stamp is None:
            self._pins, self._stamp = {}, None
        elif stamp != self._stamp:
            self._pins, self._stamp = self._read(), stamp
        return self._pins

    def _stat(self) -> tuple[int, ...] | None:
        assert self.path is not None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise PinStoreError(f"cannot read the SSH pin file {self.path}: {error}") from error
        if not stat.S_ISREG(found.st_mode):
            raise PinStoreError(f"the SSH pin file {self.path} is not a regular file")
        return (found.st_ino, found.st_dev, found.st_size, found.st_mtime_ns, found.st_ctime_ns)

    def _read(self) -> dict[str, HostKeyPin]:
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise PinStoreError(f"cannot read the SSH pin file {self.path}: {error}") from error
        if not isinstance(data, dict):
            raise PinStoreError(f"the SSH pin file {self.path} is not a JSON object")
        pins = {}
        for container_id, entry in data.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("host_key"), str):
                raise PinStoreError(f"the SSH pin file {self.path}: entry {container_id!r} has no host_key")
            created = entry.get("container_created")
            pins[container_id] = HostKeyPin(container_id, entry["host_key"],
                                            created if isinstance(created, str) else None)
        return pins

    def _save(self, pins: dict[str, HostKeyPin]) -> None:
        if self.path is None:
            self._pins = pins
            return
        data = {pin.container_id: {"host_key": pin.host_key, "container_created": pin.container_created}
                for pin in pins.values()}
        directory, name = os.path.split(os.path.abspath(self.path))
        temporary = None
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            with open(descriptor, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            temporary = None
            self._pins, self._stamp = pins, self._stat()
        except OSError as error:
            raise PinStoreError(f"cannot write the SSH pin file {self.path}: {error}") from error
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass


class LocalContainersSource(Service):
    """
    Keeps the directory in step with the containers file: loaded at start,
    re-read whenever it changes; a refused version is logged line by line and
    the last good snapshot stays.  Until a version loads, the directory's
    snapshot is not ready.
    """

    def __init__(self, path: str, directory: ContainerDirectory, clock: IReactorTime,
                 interval: float = 1.0, pins: LocalPinStore | None = None) -> None:
        self.path = path
        self.directory = directory
        self.pins = pins if pins is not None else LocalPinStore()
        self.watcher = FileWatcher(path, self.reload, clock, interval)

    def reload(self) -> bool:
        """Read the file now; True when a new snapshot was swapped in."""
        try:
            snapshot = load_containers_file(self.path)
        except ContainersFileError as problem:
            for line in str(problem).splitlines():
                _log.error("containers: {problem}; keeping the last good containers", problem=line)
            return False
        self.directory.swap(snapshot)
        _log.info("containers: loaded {count} containers from {path}", count=len(snapshot.containers),
                  path=self.path)
        # A container that left the file takes its SSH host-key pin with it.
        self.pins.prune(snapshot.containers.keys()).addErrback(
            lambda failure: _log.error("containers: {error}", error=failure.getErrorMessage()))
        return True

    def startService(self) -> None:
        super().startService()
        self.reload()
        self.watcher.startService()

    def stopService(self) -> Deferred[None] | None:
        self.watcher.stopService()
        return super().stopService()

    def get_pin(self, container_id: str) -> Deferred[HostKeyPin | None]:
        return self.pins.get_pin(container_id)

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        return self.pins.set_pin(container_id, host_key, container_created)

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        return self.pins.clear_pin(container_id)
