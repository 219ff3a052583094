"""
What the gateway's SSH transport relies on in Conch's: the internals that
L{edd_gateway.ssh.transport_crypto} and L{edd_gateway.ssh.client_crypto}
override or read, listed here and checked when the transport is imported
(L{check_conch}: an C{ImportError} naming what is missing, never a quiet
fallback to Conch's own framing or algorithms): a Conch that changed one
of them fails the gateway's start, not a user's connection.

 - C{SSHTransportBase.dataReceived} appends to C{self.buf} and takes packets
   with C{self.getPacket()} until it returns None, dispatching each with
   C{self.dispatchMessage(type, payload)}; C{sendPacket(type, payload)} is
   the only way packets are written.  Both are overridden by the seam, keeping
   C{outgoingPacketSequence} and C{incomingPacketSequence} (incremented per
   packet, the incoming one before dispatch) and the queueing of non-kex
   messages during a key exchange (C{_keyExchangeState},
   C{_KEY_EXCHANGE_NONE}, C{_allowedKeyExchangeMessageType},
   C{_blockedByKeyExchange}).
 - C{ssh_KEXINIT} negotiates with C{ffs} over C{supportedKeyExchanges},
   C{supportedPublicKeys}, C{supportedCiphers}, C{supportedMACs} and
   C{supportedCompressions}, sets C{kexAlg} and C{keyAlg}, and leaves the
   chosen names in C{nextEncryptions}, a C{transport.SSHCiphers} with
   C{outCipType}, C{inCipType}, C{outMACType}, C{inMACType}; the seam
   then replaces it with a L{edd_gateway.ssh.keyset.KeySet} of the
   same names.
   C{SSHClientTransport.ssh_KEXINIT} is C{SSHTransportBase.ssh_KEXINIT}
   followed by the first key exchange packet (called directly for ML-KEM).
 - C{sendKexInit} joins C{self.supportedKeyExchanges} into the KEXINIT it
   sends (the strict kex marker is added for the first one only).
 - C{_keySetup(sharedSecret, exchangeHash)} derives the keys with
   C{_getKey}, calls C{nextEncryptions.setKeys(outIV, outKey, inIV, inKey,
   outInteg, inInteg)} and sends NEWKEYS; C{_newKeys()} moves
   C{nextEncryptions} to C{currentEncryptions}; the client's C{ssh_NEWKEYS}
   waits (C{_gotNewKeys}) while C{nextEncryptions.encBlockSize} is 0.
   C{isEncrypted} reads C{currentEncryptions.inCipType}.  The client's
   C{ssh_NEWKEYS} is replaced (Conch's calls C{connectionSecure} again at
   every rekey and never clears C{_gotNewKeys}); C{_keySetup} calls it
   while C{_gotNewKeys} is set.
 - The server's ML-KEM reply: C{ssh_KEX_DH_GEX_REQUEST_OLD} hands
   C{mlkem768x25519-sha256} to C{_ssh_KEX_HYBRID_INIT}; the client gets the
   reply (message 31) in C{ssh_KEX_DH_GEX_GROUP}, and checks host keys with
   C{verifyHostKey(blob, fingerprint)}; C{ourVersionString},
   C{otherVersionString}, C{ourKexInitPayload}, C{otherKexInitPayload}
   feed the exchange hash; C{kexAlg}, C{keyAlg}; C{_kex.isPQHybrid}.
 - C{sendUnimplemented} is replaced (Conch names the packet after the one
   not understood); C{sendDisconnect(reason, description)} is called.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.conch.ssh import _kex
from twisted.conch.ssh import transport as _conch


def check_conch() -> None:
    """Fail the import, naming what is missing, when Conch lacks an internal the seam relies on."""
    base, server, client = _conch.SSHTransportBase, _conch.SSHServerTransport, _conch.SSHClientTransport
    wanted: dict[Any, tuple[str, ...]] = {
        base: ("dataReceived", "getPacket", "sendPacket", "dispatchMessage", "ssh_KEXINIT", "sendKexInit",
               "_keySetup", "_newKeys", "_getKey", "_allowedKeyExchangeMessageType", "sendDisconnect",
               "sendUnimplemented", "isEncrypted", "buf", "outgoingPacketSequence", "incomingPacketSequence",
               "_keyExchangeState", "_KEY_EXCHANGE_NONE", "_blockedByKeyExchange", "supportedCiphers",
               "supportedMACs", "supportedKeyExchanges", "supportedPublicKeys", "supportedCompressions",
               "sessionID", "ourVersionString", "kexAlg", "_EXT_INFO_C", "_EXT_INFO_S"),
        server: ("ssh_KEX_DH_GEX_REQUEST_OLD", "_ssh_KEX_HYBRID_INIT", "ssh_NEWKEYS", "_keySetup"),
        client: ("ssh_KEX_DH_GEX_GROUP", "ssh_NEWKEYS", "verifyHostKey", "connectionSecure", "_keySetup",
                 "ssh_KEXINIT"),
        _conch: ("SSHCiphers", "DISCONNECT_KEY_EXCHANGE_FAILED", "DISCONNECT_PROTOCOL_ERROR",
                 "DISCONNECT_HOST_KEY_NOT_VERIFIABLE", "MSG_KEXINIT", "MSG_NEWKEYS"),
        _kex: ("isPQHybrid", "getHashProcessor"),
    }
    missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, names in wanted.items()
               for name in names if not hasattr(owner, name)]
    if not missing:
        ciphers = _conch.SSHCiphers(b"a", b"b", b"c", b"d")
        missing += [f"SSHCiphers().{name}" for name in ("outCipType", "inCipType", "outMACType", "inMACType")
                    if not hasattr(ciphers, name)]
        setkeys = list(inspect.signature(_conch.SSHCiphers.setKeys).parameters)
        if setkeys != ["self", "outIV", "outKey", "inIV", "inKey", "outInteg", "inInteg"]:
            missing.append(f"SSHCiphers.setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg), not {setkeys}")
        if (_conch.MSG_KEXINIT, _conch.MSG_NEWKEYS) != (20, 21):  # the seam's MSG_KEXINIT, MSG_NEWKEYS
            missing.append("MSG_KEXINIT = 20, MSG_NEWKEYS = 21")
        missing += _check_sources()
    if missing:
        raise ImportError("edd_gateway.ssh.transport_crypto: this Conch (Twisted) lacks internals the gateway's "
                          "SSH transport relies on: " + "; ".join(missing))


def _check_sources() -> list[str]:
    """Where Conch's source is installed, the calls the seam's overrides stand in for."""
    expected: list[tuple[Any, str]] = [
        (_conch.SSHTransportBase.dataReceived, "self.getPacket()"),
        (_conch.SSHTransportBase.dataReceived, "self.dispatchMessage("),
        (_conch.SSHTransportBase._keySetup, "self.nextEncryptions.setKeys("),
        (_conch.SSHTransportBase._newKeys, "self.currentEncryptions = self.nextEncryptions"),
        (_conch.SSHTransportBase.sendKexInit, "self.supportedKeyExchanges"),
        (_conch.SSHTransportBase.ssh_KEXINIT, "self.nextEncryptions = SSHCiphers("),
        (_conch.SSHServerTransport.ssh_KEX_DH_GEX_REQUEST_OLD, "self._ssh_KEX_HYBRID_INIT("),
        (_conch.SSHClientTransport.ssh_NEWKEYS, "self.nextEncryptions.encBlockSize"),
        (_conch.SSHClientTransport.ssh_KEXINIT, "SSHTransportBase.ssh_KEXINIT(self, packet)"),
    ]
    problems = []
    for function, text in expected:
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            return []  # no source installed (byte code only): the attribute checks stand alone
        if text not in source:
            problems.append(f"{function.__qualname__} no longer does {text!r}")
    return problems


__all__ = ["check_conch"]
