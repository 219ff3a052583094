"""
The SSH transport algorithms the gateway speaks, towards users and towards
containers alike: the default lists (strongest first), an operator's
narrowing of them for a site policy (C{--ssh-kex}, C{--ssh-ciphers},
C{--ssh-macs}: L{parse_algorithm_list}), and the words that say why a
peer's offer was refused (L{refusal}).

What is left out on purpose, and why, is in L{WEAK}: every name there is
refused when a peer offers it and when an operator asks for it.  The key
exchange pseudo-algorithms (C{ext-info-*}, C{kex-strict-*}) are markers,
never methods (L{MARKERS}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

#: The version line of both of the gateway's sides: the product without a
#: version (Conch's says Twisted's exact release).  RFC 4253, 4.2: the
#: software version is printable ASCII without spaces or '-', hence the
#: underscore.
VERSION_STRING = b"SSH-2.0-edd_gateway"
#: Key exchange methods, preferred first: the post-quantum hybrid of OpenSSH
#: 9.9, then curve25519 under both of its names.
KEX: tuple[bytes, ...] = (b"mlkem768x25519-sha256", b"curve25519-sha256", b"curve25519-sha256@libssh.org")
#: Ciphers, preferred first: the AEAD modes, then AES-CTR (with an EtM MAC).
CIPHERS: tuple[bytes, ...] = (
    b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com", b"aes128-gcm@openssh.com",
    b"aes256-ctr", b"aes192-ctr", b"aes128-ctr",
)
#: MACs (for the CTR ciphers; the AEAD ones carry their own), EtM first.
MACS: tuple[bytes, ...] = (
    b"hmac-sha2-512-etm@openssh.com", b"hmac-sha2-256-etm@openssh.com", b"hmac-sha2-512", b"hmac-sha2-256",
)
#: Host key algorithms accepted from containers' sshd.  Ed25519 first: it is
#: the key the gateway pins when a container has one (OpenSSH makes it
#: first, and it does not change with the signature algorithm).  No ECDSA:
#: every OpenSSH sshd has an Ed25519 key (``ssh-keygen -A``), and the NIST
#: curves are what ssh-audit fails; the host key pins the first login, so
#: it is the one place to be strict.  RSA stays for sshd built without
#: Ed25519 (some embedded ones), with SHA-2 signatures only.
CONTAINER_HOST_KEYS: tuple[bytes, ...] = (b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256")
COMPRESSIONS: tuple[bytes, ...] = (b"none",)

#: The strict key exchange markers (CVE-2023-48795, "Terrapin"): the server's
#: and the client's, each in the first KEXINIT's kex list only.
STRICT_KEX_SERVER = b"kex-strict-s-v00@openssh.com"
STRICT_KEX_CLIENT = b"kex-strict-c-v00@openssh.com"
#: Names in a kex list that are not key exchange methods (RFC 8308; strict kex).
MARKERS = frozenset({b"ext-info-c", b"ext-info-s", STRICT_KEX_SERVER, STRICT_KEX_CLIENT})

#: Each weak family: how to spot its names, and what a refusal says of it.
WEAK: tuple[tuple[str, str, str], ...] = (
    # (list, substring of the name, the refusal's words)
    ("kex", "-sha1", "SHA-1 key exchanges are refused"),
    ("kex", "ecdh-sha2-nistp", "NIST-curve ECDH is not offered"),
    ("kex", "diffie-hellman-", "finite-field Diffie-Hellman is not offered"),
    ("cipher", "-cbc", "CBC ciphers are refused"),
    ("cipher", "rijndael-cbc", "CBC ciphers are refused"),
    ("cipher", "3des", "3DES is refused"),
    ("cipher", "arcfour", "RC4 (arcfour) is refused"),
    ("cipher", "blowfish", "Blowfish is refused"),
    ("cipher", "cast128", "CAST is refused"),
    ("cipher", "none", "unencrypted connections are refused"),
    ("mac", "sha1", "SHA-1 MACs are refused"),
    ("mac", "md5", "MD5 MACs are refused"),
    ("mac", "-96", "truncated MACs are refused"),
    ("mac", "ripemd", "RIPEMD MACs are refused"),
    ("mac", "none", "unauthenticated connections are refused"),
    ("host key", "ssh-dss", "DSA keys are refused"),
    ("host key", "ssh-rsa", "RSA with SHA-1 (ssh-rsa) is refused"),
    ("host key", "ecdsa-sha2-nistp", "NIST-curve (ECDSA) host keys are not used"),
)

#: What each list is called in a refusal, and the option that narrows it.
WHAT = {"kex": "key exchange method", "host key": "host key algorithm", "cipher": "cipher", "mac": "MAC",
        "compression": "compression"}
OPTIONS = {"kex": "--ssh-kex", "cipher": "--ssh-ciphers", "mac": "--ssh-macs"}
DEFAULTS = {"kex": KEX, "cipher": CIPHERS, "mac": MACS}


def _names(text: bytes) -> str:
    return text.decode("ascii", "replace")


def weakness(kind: str, name: bytes) -> str | None:
    """Why C{name} (in the C{kind} list) is refused, or None when it is not a weak name."""
    text = _names(name).lower()
    for family, mark, words in WEAK:
        if family == kind and (mark in text if mark != "none" else text == "none"):
            return words
    return None


def refusal(kind: str, ours: Iterable[bytes], theirs: Iterable[bytes]) -> str:
    """
    What a disconnect says when a peer's C{kind} list and ours have nothing
    in common: C{no common cipher: the gateway offers a,b,c; CBC ciphers
    are refused} (the last part for each weak family the peer offered).
    """
    reasons: list[str] = []
    for name in theirs:
        words = weakness(kind, name)
        if words is not None and words not in reasons:
            reasons.append(words)
    text = f"no common {WHAT[kind]}: the gateway offers {','.join(_names(n) for n in ours)}"
    return "; ".join([text, *reasons])


@dataclass(frozen=True, slots=True)
class Algorithms:
    """
    The key exchange methods, ciphers and MACs one side offers, preferred
    first: the defaults, or a site policy's subset of them.
    """

    kex: tuple[bytes, ...] = KEX
    ciphers: tuple[bytes, ...] = CIPHERS
    macs: tuple[bytes, ...] = MACS


def parse_algorithm_list(kind: str, text: str) -> tuple[bytes, ...]:
    """
    A C{--ssh-kex}, C{--ssh-ciphers} or C{--ssh-macs} value (C{kind}:
    C{kex}, C{cipher}, C{mac}): comma-separated names, each one of the
    defaults, kept in the order given.  ValueError naming the option, the
    name and the choices otherwise.
    """
    option, defaults = OPTIONS[kind], DEFAULTS[kind]
    choices = ", ".join(_names(name) for name in defaults)
    names = [part.strip() for part in text.split(",")]
    if not any(names) or not all(names):
        raise ValueError(f"{option}: an empty name in {text!r}; choose from {choices}")
    chosen: list[bytes] = []
    for name in names:
        encoded = name.encode("ascii", "replace")
        if encoded in chosen:
            raise ValueError(f"{option}: {name} is named twice")
        if encoded not in defaults:
            why = weakness(kind, encoded)
            what = f"{name} is refused ({why})" if why else f"{name} is not supported"
            raise ValueError(f"{option}: {what}; choose from {choices}")
        chosen.append(encoded)
    return tuple(chosen)


__all__ = [
    "Algorithms", "CIPHERS", "COMPRESSIONS", "CONTAINER_HOST_KEYS", "KEX", "MACS", "MARKERS", "STRICT_KEX_CLIENT",
    "STRICT_KEX_SERVER", "parse_algorithm_list", "refusal", "weakness",
]
