"""
Noticing that a file changed: L{FileWatcher} polls a cheap fingerprint of
one file and calls its owner back when the fingerprint changes.

Polling rather than inotify, on purpose: Kubernetes updates a ConfigMap or
Secret volume by writing a new timestamped directory and atomically renaming
a C{..data} symlink onto it, and the visible file is a symlink chain
(C{routes.yaml -> ..data/routes.yaml}).  An inotify watch on the file is
bound to the old inode: it sees no write at all, only the old file being
deleted afterwards, and must be re-armed on the new one; watching the
directory means decoding symlink renames.  Resolving the path and taking one
C{stat} per interval catches every kind of update (in-place rewrite, rename
over, symlink swap), on every platform, for a few system calls a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: (resolved path, st_dev, st_ino, st_mtime_ns, st_size) of a readable file;
#: L{MISSING} or ("unreadable", errno) when there is no file to compare.
Fingerprint = tuple[object, ...]

MISSING: Fingerprint = ("missing",)


def file_fingerprint(path: str) -> Fingerprint:
    """
    What identifies the current contents of C{path} without reading them.

    The resolved path and inode change when a symlink is swapped to a new
    file; mtime (in nanoseconds) and size change when a file is rewritten in
    place.  A rewrite keeping size and nanosecond mtime both identical goes
    unnoticed; filesystems with coarse timestamps make that possible, which
    is what L{FileWatcher.check_now} is for.  Every missing file (a dangling
    symlink included) gives the same L{MISSING}, so a file that stays gone
    is one state, not a new one per poll.
    """
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return ("unreadable", e.errno)
    return (resolved, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatcher(TimerService):
    """
    Calls C{on_change()} whenever the file at C{path} changes, checking
    every C{interval} seconds.

    Not at start: the owner loads the file itself when it starts, and the
    watcher only records the state it starts from.  A missing or unreadable
    file counts as a state too, so the owner hears once that the file went
    away (and can log its own error) and once that it came back.  Errors
    raised by C{on_change} are logged and never stop the polling.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        on_change: Callable[[], object],
        clock: IReactorTime,
        interval: float = 1.0,
    ) -> None:
        super().__init__(interval, self._poll)
        self.clock = clock
        self.path = path
        self._on_change = on_change
        self._fingerprint: Fingerprint | None = None

    def startService(self) -> None:
        # Recorded before the first poll (which TimerService runs at once,
        # and which therefore finds nothing changed); _poll never raises.
        self._fingerprint = file_fingerprint(self.path)
        super().startService()

    def check_now(self) -> None:
        """Re-read unconditionally, e.g. on SIGHUP."""
        self._fingerprint = file_fingerprint(self.path)
        self._notify()

    def _poll(self) -> None:
        try:
            current = file_fingerprint(self.path)
        except Exception:
            self._log.failure("watch: cannot check {path}", path=self.path)
            return
        if current == self._fingerprint:
            return
        self._fingerprint = current
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            self._log.failure("watch: reloading {path} failed", path=self.path)


__all__ = ["MISSING", "FileWatcher", "Fingerprint", "file_fingerprint"]
