"""
Tests for L{edd_gateway.files.watch}: the file fingerprint and the polling
watcher, driven by a fake clock over real files in a temporary directory,
including a Kubernetes ConfigMap volume's symlink swap.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.files.watch import MISSING, FileWatcher, file_fingerprint


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


class FingerprintTests(SynchronousTestCase):
    def test_missing(self) -> None:
        self.assertEqual(file_fingerprint(self.mktemp()), MISSING)

    def test_dangling_symlink_is_missing(self) -> None:
        link = self.mktemp()
        os.symlink(self.mktemp(), link)
        self.assertEqual(file_fingerprint(link), MISSING)

    def test_follows_symlinks(self) -> None:
        target = os.path.abspath(self.mktemp())
        write(target, "x")
        link = self.mktemp()
        os.symlink(target, link)
        fingerprint = file_fingerprint(link)
        self.assertEqual(fingerprint[0], os.path.realpath(target))
        self.assertEqual(fingerprint, file_fingerprint(target))


class FileWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "routes.yaml")
        write(self.path, "routes: []\n")
        self.clock = Clock()
        self.seen: list[str | None] = []

    def on_change(self) -> None:
        """Like a loader: read the file the moment we are told."""
        try:
            self.seen.append(read(self.path))
        except FileNotFoundError:
            self.seen.append(None)

    def start(self, on_change: object = None) -> FileWatcher:
        watcher = FileWatcher(
            self.path, on_change or self.on_change, self.clock, interval=1.0  # type: ignore[arg-type]
        )
        watcher.startService()
        self.addCleanup(lambda: watcher.running and watcher.stopService())
        return watcher

    def poll(self, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(1.0)

    def test_quiet_file_calls_nothing(self) -> None:
        self.start()
        self.poll(10)
        self.assertEqual(self.seen, [])

    def test_rewrite_with_new_size(self) -> None:
        self.start()
        write(self.path, "routes: [a]\n")
        self.clock.advance(0.99)
        self.assertEqual(self.seen, [])
        self.clock.advance(0.01)
        self.assertEqual(self.seen, ["routes: [a]\n"])
        self.poll(5)
        self.assertEqual(len(self.seen), 1)

    def test_rewrite_with_same_size_new_mtime(self) -> None:
        before = os.stat(self.path)
        self.start()
        write(self.path, "routes: {}\n")
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        self.assertEqual(os.stat(self.path).st_size, before.st_size)
        self.poll(3)
        self.assertEqual(self.seen, ["routes: {}\n"])

    def test_kubernetes_configmap_swap(self) -> None:
        os.remove(self.path)
        v1 = os.path.join(self.dir, "..2026_11_27_v1")
        v2 = os.path.join(self.dir, "..2026_11_27_v2")
        os.mkdir(v1)
        write(os.path.join(v1, "routes.yaml"), "version: 1\n")
        os.symlink("..2026_11_27_v1", os.path.join(self.dir, "..data"))
        os.symlink("..data/routes.yaml", self.path)
        watcher = self.start()
        self.poll(2)
        self.assertEqual(self.seen, [])

        # The kubelet's update: new directory, new ..data link renamed over
        # the old one, old directory removed.  Same size and mtime as v1, so
        # only the resolved path and inode tell them apart.
        old = os.stat(os.path.join(v1, "routes.yaml"))
        os.mkdir(v2)
        write(os.path.join(v2, "routes.yaml"), "version: 2\n")
        os.utime(os.path.join(v2, "routes.yaml"), ns=(old.st_atime_ns, old.st_mtime_ns))
        os.symlink("..2026_11_27_v2", os.path.join(self.dir, "..data_tmp"))
        os.rename(os.path.join(self.dir, "..data_tmp"), os.path.join(self.dir, "..data"))
        os.remove(os.path.join(v1, "routes.yaml"))
        os.rmdir(v1)

        self.poll(5)
        self.assertEqual(self.seen, ["version: 2\n"])
        self.assertEqual(read(self.path), "version: 2\n")
        self.assertTrue(watcher.running)

    def test_deleted_then_back(self) -> None:
        self.start()
        os.remove(self.path)
        self.poll(5)
        self.assertEqual(self.seen, [None])
        write(self.path, "routes: [back]\n")
        self.poll(5)
        self.assertEqual(self.seen, [None, "routes: [back]\n"])

    def test_not_called_at_start_even_if_missing(self) -> None:
        os.remove(self.path)
        self.start()
        self.poll(3)
        self.assertEqual(self.seen, [])

    def test_check_now_is_unconditional(self) -> None:
        watcher = self.start()
        watcher.check_now()
        self.assertEqual(self.seen, ["routes: []\n"])
        write(self.path, "routes: [now]\n")
        watcher.check_now()
        self.poll(3)
        self.assertEqual(self.seen, ["routes: []\n", "routes: [now]\n"])

    def test_failing_callback_keeps_watching(self) -> None:
        calls: list[int] = []

        def explode() -> None:
            calls.append(1)
            raise ValueError("bad yaml")

        self.start(explode)
        write(self.path, "routes: [")
        self.poll()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        write(self.path, "routes: [b]\n")
        self.poll()
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_stop_stops_polling(self) -> None:
        watcher = self.start()
        watcher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        write(self.path, "routes: [late]\n")
        self.poll(3)
        self.assertEqual(self.seen, [])
