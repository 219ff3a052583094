"""
ssh-audit (from PyPI) against the real ``twistd -n edd-gateway`` in its
default SSH configuration, on both of the gateway's sides:

 - as a scanner of the gateway's SSH port (what an attacker or an auditor
   sees): no C{[fail]} line, and every C{[warn]} left is one that
   docs/ssh.md names, with its reason;
 - in client-audit mode (C{-c}), posing as a container's sshd: a user's
   ``ssh`` through the gateway makes the gateway connect to it, and what the
   gateway's client offers passes the same way.

ssh-audit's client audit listens on every interface, and this project's
tests listen on loopback only: the real tool runs with its listening socket
moved to 127.0.0.1 (L{AUDIT_ON_LOOPBACK}), nothing else changed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, ProcessRun, free_port, poll_until, require_module, require_tool
from edd_gateway.testing import run_process
from edd_gateway.testing.sshd import write_user_key

CID = "abc123"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "ssh.md"

#: ssh-audit's own entry point, its listening sockets bound to loopback.
AUDIT_ON_LOOPBACK = """
import socket, sys
from ssh_audit.ssh_audit import main
bind = socket.socket.bind
def loopback(self, address):
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address[0], address[0])
    return bind(self, (host, *address[1:]))
socket.socket.bind = loopback
sys.argv[0] = "ssh-audit"
sys.exit(main())
"""


def findings(report: str, level: str) -> list[str]:
    """The algorithm names of ssh-audit's C{[level]} lines (``(kex) name -- [fail] ...``)."""
    return [m.group(1) for m in re.finditer(rf"(?m)^\(\w+\) (\S+)\s+-- \[{level}\]", report)]


def documented_warnings() -> set[str]:
    """The names docs/ssh.md's ssh-audit table lists (its first column, in backquotes)."""
    text = DOCS.read_text()
    section = text.split("## What ssh-audit says", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"(?m)^\| `([^`]+)`", section))


class SSHAuditTests(EndToEndMixin, TestCase):
    timeout = 120

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        require_module("ssh_audit")
        self.ssh = require_tool("ssh")
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.alice = write_user_key(self.work / "alice")
        self.container_port = free_port()
        (self.work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": CID, "user_id": "alice", "external_ip": "127.0.0.1", "ssh_enabled": True,
             "ssh_keys": [self.alice]},
        ]}))
        self.ssh_port = free_port()
        self.gateway = await self.start_gateway([
            "--containers", str(self.work / "containers.yaml"), "--ssh-port", str(self.container_port),
            "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1", "--ssh-host-key", str(self.work / "host"),
            "--ssh-client-key", str(self.work / "client"), "--state-file", str(self.work / "pins.json"),
        ])

    def audit(self, *args: str) -> ProcessRun:
        # -n: no colours; --skip-rate-test: the gateway's limits are tested elsewhere.
        argv = [sys.executable, "-c", AUDIT_ON_LOOPBACK, "-n", "--skip-rate-test", *args]
        return run_process(argv, timeout=90, path=str(self.work))

    def check(self, report: str, side: str) -> None:
        self.assertIn("# message authentication code algorithms", report, f"{side}: not a whole report: {report}")
        self.assertEqual(findings(report, "fail"), [], f"{side}: {report}")
        warned = set(findings(report, "warn"))
        self.assertLessEqual(warned, documented_warnings(),
                             f"{side}: [warn] lines that docs/ssh.md does not explain:\n{report}")

    async def test_the_gateway_port(self) -> None:
        done = await self.audit("-p", str(self.ssh_port), "127.0.0.1").result()
        report = bytes(done.out).decode("utf-8", "replace")
        self.assertFalse(done.timed_out, report)
        self.assertIn("(gen) banner: SSH-2.0-edd_gateway\n", report)
        self.assertNotIn("Twisted", report)
        self.assertIn("(kex) mlkem768x25519-sha256", report)
        self.assertIn("(kex) kex-strict-s-v00@openssh.com", report)
        self.assertIn("(enc) chacha20-poly1305@openssh.com", report)
        self.check(report, "the gateway's SSH port")

    async def test_the_gateway_as_a_containers_client(self) -> None:
        audit = self.audit("-c", "-p", str(self.container_port), "-t", "60")
        self.addCleanup(lambda: audit.stop() if audit.exit_code is None else None)
        await poll_until(lambda: self.listening(self.container_port) or audit.exit_code is not None,
                         "ssh-audit to listen")
        user = run_process([self.ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                            "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                            "-o", "IdentityAgent=none", "-o", "ConnectTimeout=20", "-i", str(self.work / "alice"),
                            "-p", str(self.ssh_port), f"{CID}@127.0.0.1", "true"], timeout=60)
        self.addCleanup(lambda: user.stop() if user.exit_code is None else None)
        done = await audit.result()
        report = bytes(done.out).decode("utf-8", "replace")
        self.assertFalse(done.timed_out, report + bytes(done.err).decode("utf-8", "replace"))
        self.assertIn("(gen) banner: SSH-2.0-edd_gateway\n", report, "the gateway's client names no version")
        self.assertIn("(kex) kex-strict-c-v00@openssh.com", report)
        self.check(report, "the gateway's client side")
        await user.result()

    def listening(self, port: int) -> bool:
        """Whether a socket listens on 127.0.0.1:C{port}, read off /proc (connecting would be the audit's client)."""
        wanted = f"0100007F:{port:04X}"
        with open("/proc/net/tcp") as table:
            return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:])
