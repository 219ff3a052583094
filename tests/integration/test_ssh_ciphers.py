"""
End-to-end tests of the gateway's SSH algorithms with the real OpenSSH on
both sides: for every cipher, every MAC (with AES-CTR) and both curve25519
key exchanges, the user's ``ssh`` is forced to it (``-c``, ``-m``,
``-o KexAlgorithms``) and so is the throwaway ``sshd`` standing in for the
container (``Ciphers``, ``MACs``, ``KexAlgorithms``), and 5,000,000 random
bytes go up and down through the gateway byte for byte.  Both OpenSSH ends
log (``-vvv``, ``LogLevel DEBUG3``) what they agreed with the gateway and
that they use strict key exchange.  A client offering only CBC, SHA-1 key
exchanges or SHA-1 MACs is refused, with the gateway's log naming it; the
real ``twistd -n edd-gateway`` narrows its offer with ``--ssh-ciphers``.

OpenSSH 9.2 has no mlkem768x25519-sha256 (9.9 has): that key exchange is
tested with AsyncSSH (an independent implementation, on cryptography's
ML-KEM) as the user's client and as the container's sshd, for every cipher,
and between the gateway's own transports (tests/unit/test_ssh_crypto.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from edd_gateway.front.classify import Verdict
from edd_gateway.front.sniff import SniffingFactory
from edd_gateway.ssh import MemoryHostKeyPins, SSHSettings, build_ssh_factory
from edd_gateway.ssh import algorithms
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot
from edd_gateway.testing import (
    EndToEndMixin,
    GatewayProcess,
    ProcessRun,
    free_port,
    poll_until,
    require_tool,
    run_process,
    start_backend,
)
from edd_gateway.testing.sshd import ThrowawaySSHD, write_user_key

CID = "abc123"
SIZE = 5_000_000
STRICT = b"will use strict KEX ordering"


def agreed(log: bytes) -> set[tuple[str, str, str]]:
    """The (direction, cipher, MAC) lines OpenSSH logs at DEBUG1 for each key exchange."""
    return {(m.group(1).decode(), m.group(2).decode(), m.group(3).decode())
            for m in re.finditer(rb"kex: (client->server|server->client) cipher: (\S+) MAC: (\S+)", log)}


def kex_algorithm(log: bytes) -> set[str]:
    return {m.group(1).decode() for m in re.finditer(rb"kex: algorithm: (\S+)", log)}


class Setup:
    """Keys, a container directory, a throwaway sshd and the gateway's SSH factory behind a sniffer."""

    timeout = 240
    work: Path

    async def prepare(self) -> None:
        self.ssh_path = require_tool("ssh")
        self.work = Path(self.mktemp()).absolute()  # type: ignore[attr-defined]
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        self.alice = write_user_key(self.work / "alice")
        write_user_key(self.work / "client")
        self.sshd.trust(self.work / "client.pub")
        self.data = os.urandom(SIZE)
        (self.work / "data").write_bytes(self.data)

    def user(self) -> str:
        return CID if self.login_user == "root" else f"{self.login_user}.{CID}"

    async def start_sshd(self, *extra: str) -> ProcessRun:
        """The container's sshd, with C{extra} configuration lines (its algorithms), logging its kex."""
        return await self.sshd.start(*extra, log_level="DEBUG3")

    def ssh_argv(self, port: int, *args: str) -> list[str]:
        return [self.ssh_path, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "ConnectTimeout=20", "-i", str(self.work / "alice"),
                "-p", str(port), *args]

    async def run_tool(self, argv: list[str], stdin_from: str | None = None) -> ProcessRun:
        if stdin_from is not None:
            argv = ["/bin/sh", "-c", f"{shlex.join(argv)} < {shlex.quote(stdin_from)}"]
        done = await run_process(argv, timeout=120, path=str(self.work)).result()
        assert not done.timed_out, f"{argv[0]} hung: {bytes(done.err)[-2000:]!r}"
        return done


class CipherTests(Setup, TestCase):
    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        await self.prepare()
        directory = ContainerDirectory(ContainerSnapshot({
            CID: Container(CID, "alice", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(self.alice,)),
        }, ready=True))
        factory = build_ssh_factory(directory, MemoryHostKeyPins(), host_key_path=str(self.work / "host"),
                                    client_key_path=str(self.work / "client"), reactor=reactor,
                                    settings=SSHSettings(ssh_port=self.sshd.port))
        server = start_backend(SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name="e2e-ciphers"))
        self.addCleanup(server.stop)
        self.gateway_port = server.port
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    async def through(self, client_options: list[str], sshd_lines: list[str]) -> tuple[bytes, bytes]:
        """
        5 MB up and down through the gateway with the client and the sshd
        forced as given: the client's and the sshd's logs of the download.
        """
        sshd = await self.start_sshd(*sshd_lines)
        target = f"{self.user()}@127.0.0.1"
        up = await self.run_tool(self.ssh_argv(self.gateway_port, *client_options, target,
                                          f"cat > {shlex.quote(str(self.work / 'uploaded'))}"),
                            stdin_from=str(self.work / "data"))
        self.assertEqual(up.exit_code, 0, bytes(up.err)[-3000:])
        self.assertEqual(hashlib.sha256((self.work / "uploaded").read_bytes()).hexdigest(),
                         hashlib.sha256(self.data).hexdigest(), "the upload is byte-exact")
        mark = len(sshd.err)
        down = await self.run_tool(self.ssh_argv(self.gateway_port, "-vvv", *client_options, target,
                                            f"cat {shlex.quote(str(self.work / 'data'))}"))
        self.assertEqual(down.exit_code, 0, bytes(down.err)[-3000:])
        self.assertEqual(len(down.out), SIZE)
        self.assertEqual(hashlib.sha256(bytes(down.out)).hexdigest(), hashlib.sha256(self.data).hexdigest(),
                         "the download is byte-exact")
        await poll_until(lambda: b"kex: client->server cipher" in sshd.err[mark:], "sshd's kex log")
        return bytes(down.err), bytes(sshd.err[mark:])

    def check_agreed(self, log: bytes, cipher: str, mac: str, side: str) -> None:
        self.assertEqual(agreed(log), {("client->server", cipher, mac), ("server->client", cipher, mac)},
                         f"{side}: {log[-3000:]!r}")
        self.assertIn(STRICT, log, f"{side} uses strict key exchange with the gateway")

    async def check_cipher(self, cipher: str) -> None:
        aead = algorithms.CIPHERS.index(cipher.encode()) < 3
        client, sshd = await self.through(["-c", cipher], [f"Ciphers {cipher}"])
        # The client's preference decides (RFC 4253, 7.1): OpenSSH's first
        # MAC the gateway has towards the user, the gateway's own towards sshd.
        self.check_agreed(client, cipher, "<implicit>" if aead else "hmac-sha2-256-etm@openssh.com",
                          "the user's ssh")
        self.check_agreed(sshd, cipher, "<implicit>" if aead else "hmac-sha2-512-etm@openssh.com",
                          "the container's sshd")

    async def test_chacha20_poly1305(self) -> None:
        await self.check_cipher("chacha20-poly1305@openssh.com")

    async def test_aes256_gcm(self) -> None:
        await self.check_cipher("aes256-gcm@openssh.com")

    async def test_aes128_gcm(self) -> None:
        await self.check_cipher("aes128-gcm@openssh.com")

    async def test_aes256_ctr(self) -> None:
        await self.check_cipher("aes256-ctr")

    async def test_aes192_ctr(self) -> None:
        await self.check_cipher("aes192-ctr")

    async def test_aes128_ctr(self) -> None:
        await self.check_cipher("aes128-ctr")

    async def check_mac(self, mac: str) -> None:
        client, sshd = await self.through(["-c", "aes128-ctr", "-m", mac], ["Ciphers aes128-ctr", f"MACs {mac}"])
        self.check_agreed(client, "aes128-ctr", mac, "the user's ssh")
        self.check_agreed(sshd, "aes128-ctr", mac, "the container's sshd")

    async def test_hmac_sha2_512_etm(self) -> None:
        await self.check_mac("hmac-sha2-512-etm@openssh.com")

    async def test_hmac_sha2_256_etm(self) -> None:
        await self.check_mac("hmac-sha2-256-etm@openssh.com")

    async def test_hmac_sha2_512(self) -> None:
        await self.check_mac("hmac-sha2-512")

    async def test_hmac_sha2_256(self) -> None:
        await self.check_mac("hmac-sha2-256")

    async def check_kex(self, kex: str) -> None:
        client, sshd = await self.through(["-o", f"KexAlgorithms={kex}"], [f"KexAlgorithms {kex}"])
        self.assertEqual((kex_algorithm(client), kex_algorithm(sshd)), ({kex}, {kex}))
        self.assertIn(STRICT, client)
        self.assertIn(STRICT, sshd)

    async def test_curve25519_sha256(self) -> None:
        await self.check_kex("curve25519-sha256")

    async def test_curve25519_sha256_libssh(self) -> None:
        await self.check_kex("curve25519-sha256@libssh.org")

    async def test_defaults_on_both_sides(self) -> None:
        client, sshd = await self.through([], [])
        # OpenSSH's own preference, among what the gateway offers.
        self.check_agreed(client, "chacha20-poly1305@openssh.com", "<implicit>", "the user's ssh")
        self.check_agreed(sshd, "chacha20-poly1305@openssh.com", "<implicit>", "the container's sshd")
        self.assertEqual(kex_algorithm(sshd), {"curve25519-sha256"})
        self.assertIn(b"host key algorithm: ssh-ed25519", sshd + client)

    async def test_rekeys_on_both_sides(self) -> None:
        # Every MiB, as OpenSSH does every GiB or so by itself: the user's
        # ssh rekeys with the gateway, the sshd with the gateway's client.
        client, sshd = await self.through(["-o", "RekeyLimit=1M"], ["RekeyLimit 1M"])
        self.assertGreaterEqual(client.count(b"kex: algorithm: "), 4, client[-3000:])
        self.assertGreaterEqual(sshd.count(b"kex: algorithm: "), 4, sshd[-3000:])

    # Refusals.

    async def refused(self, *options: str) -> bytes:
        await self.start_sshd()
        done = await self.run_tool(self.ssh_argv(self.gateway_port, *options, f"{self.user()}@127.0.0.1", "true"))
        self.assertEqual(done.exit_code, 255, bytes(done.err))
        await poll_until(lambda: self.refusals(), "the gateway's refusal log line")
        return bytes(done.err)

    def refusals(self) -> list[dict[str, Any]]:
        return [event for event in self.logged if "refused the client" in event.get("log_format", "")]

    async def test_cbc_is_refused(self) -> None:
        said = await self.refused("-c", "aes128-cbc")
        # OpenSSH judges the gateway's KEXINIT itself and says so before the
        # gateway's DISCONNECT comes; either way it names what is offered.
        self.assertRegex(said, rb"no matching cipher found|no common cipher: the gateway offers "
                               rb"chacha20-poly1305@openssh.com")
        self.assertIn(b"chacha20-poly1305@openssh.com,aes256-gcm@openssh.com", said)
        (event,) = self.refusals()
        self.assertRegex(event["client"], r"^127\.0\.0\.1:\d+$")
        self.assertIn("no common cipher: the gateway offers chacha20-poly1305@openssh.com", event["reason"])
        self.assertIn("CBC ciphers are refused", event["reason"])

    async def test_sha1_kex_is_refused(self) -> None:
        said = await self.refused("-o", "KexAlgorithms=diffie-hellman-group14-sha1")
        self.assertRegex(said, rb"no matching key exchange method found|no common key exchange method")
        self.assertIn(b"mlkem768x25519-sha256,curve25519-sha256", said)
        (event,) = self.refusals()
        self.assertIn("SHA-1 key exchanges are refused", event["reason"])

    async def test_sha1_mac_is_refused(self) -> None:
        said = await self.refused("-o", "MACs=hmac-sha1")
        self.assertRegex(said, rb"no matching MAC found|no common MAC")
        (event,) = self.refusals()
        self.assertIn("no common MAC: the gateway offers hmac-sha2-512-etm@openssh.com", event["reason"])
        self.assertIn("SHA-1 MACs are refused", event["reason"])

    async def test_dsa_is_refused(self) -> None:
        said = await self.refused("-o", "HostKeyAlgorithms=ssh-dss")
        self.assertRegex(said, rb"no matching host key type found|no common host key algorithm")
        (event,) = self.refusals()
        self.assertIn("no common host key algorithm: the gateway offers ssh-ed25519", event["reason"])
        self.assertIn("DSA keys are refused", event["reason"])

    async def test_a_container_with_only_weak_algorithms(self) -> None:
        await self.start_sshd("Ciphers aes128-cbc,3des-cbc")
        done = await self.run_tool(self.ssh_argv(self.gateway_port, f"{self.user()}@127.0.0.1", "true"))
        self.assertEqual(done.exit_code, 255)
        self.assertIn(f"container {CID}'s sshd offers no SSH algorithms the gateway accepts (no common cipher: "
                      f"the gateway offers chacha20-poly1305@openssh.com".encode(), bytes(done.err))
        self.assertIn(b"CBC ciphers are refused", bytes(done.err))


class GatewayOptionTests(Setup, EndToEndMixin, TestCase):
    """The real twistd with C{--ssh-ciphers} and C{--ssh-kex}: what the user's ssh and the sshd see."""

    def setUp(self) -> Any:
        return ensureDeferred(self.prepare())

    async def test_a_narrowed_offer_on_both_sides(self) -> None:
        sshd = await self.start_sshd()
        (self.work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": CID, "user_id": "alice", "external_ip": "127.0.0.1", "ssh_enabled": True,
             "ssh_keys": [self.alice]}]}))
        ssh_port = free_port()
        await self.start_gateway([
            "--containers", str(self.work / "containers.yaml"), "--ssh-port", str(self.sshd.port),
            "--ssh-listen", f"tcp:{ssh_port}:interface=127.0.0.1", "--ssh-host-key", str(self.work / "host"),
            "--ssh-client-key", str(self.work / "client"), "--state-file", str(self.work / "pins.json"),
            "--ssh-ciphers", "aes256-gcm@openssh.com,aes128-ctr", "--ssh-kex", "curve25519-sha256@libssh.org",
        ])
        done = await self.run_tool(self.ssh_argv(ssh_port, "-vvv", f"{self.user()}@127.0.0.1",
                                            f"cat {shlex.quote(str(self.work / 'data'))}"))
        self.assertEqual(done.exit_code, 0, bytes(done.err)[-3000:])
        self.assertEqual(bytes(done.out), self.data)
        # The user's ssh prefers aes128-ctr to AES-GCM; the gateway, as the sshd's client, the other way.
        self.assertEqual(agreed(bytes(done.err)), {("client->server", "aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
                                                   ("server->client", "aes128-ctr", "hmac-sha2-256-etm@openssh.com")})
        self.assertEqual(kex_algorithm(bytes(done.err)), {"curve25519-sha256@libssh.org"})
        self.assertEqual(kex_algorithm(bytes(sshd.err)), {"curve25519-sha256@libssh.org"})
        self.assertIn(("client->server", "aes256-gcm@openssh.com", "<implicit>"), agreed(bytes(sshd.err)))
        refused = await self.run_tool(self.ssh_argv(ssh_port, "-c", "chacha20-poly1305@openssh.com",
                                               f"{self.user()}@127.0.0.1", "true"))
        self.assertEqual(refused.exit_code, 255)
        self.assertIn(b"aes256-gcm@openssh.com,aes128-ctr", bytes(refused.err))
        await poll_until(lambda: "no common cipher: the gateway offers aes256-gcm@openssh.com,aes128-ctr"
                         in self.gateway_logs(), "the refusal in the gateway's log")
        self.assertRegex(self.gateway_logs(), r"refused the client 127\.0\.0\.1:\d+: no common cipher")

    async def test_a_weak_option_stops_the_start(self) -> None:
        done = await run_process([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                  "--pidfile=", "edd-gateway", "--ssh-macs", "hmac-sha1"], timeout=60,
                                 env=GatewayProcess(str(self.work / "refused")).environment(),
                                 path=str(self.work)).result()
        self.assertNotEqual(done.exit_code, 0)
        self.assertIn(b"--ssh-macs: hmac-sha1 is refused (SHA-1 MACs are refused); choose from", bytes(done.out + done.err))


def aio(coroutine: Any) -> Any:
    """An asyncio coroutine as a Deferred (the tests run on the asyncio reactor)."""
    import asyncio

    from twisted.internet.defer import Deferred

    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


class AsyncSSHInteropTests(Setup, TestCase):
    """
    mlkem768x25519-sha256 (and every cipher and MAC, under strict kex) with
    another implementation of it: AsyncSSH, as the user's client and as the
    container's sshd.  OpenSSH 9.2 here has no ML-KEM.
    """

    def setUp(self) -> Any:
        try:
            import asyncssh  # noqa: F401
        except ImportError:
            from unittest import SkipTest

            from edd_gateway.testing import integration_required

            if integration_required():
                raise AssertionError("asyncssh is not installed (pip install -e .[test])") from None
            raise SkipTest("asyncssh is not installed (pip install -e .[test])") from None
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        await self.prepare()
        directory = ContainerDirectory(ContainerSnapshot({
            CID: Container(CID, "alice", "running", "127.0.0.1", ssh_enabled=True, ssh_keys=(self.alice,)),
        }, ready=True))
        factory = build_ssh_factory(directory, MemoryHostKeyPins(), host_key_path=str(self.work / "host"),
                                    client_key_path=str(self.work / "client"), reactor=reactor,
                                    settings=SSHSettings(ssh_port=self.sshd.port))
        server = start_backend(SniffingFactory({Verdict.SSH: factory}, clock=reactor, listener_name="e2e-asyncssh"))
        self.addCleanup(server.stop)
        self.gateway_port = server.port

    async def asyncssh_client(self, **offered: Any) -> tuple[bytes, dict[str, Any]]:
        """C{cat} of the data file through the gateway by an AsyncSSH client; the output and what it agreed."""
        import asyncssh

        connection = await aio(asyncssh.connect(
            "127.0.0.1", self.gateway_port, username=self.user(), client_keys=[str(self.work / "alice")],
            known_hosts=None, agent_path=None, **offered))
        try:
            result = await aio(connection.run(f"cat {shlex.quote(str(self.work / 'data'))}", encoding=None,
                                              check=True))
            agreed = {name: connection.get_extra_info(name) for name in ("send_cipher", "recv_cipher", "send_mac")}
        finally:
            connection.close()
            await aio(connection.wait_closed())
        return result.stdout, agreed

    async def test_asyncssh_client_with_mlkem_and_every_cipher(self) -> None:
        await self.start_sshd()
        for cipher in algorithms.CIPHERS:
            macs = [mac.decode() for mac in algorithms.MACS] if cipher.endswith(b"-ctr") else ["hmac-sha2-256"]
            for mac in macs:
                out, agreed = await self.asyncssh_client(kex_algs=["mlkem768x25519-sha256"],
                                                         encryption_algs=[cipher.decode()], mac_algs=[mac])
                self.assertEqual(out, self.data, (cipher, mac))
                self.assertEqual(agreed["send_cipher"], cipher.decode(), agreed)

    async def asyncssh_sshd(self, **offered: Any) -> tuple[Any, list[Any]]:
        """An AsyncSSH server standing in for the container: C{sha256} of stdin, or C{produce} the data file."""
        import asyncssh

        connections: list[Any] = []
        data = self.data

        class Server(asyncssh.SSHServer):  # type: ignore[misc]
            def connection_made(self, conn: Any) -> None:
                connections.append(conn)

        async def handle(process: Any) -> None:
            if process.command == "sha256":
                received = await process.stdin.read()
                process.stdout.write(hashlib.sha256(received).hexdigest().encode())
            else:
                process.stdout.write(data)
            process.exit(0)

        server = await aio(asyncssh.create_server(
            Server, "127.0.0.1", self.sshd.port, server_host_keys=[str(self.sshd.host_key)],
            authorized_client_keys=str(self.sshd.authorized_keys), process_factory=handle, encoding=None,
            **offered))
        return server, connections

    async def test_gateway_client_with_mlkem_to_an_asyncssh_sshd(self) -> None:
        for cipher in algorithms.CIPHERS:
            server, connections = await self.asyncssh_sshd(kex_algs=["mlkem768x25519-sha256"],
                                                           encryption_algs=[cipher.decode()])
            target = f"{self.user()}@127.0.0.1"
            up = await self.run_tool(self.ssh_argv(self.gateway_port, target, "sha256"),
                                     stdin_from=str(self.work / "data"))
            self.assertEqual((up.exit_code, bytes(up.out).decode()), (0, hashlib.sha256(self.data).hexdigest()),
                             (cipher, bytes(up.err)[-2000:]))
            down = await self.run_tool(self.ssh_argv(self.gateway_port, target, "produce"))
            self.assertEqual(down.exit_code, 0, bytes(down.err)[-2000:])
            self.assertEqual(bytes(down.out), self.data, cipher)
            self.assertEqual({c.get_extra_info("recv_cipher") for c in connections}, {cipher.decode()})
            # The next cipher's server takes the same port.
            server.close()
            await aio(server.wait_closed())
