"""
From what a key exchange agreed to each direction's packet protection: the
cipher and MAC names the gateway speaks, mapped to the constructions of
L{edd_gateway.ssh.packet} and to what each takes from the key exchange's
keys (L{CIPHERS}, L{MACS}, L{outgoing}, L{incoming}), and L{KeySet}, the
object Conch keeps in C{nextEncryptions} and C{currentEncryptions} (put
there by L{edd_gateway.ssh.transport_crypto}).

This is the one place a negotiated name becomes a cipher: the algorithm
lists offered (L{edd_gateway.ssh.algorithms}) name nothing this table lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from edd_gateway.ssh.packet import (
    HMAC,
    AESGCMIn,
    AESGCMOut,
    ChaChaPolyIn,
    ChaChaPolyOut,
    CTRIn,
    CTROut,
    Incoming,
    Outgoing,
)


@dataclass(frozen=True, slots=True)
class CipherSpec:
    """What a cipher takes from the key exchange, and whether it authenticates packets itself."""

    key_size: int
    iv_size: int
    block: int
    aead: bool


CIPHERS: dict[bytes, CipherSpec] = {
    b"chacha20-poly1305@openssh.com": CipherSpec(64, 0, 8, True),
    b"aes256-gcm@openssh.com": CipherSpec(32, 12, 16, True),
    b"aes128-gcm@openssh.com": CipherSpec(16, 12, 16, True),
    b"aes256-ctr": CipherSpec(32, 16, 16, False),
    b"aes192-ctr": CipherSpec(24, 16, 16, False),
    b"aes128-ctr": CipherSpec(16, 16, 16, False),
}
#: MAC name: (hashlib name, encrypt-then-MAC).
MACS: dict[bytes, tuple[str, bool]] = {
    b"hmac-sha2-512-etm@openssh.com": ("sha512", True),
    b"hmac-sha2-256-etm@openssh.com": ("sha256", True),
    b"hmac-sha2-512": ("sha512", False),
    b"hmac-sha2-256": ("sha256", False),
}


def outgoing(cipher: bytes, mac: bytes, iv: bytes, key: bytes, integrity: bytes) -> Outgoing:
    """The sealing side for C{cipher} (and C{mac}, unless the cipher is AEAD) with the key exchange's keys."""
    spec = CIPHERS[cipher]
    key = key[:spec.key_size]
    if cipher.startswith(b"chacha20"):
        return ChaChaPolyOut(key)
    if spec.aead:
        return AESGCMOut(key, iv[:spec.iv_size])
    hash_name, etm = MACS[mac]
    return CTROut(key, iv[:spec.iv_size], HMAC(hash_name, integrity), etm)


def incoming(cipher: bytes, mac: bytes, iv: bytes, key: bytes, integrity: bytes) -> Incoming:
    """The opening side; see L{outgoing}."""
    spec = CIPHERS[cipher]
    key = key[:spec.key_size]
    if cipher.startswith(b"chacha20"):
        return ChaChaPolyIn(key)
    if spec.aead:
        return AESGCMIn(key, iv[:spec.iv_size])
    hash_name, etm = MACS[mac]
    return CTRIn(key, iv[:spec.iv_size], HMAC(hash_name, integrity), etm)


class KeySet:
    """
    What Conch's C{nextEncryptions} and C{currentEncryptions} hold here:
    the names a key exchange agreed, and once C{setKeys} has run, the two
    directions' packet protection.  The attributes are those of Conch's
    C{SSHCiphers} that Conch reads (C{encBlockSize} stays 0 until the keys
    are set: Conch's client waits on it).
    """

    def __init__(self, outCip: bytes, inCip: bytes, outMac: bytes, inMac: bytes) -> None:
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = outCip, inCip, outMac, inMac
        self.encBlockSize = 0
        self.decBlockSize = 0
        self.outgoing: Outgoing | None = None
        self.incoming: Incoming | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes,
                inInteg: bytes) -> None:
        self.outgoing = outgoing(self.outCipType, self.outMACType, outIV, outKey, outInteg)
        self.incoming = incoming(self.inCipType, self.inMACType, inIV, inKey, inInteg)
        self.encBlockSize = CIPHERS[self.outCipType].block
        self.decBlockSize = CIPHERS[self.inCipType].block


__all__ = ["CIPHERS", "MACS", "CipherSpec", "KeySet", "incoming", "outgoing"]
