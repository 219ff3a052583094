"""
The routes file's keeper: L{RoutesService} re-reads the file when it changes
(a Kubernetes ConfigMap update included) and on SIGHUP, and hands each good
version on; a bad version keeps the last good table and is logged as
C{file:line: reason}.
"""

from __future__ import annotations

import collections
import signal
from typing import Any, Callable

from twisted.application import service
from twisted.logger import Logger

from edd_gateway.routes.loader import RoutesFileError, load_routes_file
from edd_gateway.routes.model import Route
from edd_gateway.files.watch import FileWatcher

__all__ = ["RoutesService"]

log = Logger()


class RoutesService(service.Service):
    """
    Keeps the live routes in step with the routes file: re-read when it
    changes (a ConfigMap update included) and on SIGHUP; a bad version
    keeps the last good table.  Each good version goes to C{publish}:
    swapped into the table, or, with a database, handed to the state
    service that merges it with C{static_routes}.
    """

    def __init__(self, path: str, publish: Callable[[list[Route]], object], clock: Any, interval: float) -> None:
        self.path = path
        self.publish = publish
        self.watcher = FileWatcher(path, self.reload, clock, interval)
        self._reactor = clock
        #: Reloads since start by result (ok, failed), and why the last one failed.
        self.results: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None

    def reload(self) -> bool:
        try:
            routes = load_routes_file(self.path)
        except RoutesFileError as problem:
            # An unreadable file is one too (read_utf8 names why).
            lines = str(problem).splitlines()
            for line in lines:
                log.error("routes: {problem}; keeping the last good table", problem=line)
            return self._failed(lines[0])
        self.results["ok"] += 1
        self.last_error = None
        self.publish(routes)
        log.info("routes: loaded {count} routes from {path}", count=len(routes), path=self.path)
        return True

    def _failed(self, reason: str) -> bool:
        self.results["failed"] += 1
        self.last_error = reason
        return False

    def startService(self) -> None:
        super().startService()
        self.watcher.startService()
        loop = getattr(self._reactor, "_asyncioEventloop", None)
        if loop is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def stopService(self) -> None:
        loop = getattr(self._reactor, "_asyncioEventloop", None)
        if loop is not None and hasattr(signal, "SIGHUP"):
            loop.remove_signal_handler(signal.SIGHUP)
        self.watcher.stopService()
        return super().stopService()

    def _sighup(self) -> None:
        log.info("routes: SIGHUP, re-reading {path}", path=self.path)
        self.watcher.check_now()
