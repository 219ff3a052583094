"""
A throwaway OpenSSH C{sshd} for end-to-end tests, standing in for a
container's: L{ThrowawaySSHD}, on 127.0.0.1, with its own host key, trusting
the keys the test names (the gateway's client key), run as the test's user,
logging to its stderr and stopped at the test's cleanup.  Below it: finding
the binary (it is often outside C{PATH}, in C{/usr/sbin}), its privilege
separation directory, and user keys written as C{ssh-keygen} writes them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .tools import ProcessRun, free_port, integration_required, poll_until, require_tool, run_process

__all__ = ["SFTP", "ThrowawaySSHD", "find_sshd", "privilege_separation_directory_ready", "write_user_key"]

#: The configuration line that serves sftp (and scp, which runs over it).
SFTP = "Subsystem sftp internal-sftp"


def write_user_key(path: Path) -> str:
    """A new Ed25519 key in OpenSSH files, as ssh-keygen would; its public line."""
    private = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " " + path.name
    Path(str(path) + ".pub").write_text(line + "\n")
    return line


def find_sshd() -> str:
    found = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
    return found or require_tool("sshd")


def privilege_separation_directory_ready() -> None:
    """sshd refuses to start without its (compiled-in) privilege separation directory."""
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    except OSError as problem:
        from unittest import SkipTest

        if integration_required():
            raise AssertionError(f"cannot create /run/sshd for sshd: {problem}") from None
        raise SkipTest(f"cannot create /run/sshd for sshd: {problem}") from None


class ThrowawaySSHD:
    """
    The sshd of C{test} on 127.0.0.1:C{port}, in the folder C{work}: its
    host key is C{host_key} (made at once, so that a test can read it or
    hand it to another server), it lets in the keys of C{authorized_keys}
    (L{trust}) by public key only, and each L{start} writes C{sshd_config}
    anew, so a test can restart it with other algorithms or another host
    key.  Its log is the running process's stderr (L{err}).  Every sshd
    started is stopped at the test's cleanup, and killed at its timeout.
    """

    def __init__(self, test: Any, work: Path, *, port: int | None = None) -> None:
        self.binary = find_sshd()
        privilege_separation_directory_ready()
        self.test = test
        self.work = work
        self.port = free_port() if port is None else port
        self.host_key = work / "sshd_host_key"
        if not self.host_key.exists():
            write_user_key(self.host_key)
        self.authorized_keys = work / "authorized_keys"
        self.process: ProcessRun | None = None

    def trust(self, public_key: Path) -> None:
        """Let in the key whose public line C{public_key} holds (a C{.pub} file), and no other."""
        self.authorized_keys.write_text(public_key.read_text())

    def config(self, *extra: str, host_key: Path, log_level: str) -> str:
        """The configuration: loopback, C{host_key}, keys only, as the test's user, then C{extra} lines."""
        return "\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys}", "StrictModes no", "UsePAM no",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PrintMotd no", f"LogLevel {log_level}", *extra, "",
        ])

    async def start(self, *extra: str, host_key: Path | None = None, log_level: str = "VERBOSE") -> ProcessRun:
        """
        sshd with C{extra} configuration lines (its algorithms, L{SFTP}),
        once it listens; the one running, if any, is stopped first.
        C{host_key} (made when missing) replaces the usual one.
        """
        await self.stop()
        host_key = self.host_key if host_key is None else host_key
        if not host_key.exists():
            write_user_key(host_key)
        config = self.work / "sshd_config"
        config.write_text(self.config(*extra, host_key=host_key, log_level=log_level))
        run = self.process = run_process([self.binary, "-D", "-e", "-f", str(config)], timeout=self.test.timeout)
        self.test.addCleanup(run.stop)
        await poll_until(lambda: b"Server listening" in run.err or run.exit_code is not None, "sshd to listen")
        if run.exit_code is not None:
            raise AssertionError(f"sshd did not start: {bytes(run.err)!r}")
        return run

    async def stop(self) -> None:
        """Stop the running sshd, if any (its log stays readable in L{err})."""
        if self.process is not None:
            await self.process.stop()

    @property
    def err(self) -> bytearray:
        """What the last sshd started logged."""
        return self.process.err if self.process is not None else bytearray()

