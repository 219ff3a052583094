"""
End-to-end tests of routes reloading in the running gateway: an edited
file, a broken version, SIGHUP, a Kubernetes ConfigMap ``..data`` symlink
swap, connections that stay open across a reload, and a start refused on an
invalid file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    EndToEndMixin,
    GatewayProcess,
    as_deferred,
    poll_until,
    require_module,
    require_tool,
    routes_yaml,
    run_process,
)

# The loader reports the unknown key on its own line: line 8 of this file.
BROKEN = """routes:
  - host: a.test
    path: /
    target: {old}
  - host: b.test
    path: /
    target: {new}
    colour: blue
"""


class ReloadTests(EndToEndMixin, TestCase):
    timeout = 60

    def setUp(self) -> None:
        require_tool("curl")
        self.old = self.serve_echo("old")[0].target
        self.new = self.serve_echo("new")[0].target

    def table(self, *hosts_and_targets: tuple[str, str]) -> str:
        return routes_yaml([{"host": host, "path": "/", "target": target} for host, target in hosts_and_targets])

    async def start(self, routes_path: str, *args: str) -> GatewayProcess:
        self.gateway = await self.start_gateway(["--routes", routes_path, *args])
        return self.gateway

    async def backend_for(self, host: str) -> str | None:
        """The backend that serves C{host} now (None for the gateway's 404)."""
        response = await self.curl(self.gateway.url("/"), "-H", f"Host: {host}", timeout=10)
        if response.status == 404:
            return None
        self.assertEqual(response.status, 200, f"Host: {host}: {response.describe()}")
        return response.header("X-Backend")

    async def wait_for_backend(self, host: str, backend: str | None, timeout: float = 5.0) -> None:
        async def served() -> bool:
            return await self.backend_for(host) == backend

        await poll_until(served, f"Host {host} to be served by {backend or 'the 404 page'}", timeout)

    def routes_file(self, text: str) -> str:
        path = Path(self.mktemp()).absolute()
        path.mkdir()
        (path / "routes.yaml").write_text(text)
        return str(path / "routes.yaml")

    async def test_edited_file_is_picked_up(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        await self.start(path, "--reload-interval", "0.2")
        self.assertEqual(await self.backend_for("b.test"), None)
        Path(path).write_text(self.table(("a.test", self.old), ("b.test", self.new)))
        await self.wait_for_backend("b.test", "new")
        self.assertEqual(await self.backend_for("a.test"), "old")

    async def test_retargeted_route_is_picked_up(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        await self.start(path, "--reload-interval", "0.2")
        Path(path).write_text(self.table(("a.test", self.new)))
        await self.wait_for_backend("a.test", "new")

    async def test_broken_version_keeps_the_last_good_table(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        await self.start(path, "--reload-interval", "0.2")
        Path(path).write_text(BROKEN.format(old=self.new, new=self.new))
        reported = re.compile(re.escape(path) + r":8: .*colour")
        await poll_until(lambda: reported.search(self.gateway.log_text()),
                         f"the log to report {path}:8: unknown key 'colour'")
        self.assertEqual(await self.backend_for("a.test"), "old")
        self.assertEqual(await self.backend_for("b.test"), None)
        Path(path).write_text(self.table(("a.test", self.old), ("b.test", self.new)))
        await self.wait_for_backend("b.test", "new")

    async def test_yaml_syntax_error_keeps_the_last_good_table(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        await self.start(path, "--reload-interval", "0.2")
        Path(path).write_text("routes:\n  - host: a.test\n    path: /\n    target: [oops\n")
        reported = re.compile(re.escape(path) + r":\d+: ")
        await poll_until(lambda: reported.search(self.gateway.log_text()), f"the log to report {path}:LINE:")
        self.assertEqual(await self.backend_for("a.test"), "old")

    async def test_sighup_forces_a_reread(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        # With an hour between checks only the signal can explain a reload.
        await self.start(path, "--reload-interval", "3600")
        Path(path).write_text(self.table(("a.test", self.old), ("b.test", self.new)))
        self.gateway.signal(signal.SIGHUP)
        await self.wait_for_backend("b.test", "new")
        assert self.gateway.process is not None
        self.assertIsNone(self.gateway.process.poll(), "the gateway exited on SIGHUP")

    def configmap_volume(self, text: str) -> Path:
        """A directory laid out as the kubelet lays out a ConfigMap volume."""
        volume = Path(self.mktemp()).absolute()
        volume.mkdir()
        first = volume / "..2026_01_01_00_00_00.000000001"
        first.mkdir()
        (first / "routes.yaml").write_text(text)
        os.symlink(first.name, volume / "..data")
        os.symlink("..data/routes.yaml", volume / "routes.yaml")
        return volume

    def configmap_update(self, volume: Path, text: str, stamp: str) -> Path:
        """The kubelet's update: a new timestamped directory, ``..data`` swapped atomically."""
        old = Path(os.readlink(volume / "..data"))
        fresh = volume / f"..2026_01_01_00_00_00.{stamp}"
        fresh.mkdir()
        (fresh / "routes.yaml").write_text(text)
        os.symlink(fresh.name, volume / "..data_tmp")
        os.replace(volume / "..data_tmp", volume / "..data")
        shutil.rmtree(volume / old)
        return fresh / "routes.yaml"

    async def test_configmap_symlink_swap_is_picked_up(self) -> None:
        volume = self.configmap_volume(self.table(("a.test", self.old)))
        await self.start(str(volume / "routes.yaml"), "--reload-interval", "0.2")
        self.assertEqual(await self.backend_for("a.test"), "old")
        self.configmap_update(volume, self.table(("a.test", self.old), ("b.test", self.new)), "000000002")
        await self.wait_for_backend("b.test", "new")
        self.configmap_update(volume, self.table(("b.test", self.new)), "000000003")
        await self.wait_for_backend("a.test", None)

    async def test_configmap_swap_to_same_size_and_mtime_is_picked_up(self) -> None:
        """
        The swapped-in file is another file: a change must be seen even when
        its size and modification time equal the old one's (same-second
        updates on coarse-grained file systems).
        """
        before, after = self.table(("a.test", self.old)), self.table(("a.test", self.new))
        width = max(len(before), len(after))
        before, after = before.ljust(width), after.ljust(width)
        volume = self.configmap_volume(before)
        await self.start(str(volume / "routes.yaml"), "--reload-interval", "0.2")
        self.assertEqual(await self.backend_for("a.test"), "old")
        old_times = os.stat(volume / "routes.yaml")
        fresh = self.configmap_update(volume, after, "000000002")
        os.utime(fresh, ns=(old_times.st_atime_ns, old_times.st_mtime_ns))
        await self.wait_for_backend("a.test", "new")

    async def test_keep_alive_connection_survives_a_reload(self) -> None:
        path = self.routes_file(self.table(("a.test", self.old)))
        await self.start(path, "--reload-interval", "0.2")
        connection = await self.raw(self.gateway.port)
        request = b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n"
        connection.send(request % (1, b"a.test"))
        await connection.read_responses(1)
        Path(path).write_text(self.table(("a.test", self.old), ("b.test", self.new)))
        await self.wait_for_backend("b.test", "new")
        connection.send(request % (2, b"a.test") + request % (3, b"b.test"))
        responses = await connection.read_responses(3)
        self.assertEqual([(r.status, r.header("X-Backend")) for r in responses],
                         [(200, "old"), (200, "old"), (200, "new")])
        self.assertEqual([r.json()["path"] for r in responses], ["/1", "/2", "/3"])

    async def test_websocket_survives_a_reload(self) -> None:
        require_module("websockets")
        from websockets.asyncio.client import connect

        echo = await self.serve_websocket_echo()
        ws_route = {"host": "127.0.0.1", "path": "/ws", "target": echo.target}
        path = self.routes_file(routes_yaml([ws_route, {"host": "a.test", "path": "/", "target": self.old}]))
        await self.start(path, "--reload-interval", "0.2")

        async def open_socket() -> Any:
            return await connect(f"ws://127.0.0.1:{self.gateway.port}/ws", open_timeout=10, close_timeout=5)

        ws = await as_deferred(open_socket())
        self.addCleanup(lambda: as_deferred(ws.close()))
        await as_deferred(ws.send("before"))
        self.assertEqual(await as_deferred(ws.recv()), "before")
        Path(path).write_text(routes_yaml([ws_route, {"host": "a.test", "path": "/", "target": self.new}]))
        await self.wait_for_backend("a.test", "new")
        await as_deferred(ws.send("after"))
        self.assertEqual(await as_deferred(ws.recv()), "after")
        await as_deferred(ws.close())
        self.assertEqual(ws.close_code, 1000)

    async def test_invalid_routes_file_refuses_to_start(self) -> None:
        path = self.routes_file(BROKEN.format(old=self.old, new=self.new))
        gateway = GatewayProcess(self.mktemp())
        argv = gateway.command(["--routes", path, "--listen", "tcp:0:interface=127.0.0.1"])
        run = await run_process(argv, timeout=30, env=gateway.environment(), path=str(gateway.workdir)).result()
        output = (run.out + run.err).decode("utf-8", "replace")
        self.assertFalse(run.timed_out, f"the gateway kept running on an invalid file:\n{output}")
        self.assertNotEqual(run.exit_code, 0, output)
        self.assertRegex(output, re.escape(path) + r":8: .*colour")

    async def test_missing_routes_file_refuses_to_start(self) -> None:
        path = str(Path(self.mktemp()).absolute() / "nowhere.yaml")
        gateway = GatewayProcess(self.mktemp())
        argv = gateway.command(["--routes", path, "--listen", "tcp:0:interface=127.0.0.1"])
        run = await run_process(argv, timeout=30, env=gateway.environment(), path=str(gateway.workdir)).result()
        output = (run.out + run.err).decode("utf-8", "replace")
        self.assertNotEqual(run.exit_code, 0, output)
        self.assertIn("nowhere.yaml", output)

