"""
The gateway's own SSH keys, kept in files: its host keys (what users' clients
remember in known_hosts, so they must survive restarts and be shared by
replicas mounting the same secret) and its client key (whose public half the
compute service installs in every container).

L{load_or_create_key} reads a private key file, or generates the key when the
file is missing (mode 0600, created atomically so that two replicas starting
together on a shared volume end up with the same key).  Ed25519 is the
default; RSA is available for clients that predate Ed25519 (PuTTY before
0.68, JSch 0.1.x).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key
from twisted.logger import Logger

_log = Logger()

RSA_BITS = 3072
_GENERATORS: dict[str, Callable[[], object]] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS),
}


class KeyFileError(Exception):
    """A key file exists but cannot be used (unreadable, not a key, encrypted, public only)."""


def load_or_create_key(path: str, kind: str = "ed25519", *, comment: str = "edd-gateway",
                       write_public: bool = False) -> Key:
    """
    The private key in C{path}; when the file does not exist, a new C{kind}
    key (C{"ed25519"} or C{"rsa"}) is generated and saved there first.

    @param write_public: also write the public half to C{path + ".pub"} when
        the key is generated (the client key's, for the compute service).
    @raise KeyFileError: the file exists but holds no usable private key.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown key kind {kind!r}; use one of {sorted(_GENERATORS)}")
    if not os.path.exists(path):
        _create(path, kind)
        _log.info("ssh: generated a new {kind} key in {path}", kind=kind, path=path)
        key = _read(path)
        if write_public:
            _write_public(key, path + ".pub", comment)
        return key
    return _read(path)


def load_host_keys(path: str, rsa_path: str | None = None) -> list[Key]:
    """The gateway's host keys: Ed25519 from C{path}, and RSA from C{rsa_path} when given."""
    host_keys = [load_or_create_key(path, "ed25519")]
    if rsa_path is not None:
        host_keys.append(load_or_create_key(rsa_path, "rsa"))
    return host_keys


def public_text(key: Key, comment: str = "") -> str:
    """C{key}'s public half as one OpenSSH line (C{ssh-ed25519 AAAA... comment})."""
    return key.public().toString("openssh", comment=comment or None).decode("ascii")


def _read(path: str) -> Key:
    try:
        mode = os.stat(path).st_mode
        key = Key.fromFile(path)
    except EncryptedKeyError:
        raise KeyFileError(f"the SSH key {path} is encrypted; the gateway needs it without a passphrase") from None
    except (BadKeyError, ValueError) as problem:
        raise KeyFileError(f"{path} is not an SSH private key: {problem}") from None
    except OSError as problem:
        raise KeyFileError(f"cannot read the SSH key {path}: {problem.strerror or problem}") from None
    if key.isPublic():
        raise KeyFileError(f"{path} holds a public key; the gateway needs the private key")
    # Others, not the group: a Kubernetes secret volume gives a non-root
    # pod its files through the group (fsGroup, mode 0440).
    if stat.S_IMODE(mode) & 0o007:
        _log.warn("ssh: the private key {path} is readable by others (mode {mode:o}); make it 0600 or 0440",
                  path=path, mode=stat.S_IMODE(mode))
    return key


def _create(path: str, kind: str) -> None:
    private = _GENERATORS[kind]()
    pem = private.private_bytes(  # type: ignore[attr-defined]  # every generated key has it
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp creates the file 0600, so the key is never readable by others,
    # not even for a moment.
    descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        _publish(temporary, path, pem)
    finally:
        os.unlink(temporary)


def _publish(temporary: str, path: str, pem: bytes) -> None:
    """
    Give the complete file at C{temporary} the name C{path}, unless another
    process did first: a hard link fails when the name exists, so two
    replicas generating at once both end up loading the winner's key.
    """
    try:
        os.link(temporary, path)
    except FileExistsError:
        return
    except OSError as problem:
        if problem.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: exclusive creation keeps the
        # first-writer-wins rule (a reader may briefly see a partial file).
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)


def _write_public(key: Key, path: str, comment: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(public_text(key, comment) + "\n")
    except OSError as problem:
        _log.warn("ssh: cannot write the public key {path}: {problem}", path=path, problem=problem)


__all__ = ["KeyFileError", "RSA_BITS", "load_host_keys", "load_or_create_key", "public_text"]
