"""
End-to-end tests of users' key types through the real ``twistd -n
edd-gateway`` in its default SSH configuration (an Ed25519 host key only, no
option about algorithms), with the real OpenSSH tools: ``ssh``, ``scp``,
``sftp``, ``rsync -e ssh`` and ``git clone`` over ssh, each logging in with
an RSA (3072), an ECDSA (P-256, P-384, P-521) and an Ed25519 key.  A
throwaway ``sshd`` on 127.0.0.1 stands in for the container; its filesystem
is this machine's, where the test makes a git repository to clone.

Also: RSA with each SHA-2 signature and never with SHA-1 unless
C{--ssh-allow-sha1-rsa}; the host-key algorithms of an RSA host key; what
``server-sig-algs`` and the banner say; and that an unknown container, a
stopped one and another's key look the same to ``ssh -v``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.ssh import algorithms
from edd_gateway.testing import EndToEndMixin, ProcessRun, free_port, require_tool, run_process
from edd_gateway.testing.sshd import SFTP, ThrowawaySSHD, write_user_key

CID = "abc123"
#: Container ids of the same length, so that what ssh prints differs by nothing but the name.
STOPPED, UNKNOWN = "stop01", "nope99"

#: The user key types the compute service accepts.
KEY_TYPES: dict[str, Any] = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}
SERVER_SIG_ALGS = ("ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,"
                   "rsa-sha2-512,rsa-sha2-256")


def write_key(path: Path, private: Any) -> str:
    """C{private} in OpenSSH files (C{path}, C{path.pub}); its public line."""
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " " + path.name
    Path(str(path) + ".pub").write_text(line + "\n")
    return line


class UserKeyTypesTests(EndToEndMixin, TestCase):
    timeout = 240

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.tools = {name: require_tool(name) for name in ("ssh", "scp", "sftp", "rsync", "git")}
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)
        self.sshd = ThrowawaySSHD(self, self.work)
        self.login_user = pwd.getpwuid(os.geteuid()).pw_name
        owner_keys = [write_key(self.work / kind, make()) for kind, make in KEY_TYPES.items()]
        write_user_key(self.work / "mallory")
        # The gateway's client key, made here so sshd can trust it before the gateway starts.
        write_user_key(self.work / "client")
        self.sshd.trust(self.work / "client.pub")
        await self.sshd.start(SFTP)
        (self.work / "containers.yaml").write_text(json.dumps({"containers": [
            {"id": CID, "user_id": "alice", "external_ip": "127.0.0.1", "ssh_enabled": True, "ssh_keys": owner_keys},
            {"id": STOPPED, "user_id": "alice", "status": "stopped", "external_ip": "127.0.0.1",
             "ssh_enabled": True, "ssh_keys": owner_keys},
        ]}))

    async def start(self, *args: str) -> None:
        """The gateway on the containers file, in its default SSH configuration plus C{args}."""
        self.ssh_port = free_port()
        self.gateway = await self.start_gateway([
            "--containers", str(self.work / "containers.yaml"), "--ssh-port", str(self.sshd.port),
            "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1", "--ssh-host-key", str(self.work / "host"),
            "--ssh-client-key", str(self.work / "client"), "--state-file", str(self.work / "pins.json"), *args,
        ])

    def user(self, cid: str = CID) -> str:
        return cid if self.login_user == "root" else f"{self.login_user}.{cid}"

    def ssh_options(self, key: str, *extra: str, log_level: str = "ERROR") -> list[str]:
        """ssh's options (without the port): only C{key}, no agent, no config file."""
        options = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                   "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}", "-o", "HostKeyAlias=edd-gateway",
                   "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", f"LogLevel={log_level}",
                   "-o", "ConnectTimeout=20", "-i", str(self.work / key)]
        for option in extra:
            options += ["-o", option]
        return options

    async def run_tool(self, argv: list[str], env: dict[str, str] | None = None) -> ProcessRun:
        done = await run_process(argv, timeout=60, path=str(self.work), env=env).result()
        self.assertFalse(done.timed_out, f"{argv[0]} hung: {bytes(done.err)!r}")
        return done

    async def ssh(self, key: str, command: str, *extra: str, cid: str = CID, verbose: str = "") -> ProcessRun:
        argv = [self.tools["ssh"], *self.ssh_options(key, *extra), "-p", str(self.ssh_port)]
        if verbose:
            argv.append(verbose)
        return await self.run_tool([*argv, f"{self.user(cid)}@127.0.0.1", command])

    def assertWorked(self, done: ProcessRun, what: str) -> None:
        self.assertEqual(done.exit_code, 0, f"{what}: {bytes(done.err)!r}\n{self.gateway.log_text()[-3000:]}")

    # Every tool, every key type.

    async def every_tool(self, key: str, *options: str) -> None:
        """ssh, scp both ways, sftp, rsync and git clone, each logging in with C{key} (and ssh C{options})."""
        work, remote = self.work, f"{self.user()}@127.0.0.1"
        logins = self.gateway.log_text().count("ssh: login accepted from 127.0.0.1:")
        done = await self.ssh(key, "echo hi", *options)
        self.assertWorked(done, "ssh")
        self.assertEqual(bytes(done.out), b"hi\n")

        payload = os.urandom(256 * 1024)
        (work / "payload").write_bytes(payload)
        scp = [self.tools["scp"], *self.ssh_options(key, *options), "-P", str(self.ssh_port)]
        for name in ("scp-up", "scp-down", "sftp-up", "rsynced", "tree", "clone", "repository"):
            shutil.rmtree(work / name, ignore_errors=True) if (work / name).is_dir() else (work / name).unlink(True)
        self.assertWorked(await self.run_tool([*scp, str(work / "payload"), f"{remote}:{work / 'scp-up'}"]), "scp up")
        self.assertWorked(await self.run_tool([*scp, f"{remote}:{work / 'scp-up'}", str(work / "scp-down")]), "scp down")
        self.assertEqual((work / "scp-down").read_bytes(), payload)

        (work / "batch").write_text(f"put {work / 'payload'} {work / 'sftp-up'}\nls {work}\n")
        sftp = [self.tools["sftp"], *self.ssh_options(key, *options), "-P", str(self.ssh_port), "-b", str(work / "batch")]
        done = await self.run_tool([*sftp, remote])
        self.assertWorked(done, "sftp")
        self.assertEqual((work / "sftp-up").read_bytes(), payload)

        (work / "tree" / "sub").mkdir(parents=True)
        (work / "tree" / "sub" / "file").write_bytes(payload)
        ssh_command = shlex.join([self.tools["ssh"], *self.ssh_options(key, *options), "-p", str(self.ssh_port)])
        done = await self.run_tool([self.tools["rsync"], "-a", "-e", ssh_command, f"{work / 'tree'}/",
                               f"{remote}:{work / 'rsynced'}/"])
        self.assertWorked(done, "rsync")
        self.assertEqual((work / "rsynced" / "sub" / "file").read_bytes(), payload)

        repository = await self.git_repository()
        env = {**os.environ, "GIT_SSH_COMMAND": ssh_command}
        done = await self.run_tool([self.tools["git"], "clone", "-q",
                               f"ssh://{remote}:{self.ssh_port}{repository}", str(work / "clone")], env=env)
        self.assertWorked(done, "git clone")
        self.assertEqual((work / "clone" / "README").read_text(), "in the container\n")

        log = self.gateway.log_text()
        self.assertEqual(log.count("ssh: login accepted from 127.0.0.1:") - logins, 6, log[-3000:])

    async def git_repository(self) -> Path:
        """A repository with one commit, in the container's filesystem (this machine's)."""
        repository = self.work / "repository"
        repository.mkdir()
        (repository / "README").write_text("in the container\n")
        git = self.tools["git"]
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        for argv in (["init", "-q"], ["add", "README"], ["commit", "-q", "-m", "first"]):
            done = await run_process([git, "-C", str(repository), *argv], timeout=60, env=env).result()
            self.assertEqual(done.exit_code, 0, bytes(done.err))
        return repository

    async def test_rsa_3072(self) -> None:
        await self.start()
        await self.every_tool("rsa")

    async def test_ecdsa_p256(self) -> None:
        await self.start()
        await self.every_tool("ecdsa-p256")

    async def test_ecdsa_p384(self) -> None:
        await self.start()
        await self.every_tool("ecdsa-p384")

    async def test_ecdsa_p521(self) -> None:
        await self.start()
        await self.every_tool("ecdsa-p521")

    async def test_ed25519(self) -> None:
        await self.start()
        await self.every_tool("ed25519")

    # Every cipher on both sides, with every key type.

    async def test_every_cipher_with_every_key_type(self) -> None:
        """
        For each cipher, the container's sshd offers it alone and the user's
        ssh asks for it alone (C{-c}): a login with each key type, then every
        tool with one of them (a different one for each cipher).
        """
        await self.start()
        kinds = list(KEY_TYPES)
        for n, cipher in enumerate(name.decode() for name in algorithms.CIPHERS):
            await self.sshd.stop()
            await self.sshd.start(SFTP, f"Ciphers {cipher}")
            for kind in kinds:
                done = await self.ssh(kind, "echo $SSH_CONNECTION", f"Ciphers={cipher}", verbose="-v")
                self.assertWorked(done, f"{kind} with {cipher}")
                self.assertIn(f"kex: server->client cipher: {cipher} ".encode(), bytes(done.err))
            # sshd offers nothing else: the gateway's side agreed it too.
            await self.every_tool(kinds[n % len(kinds)], f"Ciphers={cipher}")

    # RSA signature algorithms.

    async def test_rsa_with_each_sha2_signature(self) -> None:
        await self.start()
        for algorithm in ("rsa-sha2-256", "rsa-sha2-512"):
            done = await self.ssh("rsa", "echo sha2", f"PubkeyAcceptedAlgorithms={algorithm}")
            self.assertWorked(done, algorithm)
            self.assertEqual(bytes(done.out), b"sha2\n")
            self.assertIn(f"container {CID} key {algorithm} SHA256:", self.gateway.log_text())

    async def test_sha1_rsa_is_refused_by_default(self) -> None:
        await self.start()
        done = await self.ssh("rsa", "true", "PubkeyAcceptedAlgorithms=ssh-rsa")
        self.assertEqual(done.exit_code, 255)
        self.assertIn(b"Permission denied (publickey)", bytes(done.err))
        self.assertNotIn("--ssh-allow-sha1-rsa", self.gateway.log_text())

    async def test_sha1_rsa_with_the_option(self) -> None:
        await self.start("--ssh-allow-sha1-rsa")
        self.assertIn("--ssh-allow-sha1-rsa: SHA-1 ssh-rsa signatures are accepted", self.gateway.log_text())
        done = await self.ssh("rsa", "echo sha1", "PubkeyAcceptedAlgorithms=ssh-rsa", verbose="-v")
        self.assertWorked(done, "ssh-rsa")
        self.assertIn(f"server-sig-algs=<{SERVER_SIG_ALGS},ssh-rsa>".encode(), bytes(done.err))
        self.assertIn(f"container {CID} key ssh-rsa SHA256:", self.gateway.log_text())

    # What the client is told about the server.

    async def test_server_sig_algs_and_banner(self) -> None:
        await self.start()
        done = await self.ssh("ed25519", "true", verbose="-v")
        self.assertWorked(done, "ssh -v")
        err = bytes(done.err)
        self.assertIn(f"kex_input_ext_info: server-sig-algs=<{SERVER_SIG_ALGS}>".encode(), err)
        self.assertRegex(err.decode("utf-8", "replace"), r"(?m)remote software version edd_gateway\r?$")

    async def test_rsa_host_key_algorithms(self) -> None:
        await self.start("--ssh-rsa-host-key", str(self.work / "host_rsa"))
        done = await self.ssh("ed25519", "true", verbose="-vv")
        self.assertWorked(done, "ssh -vv")
        offered = re.findall(rb"debug2: host key algorithms: (\S+)", bytes(done.err))
        # Ours first, then the server's proposal.
        self.assertEqual(offered[-1], b"ssh-ed25519,rsa-sha2-512,rsa-sha2-256")
        sha1 = await self.ssh("ed25519", "true", "HostKeyAlgorithms=ssh-rsa", verbose="-v")
        self.assertEqual(sha1.exit_code, 255)
        self.assertIn(b"no matching host key type found", bytes(sha1.err))
        for algorithm in ("rsa-sha2-512", "rsa-sha2-256"):
            done = await self.ssh("ed25519", "true", f"HostKeyAlgorithms={algorithm}")
            self.assertWorked(done, algorithm)

    async def test_rsa_host_key_signs_with_sha1_only_with_the_option(self) -> None:
        await self.start("--ssh-rsa-host-key", str(self.work / "host_rsa"), "--ssh-allow-sha1-rsa")
        done = await self.ssh("ed25519", "true", "HostKeyAlgorithms=ssh-rsa")
        self.assertWorked(done, "ssh-rsa host key")

    # Which containers exist is not told.

    async def test_unknown_stopped_and_another_key_look_the_same(self) -> None:
        await self.start()
        # The gateway's host key in known_hosts first, so that every run below reads the same file.
        self.assertWorked(await self.ssh("ed25519", "true"), "ssh")
        seen = {}
        for cid in (UNKNOWN, STOPPED, CID):
            done = await self.ssh("mallory", "true", cid=cid, verbose="-v")
            self.assertEqual(done.exit_code, 255)
            seen[cid] = self.comparable(bytes(done.err), cid)
        self.assertIn(b"Permission denied (publickey)", seen[CID])
        self.assertIn(b"Server accepts key", seen[CID], "the query is answered yes, whatever the container")
        self.assertEqual(seen[UNKNOWN], seen[STOPPED])
        self.assertEqual(seen[UNKNOWN], seen[CID])
        log = self.gateway.log_text()
        for why in (f"container {UNKNOWN} not found",
                    f"the key is not one of the container owner's keys (container {STOPPED} is stopped)",
                    "the key is not one of the container owner's keys\n"):
            self.assertRegex(log, rf"ssh: login refused from 127\.0\.0\.1:\d+ user .* key ssh-ed25519 SHA256:\S+: "
                                  rf"{re.escape(why)}")
        # The owner is told.
        owner = await self.ssh("ed25519", "true", cid=STOPPED)
        self.assertIn(f"container {STOPPED} is stopped".encode(), bytes(owner.err))

    def comparable(self, err: bytes, cid: str) -> bytes:
        """What C{ssh -v} printed, without the name asked for, timings or the client's port."""
        lines = []
        for line in err.replace(self.user(cid).encode(), b"USER").splitlines():
            if re.search(rb"Bytes per second|Transferred", line):
                continue
            lines.append(line)
        return b"\n".join(lines)
