"""
End-to-end tests of SSH through the real ``twistd -n edd-gateway``: the
local containers file names a container whose address is 127.0.0.1, a
throwaway ``sshd`` there stands in for it (C{--ssh-port}), and the real
OpenSSH client logs in through an C{--ssh-listen} endpoint and through the
sniffing HTTP listener.  The gateway's keys are files the tests name, so a
restart shows the same host key and the container's pinned key survives in
the state file.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, ProcessRun, free_port, require_tool, run_process
from edd_gateway.testing.sshd import ThrowawaySSHD, write_user_key

CID = "abc123"


class GatewaySSHTests(EndToEndMixin, TestCase):
    timeout = 120

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.ssh_path = require_tool("ssh")
        require_tool("curl")
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        alice = write_user_key(self.work / "alice")
        write_user_key(self.work / "bob")
        # The gateway's client key, made here so sshd can trust it before the gateway starts.
        write_user_key(self.work / "client")
        self.sshd.trust(self.work / "client.pub")
        await self.sshd.start()
        (self.work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": CID, "user_id": "alice", "external_ip": "127.0.0.1", "ssh_enabled": True, "ssh_keys": [alice]},
            {"id": "stop1", "user_id": "alice", "status": "stopped", "external_ip": "127.0.0.1",
             "ssh_enabled": True, "ssh_keys": [alice]},
        ]}))

    async def start(self) -> Any:
        """The gateway on the containers file, with an SSH-only listener as well as the sniffing one."""
        self.ssh_port = free_port()
        self.gateway = await self.start_gateway([
            "--containers", str(self.work / "containers.yaml"), "--ssh-port", str(self.sshd.port),
            "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1", "--ssh-host-key", str(self.work / "host"),
            "--ssh-client-key", str(self.work / "client"), "--state-file", str(self.work / "pins.json"),
        ])
        return self.gateway

    def user(self, cid: str = CID) -> str:
        return cid if self.login_user == "root" else f"{self.login_user}.{cid}"

    async def ssh(self, port: int, *args: str, key: str = "alice", strict: str = "no") -> ProcessRun:
        argv = [self.ssh_path, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "HostKeyAlias=edd-gateway",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=20", "-i", str(self.work / key), "-p", str(port), *args]
        done = await run_process(argv, timeout=60, path=str(self.work)).result()
        self.assertFalse(done.timed_out, f"ssh hung: {bytes(done.err)!r}")
        return done

    async def test_exec_through_the_ssh_listener(self) -> None:
        await self.start()
        done = await self.ssh(self.ssh_port, f"{self.user()}@127.0.0.1", "echo hi")
        self.assertEqual((done.exit_code, bytes(done.out)), (0, b"hi\n"), bytes(done.err))
        pins = json.loads((self.work / "pins.json").read_text())
        sshd_key = (self.work / "sshd_host_key.pub").read_text().split()[:2]
        self.assertEqual(pins[CID]["host_key"].split()[:2], sshd_key, "the container's host key is pinned")

    async def test_ssh_and_http_on_the_sniffing_listener(self) -> None:
        gateway = await self.start()
        done = await self.ssh(gateway.port, f"{self.user()}@127.0.0.1", "exit 3")
        self.assertEqual(done.exit_code, 3, bytes(done.err))
        page = await self.curl(gateway.url("/"))
        self.assertEqual(page.status, 200, page.describe())

    async def test_refusals(self) -> None:
        await self.start()
        stopped = await self.ssh(self.ssh_port, f"{self.user('stop1')}@127.0.0.1", "true")
        self.assertEqual(stopped.exit_code, 255)
        self.assertIn(b"container stop1 is stopped", bytes(stopped.err))
        stranger = await self.ssh(self.ssh_port, f"{self.user()}@127.0.0.1", "true", key="bob")
        self.assertIn(b"Permission denied (publickey)", bytes(stranger.err))

    async def test_same_host_key_after_a_restart(self) -> None:
        first = await self.start()
        done = await self.ssh(self.ssh_port, f"{self.user()}@127.0.0.1", "true", strict="accept-new")
        self.assertEqual(done.exit_code, 0, bytes(done.err))
        await first.stop()
        await self.start()
        again = await self.ssh(self.ssh_port, f"{self.user()}@127.0.0.1", "echo same", strict="yes")
        self.assertEqual((again.exit_code, bytes(again.out)), (0, b"same\n"), bytes(again.err))
