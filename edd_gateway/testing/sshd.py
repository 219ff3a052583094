"""
A throwaway OpenSSH C{sshd} for end-to-end tests: finding the binary (it is
often outside C{PATH}, in C{/usr/sbin}), its privilege separation directory,
and user keys written as C{ssh-keygen} writes them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import integration_required, require_tool

__all__ = ["find_sshd", "privilege_separation_directory_ready", "write_user_key"]


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
