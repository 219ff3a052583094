"""
End-to-end SSH against the compute service's real tables: the real
``twistd -n edd-gateway --database ...`` with the change feed installed and
no NATS, a throwaway ``sshd`` standing in for the container, and the real
OpenSSH client.  Rows are written as the compute service writes them
(L{ComputeService}), and nothing else announces a change:

 - a deleted key is refused, and a new key accepted, within 1 s of the
   commit (the poll and resync intervals are an hour, so only the change
   feed can explain it);
 - a container restarted with a new sshd host key: the next login works
   under C{pin-per-run}; under C{pin} it is refused with a message naming
   C{forget-host-key}, and works once the operator ran it.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, ProcessRun, free_port, poll_until, require_tool, run_process
from edd_gateway.testing.compute import ComputeService, start_compute
from edd_gateway.testing.postgres import start_postgres
from edd_gateway.testing.sshd import ThrowawaySSHD, write_user_key

#: A change must be served within this long of its commit.
WITHIN = 1.0
#: Long enough that no full read can explain a change during a test.
AN_HOUR = "3600"


def write_ecdsa_key(path: Path) -> str:
    """A new ECDSA P-256 key in OpenSSH files; its public line."""
    private = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " " + path.name
    Path(str(path) + ".pub").write_text(line + "\n")
    return line


class LiveSSHTests(EndToEndMixin, TestCase):
    timeout = 180

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.ssh_path = require_tool("ssh")
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        write_user_key(self.work / "client")
        self.sshd.trust(self.work / "client.pub")
        await self.start_sshd()
        self.server = await start_postgres(self)
        await self.server.create_compute_tables()
        await self.install_feed()
        self.compute: ComputeService = await start_compute(self, self.server.dsn())
        self.user_id = "1001"
        made = await self.compute.create_container(self.user_id, "web", ssh_enabled=True)
        self.cid = made.id
        await self.compute.set_status(self.cid, "initializing")
        await self.compute.start(self.cid, "127.0.0.1")

    async def install_feed(self) -> None:
        done = await run_process([sys.executable, "-m", "edd_gateway", "install-change-feed", self.server.dsn()],
                                 timeout=60).result()
        self.assertEqual(done.exit_code, 0, bytes(done.err))

    async def start_sshd(self) -> None:
        """The container's sshd, restarted with a host key made now (a rebuilt image makes a new one)."""
        await self.sshd.start(host_key=self.work / f"sshd_host_key_{time.monotonic_ns()}")

    async def start(self, *args: str) -> None:
        self.ssh_port = free_port()
        self.gateway = await self.start_gateway([
            "--database", self.server.dsn(), "--poll-interval", AN_HOUR, "--resync-interval", AN_HOUR,
            "--ssh-port", str(self.sshd.port), "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1",
            "--ssh-host-key", str(self.work / "host"), "--ssh-client-key", str(self.work / "client"), *args,
        ])
        await poll_until(lambda: "following PostgreSQL change feed" in self.gateway.log_text(),
                         "the gateway to follow the change feed")

    def user(self) -> str:
        return self.cid if self.login_user == "root" else f"{self.login_user}.{self.cid}"

    async def ssh(self, key: str, command: str = "echo in") -> ProcessRun:
        argv = [self.ssh_path, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "HostKeyAlias=edd-gateway",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=20", "-i", str(self.work / key), "-p", str(self.ssh_port),
                f"{self.user()}@127.0.0.1", command]
        done = await run_process(argv, timeout=60, path=str(self.work)).result()
        self.assertFalse(done.timed_out, f"ssh hung: {bytes(done.err)!r}")
        return done

    async def first_login_like(self, key: str, works: bool, committed: float) -> float:
        """
        Seconds from C{committed} to the end of the first ssh whose outcome
        is C{works} (an upper bound: the gateway saw the change before it
        checked that login's key).
        """
        while True:
            started = time.monotonic()
            done = await self.ssh(key)
            if (done.exit_code == 0) == works:
                return time.monotonic() - committed
            if started - committed > 10:
                raise AssertionError(f"ssh still {'refused' if works else 'let in'} 10 s after the commit: "
                                     f"{bytes(done.err)!r}")

    async def test_keys_added_and_deleted_are_served_within_a_second(self) -> None:
        await self.start()
        for name, write in (("ed25519", write_user_key), ("ecdsa", write_ecdsa_key)):
            line = write(self.work / name)
            refused = await self.ssh(name)
            self.assertIn(b"Permission denied (publickey)", bytes(refused.err))
            key = await self.compute.add_ssh_key(self.user_id, f"{name} laptop", line)
            accepted_after = await self.first_login_like(name, True, key.committed)
            deleted = await self.compute.delete_ssh_key(key.id)
            refused_after = await self.first_login_like(name, False, deleted)
            print(f"{name}: accepted {accepted_after * 1000:.0f} ms and refused {refused_after * 1000:.0f} ms "
                  "after the commit (the end of the first ssh that saw it)")
            self.assertLess(accepted_after, WITHIN)
            self.assertLess(refused_after, WITHIN)

    async def restart_with_a_new_host_key(self) -> None:
        """What a rebuilt image does: the container stops, comes back with new sshd host keys."""
        await self.compute.stop(self.cid)
        await self.start_sshd()
        await self.compute.set_status(self.cid, "initializing")
        await self.compute.start(self.cid, "127.0.0.1")

    async def logged_in_key(self) -> None:
        line = write_user_key(self.work / "alice")
        key = await self.compute.add_ssh_key(self.user_id, "alice", line)
        await self.first_login_like("alice", True, key.committed)

    async def test_a_restart_with_a_new_host_key_is_pinned_afresh_per_run(self) -> None:
        await self.start()
        await self.logged_in_key()
        await self.restart_with_a_new_host_key()
        done = await self.ssh("alice")
        self.assertEqual((done.exit_code, bytes(done.out)), (0, b"in\n"), bytes(done.err))
        self.assertIn(f"container {self.cid} is stopped: its pinned SSH host key is dropped", self.gateway.log_text())
        refused = self.gateway.log_text().count("different SSH host key")
        self.assertEqual(refused, 0, "no login was refused for the new key")

    async def test_under_pin_a_new_host_key_is_refused_until_the_operator_forgets_it(self) -> None:
        await self.start("--ssh-host-key-policy", "pin")
        await self.logged_in_key()
        await self.restart_with_a_new_host_key()
        refused = await self.ssh("alice")
        self.assertEqual(refused.exit_code, 255)
        self.assertIn(b"forget-host-key", bytes(refused.err))
        forget = await run_process([sys.executable, "-m", "edd_gateway", "forget-host-key", self.cid,
                                    "--database", self.server.dsn()], timeout=60).result()
        self.assertEqual(forget.exit_code, 0, bytes(forget.err))
        done = await self.ssh("alice")
        self.assertEqual((done.exit_code, bytes(done.out)), (0, b"in\n"), bytes(done.err))
