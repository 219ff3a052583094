"""
Which public-key signature algorithms the gateway's SSH server accepts from
users' keys, and which it offers for its own host keys.

Users' keys are whatever the compute service accepts for upload: Ed25519,
ECDSA on P-256, P-384 and P-521, and RSA, whose signatures must be
C{rsa-sha2-256} or C{rsa-sha2-512} (RFC 8332); the SHA-1 C{ssh-rsa}
signature only when an operator allows it (C{--ssh-allow-sha1-rsa}).  The
same switch governs the host-key algorithms offered for an RSA host key.

L{SignaturePolicy.signature_algorithms} is what the server announces in the
C{server-sig-algs} extension (RFC 8308), whatever its host keys are: Conch
announces the host-key algorithms there, and OpenSSH 8.8+ then finds "no
mutual signature algorithm" for an RSA key next to an Ed25519 host key.
L{SignaturePolicy.refusal} is the check the key checker makes before any
other: a pure function of the key, the algorithm the request names and its
signature, so its answer says nothing about containers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key

__all__ = ["ECDSA_ALGORITHMS", "RSA_SHA2_ALGORITHMS", "SHA1_RSA", "SignaturePolicy", "server_sig_algs"]

ED25519 = b"ssh-ed25519"
ECDSA_ALGORITHMS = (b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521")
RSA_SHA2_ALGORITHMS = (b"rsa-sha2-512", b"rsa-sha2-256")
#: RSA with SHA-1 (RFC 4253's original name, also the RSA key type's name).
SHA1_RSA = b"ssh-rsa"
#: OpenSSH's RequiredRSASize default (9.1+): shorter RSA keys are refused.
MIN_RSA_BITS = 1024


@dataclass(frozen=True, slots=True)
class SignaturePolicy:
    """
    @ivar allow_sha1_rsa: accept C{ssh-rsa} (RSA with SHA-1) signatures
        from users and offer it for an RSA host key (C{--ssh-allow-sha1-rsa}).
    """

    allow_sha1_rsa: bool = False

    @property
    def rsa_algorithms(self) -> tuple[bytes, ...]:
        """Signature algorithms accepted for an RSA key, strongest first."""
        return RSA_SHA2_ALGORITHMS + ((SHA1_RSA,) if self.allow_sha1_rsa else ())

    @property
    def signature_algorithms(self) -> tuple[bytes, ...]:
        """Every signature algorithm verified for a user's key: C{server-sig-algs}."""
        return (ED25519, *ECDSA_ALGORITHMS, *self.rsa_algorithms)

    def host_key_algorithms(self, host_keys: Iterable[Key]) -> list[bytes]:
        """The host-key algorithms offered for C{host_keys}, in their order."""
        offered: list[bytes] = []
        for key in host_keys:
            if key.type() == "RSA":
                offered += self.rsa_algorithms
            else:
                offered += key.supportedSignatureAlgorithms()
        return offered

    def refusal(self, key: Key, algorithm: bytes, signature: bytes | None) -> str | None:
        """
        Why a publickey request naming C{algorithm} for C{key} (with
        C{signature}, or None for a query) is refused whoever sends it, or
        None when the algorithm is one the gateway verifies for that key.

        Conch's L{Key.verify} takes the hash from the signature's own
        algorithm name, not from the request's: the two must be the same
        (RFC 4252, section 7), or an C{ssh-rsa} signature would pass under an
        C{rsa-sha2-256} request.
        """
        shown = algorithm.decode("ascii", "backslashreplace")
        kind = key.sshType()
        if kind not in (ED25519, *ECDSA_ALGORITHMS, SHA1_RSA):
            return f"{kind.decode('ascii', 'backslashreplace')} keys are not accepted"
        if kind == SHA1_RSA:
            if key.size() < MIN_RSA_BITS:
                return f"the RSA key has {key.size()} bits, fewer than {MIN_RSA_BITS}"
            if algorithm == SHA1_RSA and not self.allow_sha1_rsa:
                return ("the SHA-1 ssh-rsa signature algorithm is refused (the client offers no rsa-sha2-256 "
                        "or rsa-sha2-512; an operator can allow it with --ssh-allow-sha1-rsa)")
            if algorithm not in self.rsa_algorithms:
                return f"{shown} is not a signature algorithm accepted for RSA keys"
        elif algorithm != kind:
            return f"{shown} is not the signature algorithm of {kind.decode('ascii')} keys"
        if signature is not None:
            try:
                signed_with = getNS(signature)[0]
            except (IndexError, ValueError, struct.error):
                return "the signature could not be read"
            if signed_with != algorithm:
                return (f"the signature is {signed_with.decode('ascii', 'backslashreplace')} but the request "
                        f"names {shown}")
        return None


def server_sig_algs(extensions: list[tuple[bytes, bytes]], algorithms: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """C{extensions} (an EXT_INFO's pairs) with C{server-sig-algs} set to C{algorithms}."""
    value = b",".join(algorithms)
    return [(name, value if name == b"server-sig-algs" else data) for name, data in extensions]
