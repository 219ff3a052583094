"""
End-to-end tests of limits and bans against the real ``twistd edd-gateway``:
raw sockets bound to 127.0.0.2 and 127.0.0.3 play two clients (127.0.0.1,
the allow-listed default, is where curl scrapes the admin endpoint from),
and the real OpenSSH client fails its login until its address is banned.
Bans are kept short and every wait is bounded (poll_until), never a sleep.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from pathlib import Path

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, ProcessRun, free_port, poll_until, require_tool, run_process
from edd_gateway.testing.sshd import write_user_key

ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection from C{source} to the gateway on loopback."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def refused(source: str, port: int, opening: bytes = b"") -> bool:
    """Whether the gateway closes a new connection from C{source} without a word (sending C{opening} first)."""
    try:
        connection = connect_from(source, port)
    except ConnectionResetError:
        return True
    with connection:
        try:
            if opening:
                connection.sendall(opening)
            return connection.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def http_get(source: str, port: int) -> bytes:
    """The status line of C{GET /} from C{source}."""
    with connect_from(source, port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0]


class _Case(EndToEndMixin, TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_tool("curl")


class ConnectionLimitTests(_Case):
    async def test_per_client_concurrency(self) -> None:
        gateway = await self.start_gateway(["--max-connections-per-ip", "3", "--sniff-timeout", "60",
                                            "--ban-limit-hits", "0"])
        held = [connect_from(ATTACKER, gateway.port) for _ in range(3)]
        for connection in held:
            self.addCleanup(connection.close)
        # Admission happens when the gateway accepts: wait until it has.
        await poll_until(lambda: http_get(BYSTANDER, gateway.port).startswith(b"HTTP/1.1 200"),
                         "the bystander to be served")
        self.assertTrue(refused(ATTACKER, gateway.port, b"GET / HTTP/1.1\r\n\r\n"), "a fourth connection")
        self.assertTrue(http_get(BYSTANDER, gateway.port).startswith(b"HTTP/1.1 200"))
        held.pop().close()
        await poll_until(lambda: not refused(ATTACKER, gateway.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                         "a place to free up once a connection closed")
        scrape = await self.scrape(gateway)
        self.assertGreaterEqual(scrape.value("edd_gateway_connections_refused_total",
                                             reason="max-connections-per-ip"), 1)
        self.assertGreaterEqual(scrape.value("edd_gateway_limit_hits_total", limit="max-connections-per-ip"), 1)
        self.assertIn(f"admission: refused {ATTACKER} on tcp:{gateway.port}", gateway.log_text())
        self.assertIn("max-connections-per-ip", gateway.log_text())


class BanTests(_Case):
    async def test_garbage_bans_on_every_listener_then_expires(self) -> None:
        second, ssh_port = free_port(), free_port()
        gateway = await self.start_gateway([
            "--ban-garbage", "3", "--ban-duration", "3", "--listen", f"tcp:{second}:interface=127.0.0.1",
            "--ssh-listen", f"tcp:{ssh_port}:interface=127.0.0.1",
        ])
        for _ in range(3):
            self.assertTrue(refused(ATTACKER, gateway.port, b"\x00\x01 not a protocol\r\n"))
        await poll_until(lambda: refused(ATTACKER, second, b"GET / HTTP/1.1\r\n\r\n"),
                         "the attacker to be refused on the other listener", 5)
        self.assertTrue(refused(ATTACKER, ssh_port), "and on the SSH listener: no banner")
        self.assertTrue(http_get(BYSTANDER, second).startswith(b"HTTP/1.1 200"), "others are served")
        scrape = await self.scrape(gateway)
        self.assertEqual(scrape.value("edd_gateway_bans_active"), 1)
        self.assertEqual(scrape.value("edd_gateway_bans_total", kind="garbage"), 1)
        self.assertGreaterEqual(scrape.value("edd_gateway_connections_refused_total", reason="banned"), 2)
        self.assertIn(f"ban: {ATTACKER} banned for 3 s after 3 garbage strikes", gateway.log_text())

        async def expired() -> bool:
            return (await self.scrape(gateway)).value("edd_gateway_bans_active") == 0

        await poll_until(expired, "the ban to expire", 10)
        self.assertTrue(http_get(ATTACKER, second).startswith(b"HTTP/1.1 200"))
        self.assertIn(f"ban: {ATTACKER}'s garbage ban expired", gateway.log_text())


class SSHBanTests(_Case):
    """Wrong keys are refused before any container is reached: no sshd needed."""

    async def ssh(self, port: int, key: Path, source: str) -> ProcessRun:
        login = pwd.getpwuid(os.geteuid()).pw_name
        user = "abc123" if login == "root" else f"{login}.abc123"
        argv = [require_tool("ssh"), "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-b", source, "-i", str(key),
                "-p", str(port), f"{user}@127.0.0.1", "true"]
        done = await run_process(argv, timeout=60).result()
        self.assertFalse(done.timed_out, f"ssh hung: {bytes(done.err)!r}")
        return done

    async def test_repeated_wrong_keys_ban_the_address(self) -> None:
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        alice = write_user_key(work / "alice")
        write_user_key(work / "mallory")
        (work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": "abc123", "user_id": "alice", "external_ip": "127.0.0.1", "ssh_enabled": True,
             "ssh_keys": [alice]}]}))
        ssh_port = free_port()
        gateway = await self.start_gateway([
            "--containers", str(work / "containers.yaml"), "--ssh-listen", f"tcp:{ssh_port}:interface=127.0.0.1",
            "--ssh-host-key", str(work / "host"), "--ssh-client-key", str(work / "client"),
            "--state-file", str(work / "pins.json"), "--ban-ssh-failures", "2", "--ban-duration", "60",
        ])
        for _ in range(2):
            denied = await self.ssh(ssh_port, work / "mallory", ATTACKER)
            self.assertIn(b"Permission denied (publickey)", bytes(denied.err))
        await poll_until(lambda: refused(ATTACKER, ssh_port), "the SSH client's address to be banned", 5)
        banned = await self.ssh(ssh_port, work / "alice", ATTACKER)
        self.assertEqual(banned.exit_code, 255)
        self.assertNotIn(b"Permission denied", bytes(banned.err), "not even the right key gets a login")
        self.assertTrue(refused(ATTACKER, gateway.port, b"GET / HTTP/1.1\r\n\r\n"), "nor HTTP on another listener")
        other = await self.ssh(ssh_port, work / "mallory", BYSTANDER)
        self.assertIn(b"Permission denied (publickey)", bytes(other.err), "another address still gets an answer")
        scrape = await self.scrape(gateway)
        self.assertEqual(scrape.value("edd_gateway_bans_total", kind="ssh-auth"), 1)
        self.assertEqual(scrape.value("edd_gateway_bans_active"), 1)
        self.assertIn(f"ban: {ATTACKER} banned for 60 s after 2 ssh-auth strikes", gateway.log_text())
