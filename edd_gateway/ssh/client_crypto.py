"""
The gateway's client side of the transport seam (containers' side):
L{ClientTransportCrypto}, placed before Conch's C{SSHClientTransport} in
L{edd_gateway.ssh.upstream_protocol.UpstreamTransport}, adds to
L{edd_gateway.ssh.transport_crypto.TransportCrypto} what Conch's client
lacks or gets wrong:

 - the client side of C{mlkem768x25519-sha256} (Conch has the server's):
   the first packet (C{C_INIT}), the reply's shared secret and exchange hash
   as draft-ietf-sshm-mlkem-hybrid-kex has them (L{hybrid_shared_secret},
   L{hybrid_exchange_hash});
 - a host key of the negotiated type signed with the negotiated signature
   algorithm (Conch takes any: an C{ssh-rsa} SHA-1 signature where
   C{rsa-sha2-512} was agreed);
 - NEWKEYS switching keys once per key exchange and asking for
   ssh-userauth once per connection (Conch's client does both at every
   rekey).
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from twisted.conch.ssh import _kex
from twisted.conch.ssh import transport as _conch
from twisted.conch.ssh.common import NS, getNS
from twisted.logger import Logger

from edd_gateway.ssh import algorithms
from edd_gateway.ssh.transport_crypto import MSG_KEX_INIT, MSG_KEX_REPLY, TransportCrypto, first_match

_log = Logger()

_MLKEM768_PUBLIC = 1184
_MLKEM768_CIPHERTEXT = 1088
_X25519_PUBLIC = 32


def _host_key_type(algorithm: bytes) -> bytes:
    """The key blob type a host key algorithm signs with (RFC 8332: rsa-sha2-* use ssh-rsa keys)."""
    return b"ssh-rsa" if algorithm.startswith(b"rsa-sha2-") else algorithm


class ClientTransportCrypto(TransportCrypto):
    """For the gateway's client transport (containers' side), before Conch's C{SSHClientTransport}."""

    _ourStrictMarker = algorithms.STRICT_KEX_CLIENT
    _peerStrictMarker = algorithms.STRICT_KEX_SERVER
    _kexMessageIn = MSG_KEX_REPLY
    supportedPublicKeys = list(algorithms.CONTAINER_HOST_KEYS)

    _mlkemPrivate: Any = None
    _x25519Private: Any = None
    _clientInit = b""
    _kexReplied = False
    _secured = False
    _gotNewKeys = 0

    def _keysReady(self) -> bool:
        # The server's NEWKEYS may come while the host key is checked, but
        # never before its key exchange reply.
        return self._kexReplied

    def algorithmsRefused(self, description: str) -> None:
        _log.warn("ssh: refused the sshd at {peer}: {reason}", peer=self._peerName(), reason=description)

    def _negotiate(self, packet: bytes) -> None:
        kex = first_match(self.supportedKeyExchanges,
                           [name for name in getNS(packet[16:])[0].split(b",") if name not in algorithms.MARKERS])
        if kex is None or not _kex.isPQHybrid(kex):
            super()._negotiate(packet)
            return
        # Conch's client would ask for a DH group here; the hybrid's first
        # packet instead (draft-ietf-sshm-mlkem-hybrid-kex, 2.1).
        if _conch.SSHTransportBase.ssh_KEXINIT(self, packet) is None:  # type: ignore[arg-type]  # Conch's
            return
        self._mlkemPrivate = mlkem.MLKEM768PrivateKey.generate()
        self._x25519Private = x25519.X25519PrivateKey.generate()
        self._clientInit = (self._mlkemPrivate.public_key().public_bytes_raw()
                            + self._x25519Private.public_key().public_bytes(serialization.Encoding.Raw,
                                                                              serialization.PublicFormat.Raw))
        self.sendPacket(MSG_KEX_INIT, NS(self._clientInit))

    def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> Any:
        # Every method here answers with the host key, the server's share
        # and the signature (RFC 5656, 4; the hybrid draft, 2.2).
        try:
            host_key, _, signature, _ = getNS(packet, 3)
            key_type, signature_type = getNS(host_key)[0], getNS(signature)[0]
        except struct.error:
            self._protocolError("malformed key exchange reply")
            return None
        self._kexReplied = True
        key_alg: bytes = self.keyAlg  # type: ignore[attr-defined]  # Conch's
        if key_type != _host_key_type(key_alg) or signature_type != key_alg:
            self._refuseHostKey(f"the host key is {key_type.decode('ascii', 'replace')} signed with "
                                f"{signature_type.decode('ascii', 'replace')}, not the agreed "
                                f"{key_alg.decode('ascii', 'replace')}")
            return None
        if _kex.isPQHybrid(self.kexAlg):  # type: ignore[attr-defined]  # Conch's
            return self._hybridReply(packet)
        return super().ssh_KEX_DH_GEX_GROUP(packet)  # type: ignore[misc]  # Conch's

    def _refuseHostKey(self, problem: str) -> None:
        _log.warn("ssh: refused the sshd at {peer}: {problem}", peer=self._peerName(), problem=problem)
        self._broken = True
        self.sendDisconnect(_conch.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, problem.encode())  # type: ignore[attr-defined]  # Conch's

    def _hybridReply(self, packet: bytes) -> Any:
        """
        SSH_MSG_KEX_HYBRID_REPLY: K_S, S_REPLY (the ML-KEM ciphertext, then
        the server's X25519 key), the signature of the exchange hash.
        """
        host_key, reply, signature, _ = getNS(packet, 3)
        if len(reply) != _MLKEM768_CIPHERTEXT + _X25519_PUBLIC:
            self.sendDisconnect(_conch.DISCONNECT_KEY_EXCHANGE_FAILED,  # type: ignore[attr-defined]  # Conch's
                                b"invalid S_REPLY length")
            return None
        fingerprint = b":".join(binascii.hexlify(bytes((c,))) for c in hashlib.md5(host_key).digest())
        checked = self.verifyHostKey(host_key, fingerprint)  # type: ignore[attr-defined]  # Conch's
        checked.addCallback(lambda _: self._hybridFinish(host_key, reply, signature))
        checked.addErrback(lambda reason: self.sendDisconnect(  # type: ignore[attr-defined]  # Conch's
            _conch.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, f"bad host key [mlkem] {reason}".encode()))
        return checked

    def _hybridFinish(self, host_key: bytes, reply: bytes, signature: bytes) -> None:
        from twisted.conch.ssh.keys import Key

        secret = hybrid_shared_secret(self._mlkemPrivate, self._x25519Private, reply)
        self._mlkemPrivate = self._x25519Private = None
        if secret is None:
            self.sendDisconnect(_conch.DISCONNECT_KEY_EXCHANGE_FAILED,  # type: ignore[attr-defined]  # Conch's
                                b"invalid S_REPLY")
            return
        exchange_hash = hybrid_exchange_hash(
            self.ourVersionString, self.otherVersionString,  # type: ignore[attr-defined]  # Conch's
            self.ourKexInitPayload, self.otherKexInitPayload,  # type: ignore[attr-defined]  # Conch's
            host_key, self._clientInit, reply, secret)
        if not Key.fromString(host_key).verify(signature, exchange_hash):
            self.sendDisconnect(_conch.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad signature")  # type: ignore[attr-defined]  # Conch's
            return
        self._keySetup(secret, exchange_hash)

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        # Conch's client never clears _gotNewKeys (so a rekey switched keys
        # before the server's NEWKEYS came) and calls connectionSecure at
        # every NEWKEYS (so a rekey asked for ssh-userauth again).
        if packet != b"":
            self._protocolError("NEWKEYS takes no data")
            return
        if not self.nextEncryptions.encBlockSize:
            self._gotNewKeys = 1  # the keys wait on the host key check; _keySetup comes back here
            return
        self._gotNewKeys = 0
        self._newKeys()  # type: ignore[attr-defined]  # Conch's
        if not self._secured:
            self._secured = True
            self.connectionSecure()  # type: ignore[attr-defined]  # Conch's

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        super()._keySetup(sharedSecret, exchangeHash)  # type: ignore[misc]  # Conch's
        if self._incomingSwitch and self._unread():
            # The server's NEWKEYS came while the host key was being checked,
            # and packets under the new keys after it: read them now.
            self._drain()


def hybrid_shared_secret(mlkem_private: Any, x25519_private: Any, reply: bytes) -> bytes | None:
    """
    The client's K for C{mlkem768x25519-sha256}: SHA-256(K_PQ || K_CL) as
    an SSH string (not an mpint), from S_REPLY = ciphertext || X25519 key;
    None for a reply whose key or ciphertext is unusable.
    """
    ciphertext, server_public = reply[:_MLKEM768_CIPHERTEXT], reply[_MLKEM768_CIPHERTEXT:]
    try:
        k_pq = mlkem_private.decapsulate(ciphertext)
        k_cl = x25519_private.exchange(x25519.X25519PublicKey.from_public_bytes(server_public))
    except ValueError:
        return None
    return NS(hashlib.sha256(k_pq + k_cl).digest())


def hybrid_exchange_hash(client_version: bytes, server_version: bytes, client_kexinit: bytes,
                         server_kexinit: bytes, host_key: bytes, client_init: bytes, server_reply: bytes,
                         secret: bytes) -> bytes:
    """H = SHA-256(V_C || V_S || I_C || I_S || K_S || C_INIT || S_REPLY || K), K already a string."""
    h = hashlib.sha256()
    for part in (client_version, server_version, client_kexinit, server_kexinit, host_key, client_init,
                 server_reply):
        h.update(NS(part))
    h.update(secret)
    return h.digest()


__all__ = ["ClientTransportCrypto", "hybrid_exchange_hash", "hybrid_shared_secret"]
