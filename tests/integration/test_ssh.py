"""
End-to-end tests of the SSH side with the real OpenSSH clients: ``ssh``,
``scp`` and ``sftp`` log in through the gateway (its SSH factory behind a
sniffing listener on 127.0.0.1, in this process) to a throwaway ``sshd`` on
loopback standing in for the container, with its own host key and the
gateway's client key in its AuthorizedKeysFile.

sshd runs as the test's user: as root the containers' default user (root)
logs in; otherwise logins name the test's user (C{<user>.<container-id>}).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.ssh import MemoryHostKeyPins, SSHSettings, build_ssh_factory
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot
from edd_gateway.testing import (
    BackendServer,
    ProcessRun,
    free_port,
    poll_until,
    require_tool,
    run_process,
    start_backend,
)
from edd_gateway.testing.sshd import SFTP, ThrowawaySSHD, write_user_key

CID = "abc123"


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class SSHEndToEndTests(TestCase):
    timeout = 180

    async def _start(self) -> None:
        self.ssh_path = require_tool("ssh")
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        alice = write_user_key(self.work / "alice")
        write_user_key(self.work / "bob")
        self.directory = ContainerDirectory(ContainerSnapshot({
            CID: Container(CID, "alice", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(alice,)),
            "stop1": Container("stop1", "alice", "stopped", "127.0.0.1", ssh_enabled=True, ssh_keys=(alice,)),
        }, ready=True))
        self.factory = self.gateway_factory()
        self.sshd.trust(self.work / "client.pub")
        await self.sshd.start(SFTP, "AllowTcpForwarding yes", "X11Forwarding no", "AcceptEnv EDD_*")
        self.gateway = self.listen(self.factory)

    def setUp(self) -> Any:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self._start())

    def gateway_factory(self) -> Any:
        factory = build_ssh_factory(self.directory, MemoryHostKeyPins(), host_key_path=str(self.work / "host"),
                                    client_key_path=str(self.work / "client"), reactor=reactor,
                                    settings=SSHSettings(ssh_port=self.sshd.port))
        self.upstreams: list[Any] = []
        connect = factory.connector.connect

        def tracked(*args: Any) -> Any:
            return connect(*args).addCallback(lambda up: (self.upstreams.append(up), up)[1])

        factory.connector.connect = tracked  # type: ignore[method-assign]
        self.addCleanup(self.upstreams_closed)
        return factory

    async def upstreams_closed(self) -> None:
        await poll_until(lambda: all(not up.transport.transport.connected for up in self.upstreams),
                         "the gateway's connections to sshd to close")

    def listen(self, factory: Any) -> BackendServer:
        sniffer = SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name="e2e-ssh")
        server = start_backend(sniffer)
        self.addCleanup(server.stop)
        return server

    @staticmethod
    def accepts(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def user(self, cid: str = CID) -> str:
        """The SSH user name that logs in to C{cid} as the user sshd runs as."""
        return cid if self.login_user == "root" else f"{self.login_user}.{cid}"

    def options(self, key: str = "alice", strict: str = "no") -> list[str]:
        # OpenSSH keeps the first value given for an option: callers choose
        # StrictHostKeyChecking here, not with a later -o.
        return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
                "-i", str(self.work / key)]

    def ssh_argv(self, *args: str, key: str = "alice", port: int | None = None, strict: str = "no") -> list[str]:
        return [self.ssh_path, *self.options(key, strict), "-p", str(port or self.gateway.port), *args]

    async def run_tool(self, argv: list[str], timeout: float = 60) -> ProcessRun:
        done = await run_process(argv, timeout=timeout, path=str(self.work)).result()
        self.assertFalse(done.timed_out, f"{argv[0]} hung: out={bytes(done.out)[-500:]!r} err={bytes(done.err)!r}")
        return done

    async def ssh(self, *args: str, key: str = "alice", stdin_from: str | None = None) -> ProcessRun:
        argv = self.ssh_argv(*args, key=key)
        if stdin_from is not None:
            argv = ["/bin/sh", "-c", f"{stdin_from} | {shlex.join(argv)}"]
        return await self.run_tool(argv)

    # Sessions.

    async def test_exec(self) -> None:
        done = await self.ssh(f"{self.user()}@127.0.0.1", "echo hi; echo oops >&2")
        self.assertEqual((done.exit_code, bytes(done.out), bytes(done.err)), (0, b"hi\n", b"oops\n"))

    async def test_exit_code(self) -> None:
        done = await self.ssh(f"{self.user()}@127.0.0.1", "exit 3")
        self.assertEqual(done.exit_code, 3)

    async def test_stdin_piped_then_eof(self) -> None:
        done = await self.ssh(f"{self.user()}@127.0.0.1", "cat", stdin_from="echo x")
        self.assertEqual((done.exit_code, bytes(done.out)), (0, b"x\n"))

    async def test_large_stdin_arrives_whole_before_eof(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        (self.work / "stdin").write_bytes(data)
        done = await self.ssh(f"{self.user()}@127.0.0.1", "sha256sum", stdin_from=f"cat {self.work / 'stdin'}")
        self.assertEqual(bytes(done.out).split()[0].decode(), hashlib.sha256(data).hexdigest())

    async def test_pty_session(self) -> None:
        done = await self.ssh("-tt", f"{self.user()}@127.0.0.1", "tty; echo $TERM; exit 4")
        self.assertIn(b"/dev/pts/", bytes(done.out))
        self.assertEqual(done.exit_code, 4)

    async def test_env_passed(self) -> None:
        done = await self.ssh("-o", "SetEnv=EDD_GREETING=hello", f"{self.user()}@127.0.0.1", "echo $EDD_GREETING")
        self.assertEqual(bytes(done.out), b"hello\n")

    async def test_user_dot_container(self) -> None:
        done = await self.ssh(f"{self.login_user}.{CID}@127.0.0.1", "id -un")
        self.assertEqual(bytes(done.out).strip().decode(), self.login_user)

    async def test_slow_reader_holds_the_container_back(self) -> None:
        """The user's client stops reading for 3 s while the container writes 32 MiB."""
        argv = self.ssh_argv(f"{self.user()}@127.0.0.1", "head -c 33554432 /dev/zero")
        reader = run_process(["/bin/sh", "-c", f"{shlex.join(argv)} | (sleep 3; wc -c)"], timeout=60)
        peak = 0
        while reader.exit_code is None:
            peak = max(peak, self.gateway_buffered())
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(bytes(reader.out).strip(), b"33554432")
        # One relay window and a client window at most, not the 32 MiB.
        self.assertLess(peak, 6 * 1024 * 1024)

    def gateway_buffered(self) -> int:
        total = 0
        for wrapper in list(self.gateway.tracker.protocols):
            ssh = wrapper.wrappedProtocol
            service = getattr(ssh, "service", None)
            for channel in list(getattr(service, "channels", {}).values()):
                total += channel.queued_bytes
            tcp = wrapper.transport
            total += len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        return total

    # Files.

    async def test_scp_both_ways(self) -> None:
        data = os.urandom(4 * 1024 * 1024 + 5)
        (self.work / "up").write_bytes(data)
        scp = require_tool("scp")
        for mode, legacy in (("sftp", []), ("scp", ["-O"])):
            remote = f"{self.user()}@127.0.0.1:{self.work / ('remote-' + mode)}"
            up = await self.run_tool([scp, *legacy, *self.options(), "-P", str(self.gateway.port), str(self.work / "up"),
                                 remote])
            self.assertEqual(up.exit_code, 0, bytes(up.err))
            down = await self.run_tool([scp, *legacy, *self.options(), "-P", str(self.gateway.port), remote,
                                   str(self.work / ("down-" + mode))])
            self.assertEqual(down.exit_code, 0, bytes(down.err))
            self.assertEqual(hashlib.sha256((self.work / ("down-" + mode)).read_bytes()).hexdigest(),
                             hashlib.sha256(data).hexdigest(), mode)

    async def test_sftp_batch(self) -> None:
        (self.work / "local.txt").write_text("through sftp\n")
        remote = self.work / "sftp-dir"
        (self.work / "batch").write_text(f"mkdir {remote}\nput {self.work / 'local.txt'} {remote}/a.txt\n"
                                         f"ls {remote}\nget {remote}/a.txt {self.work / 'back.txt'}\n")
        sftp = require_tool("sftp")
        done = await self.run_tool([sftp, *self.options(), "-P", str(self.gateway.port), "-b", str(self.work / "batch"),
                               f"{self.user()}@127.0.0.1"])
        self.assertEqual(done.exit_code, 0, bytes(done.err))
        self.assertEqual((self.work / "back.txt").read_text(), "through sftp\n")

    # Forwarding and multiplexing.

    async def test_local_forward_into_the_container(self) -> None:
        echo = start_backend(protocol.Factory.forProtocol(Echo))
        self.addCleanup(echo.stop)
        local = free_port()
        forward = run_process(self.ssh_argv("-N", "-o", "ExitOnForwardFailure=yes",
                                            "-L", f"{local}:127.0.0.1:{echo.port}", f"{self.user()}@127.0.0.1"),
                              timeout=60)
        self.addCleanup(forward.stop)
        await poll_until(lambda: self.accepts(local) or forward.exit_code is not None, "ssh -L to listen")
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", local).connect(
            protocol.Factory.forProtocol(Collect))
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(b"ping through the tunnel")
        await poll_until(lambda: len(client.received) >= 23, "the echo through ssh -L")
        self.assertEqual(bytes(client.received), b"ping through the tunnel")

    async def test_remote_forwarding_refused(self) -> None:
        done = await self.ssh("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", f"{self.user()}@127.0.0.1",
                              "true")
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"remote port forwarding failed", bytes(done.err))

    async def test_several_channels_on_one_connection(self) -> None:
        # A Unix socket path must fit in 108 bytes; trial's temporary
        # directories are deeper than that.
        short = tempfile.mkdtemp(prefix="ssh-mux-")
        self.addCleanup(shutil.rmtree, short, True)
        control = os.path.join(short, "control")
        master = run_process(self.ssh_argv("-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
                                           f"{self.user()}@127.0.0.1"), timeout=60)
        self.addCleanup(master.stop)
        await poll_until(lambda: os.path.exists(control) or master.exit_code is not None, "the control socket")
        runs = [run_process(self.ssh_argv("-o", f"ControlPath={control}", f"{self.user()}@127.0.0.1", f"echo {n}"))
                for n in range(3)]
        outputs = sorted([bytes((await r.result()).out) for r in runs])
        self.assertEqual(outputs, [b"0\n", b"1\n", b"2\n"])
        self.assertIsNone(master.exit_code, bytes(master.err))
        self.assertEqual(len(self.upstreams), 1)

    # Refusals.

    async def test_another_users_key_is_refused(self) -> None:
        done = await self.ssh(f"{self.user()}@127.0.0.1", "true", key="bob")
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"Permission denied (publickey)", bytes(done.err))
        self.assertEqual(self.upstreams, [])

    async def test_stopped_container_message(self) -> None:
        done = await self.ssh(f"{self.user('stop1')}@127.0.0.1", "true")
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"container stop1 is stopped", bytes(done.err))

    async def test_unknown_container_is_permission_denied(self) -> None:
        # As for another's key: which containers exist is not told.
        done = await self.ssh(f"{self.user('nope42')}@127.0.0.1", "true")
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"Permission denied (publickey)", bytes(done.err))
        self.assertNotIn(b"not found", bytes(done.err))

    async def test_container_without_the_gateway_key(self) -> None:
        (self.work / "authorized_keys").write_text("")
        done = await self.ssh(f"{self.user()}@127.0.0.1", "true")
        self.assertIn(b"did not accept the gateway's key", bytes(done.err))

    async def test_container_connection_lost_mid_session(self) -> None:
        session = run_process(self.ssh_argv(f"{self.user()}@127.0.0.1", "echo started; sleep 60"), timeout=60)
        await session.wait_for_output(b"started")
        self.upstreams[0].transport.transport.abortConnection()
        done = await session.result()
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"the connection to container abc123 closed", bytes(done.err))

    # Host key.

    async def test_same_host_key_after_a_restart(self) -> None:
        alias = ["-o", "HostKeyAlias=edd-gateway"]
        first = await self.run_tool(self.ssh_argv(*alias, f"{self.user()}@127.0.0.1", "true", strict="accept-new"))
        self.assertEqual(first.exit_code, 0, bytes(first.err))
        restarted = self.listen(self.gateway_factory())
        again = await self.run_tool(self.ssh_argv(*alias, f"{self.user()}@127.0.0.1", "echo same",
                                             port=restarted.port, strict="yes"))
        self.assertEqual((again.exit_code, bytes(again.out)), (0, b"same\n"), bytes(again.err))
