"""
The seam between Conch's SSH transport and the gateway's own packet
protection (L{edd_gateway.ssh.packet}), key exchange additions and
strict key exchange: L{ServerTransportCrypto} and L{ClientTransportCrypto}
are mixins placed before Conch's C{SSHServerTransport} and
C{SSHClientTransport} in the gateway's transports (C{factory.py},
C{upstream.py}).

Conch 26.10 frames packets for AES-CTR/CBC with encrypt-and-MAC HMAC only,
has no strict key exchange (CVE-2023-48795, "Terrapin") and no client side
for C{mlkem768x25519-sha256}.  What this module adds:

 - packet framing for every cipher and MAC of L{edd_gateway.ssh.algorithms}
   (ChaCha20-Poly1305, AES-GCM, AES-CTR with EtM or E&M HMAC-SHA2), each
   direction switching keys right at its own NEWKEYS;
 - strict key exchange: C{kex-strict-s-v00@openssh.com} (server) or
   C{kex-strict-c-v00@openssh.com} (client) in the first KEXINIT; when both
   sides said so, KEXINIT must be the first packet received, nothing but the
   key exchange's own messages (and a DISCONNECT) may come before the first
   NEWKEYS, and each direction's sequence number restarts at 0 after each
   NEWKEYS;
 - whatever the peer says, nothing but a key exchange message may come
   before the first NEWKEYS (Conch would start ssh-userauth in the clear);
 - a refusal that names what the gateway offers when a peer's lists and
   ours have nothing in common (L{algorithms.refusal}), with a log line;
 - the client side of C{mlkem768x25519-sha256} (Conch has the server's),
   and on the client, a host key of the negotiated type signed with the
   negotiated signature algorithm (Conch takes any: an C{ssh-rsa} SHA-1
   signature where C{rsa-sha2-512} was agreed).

The Conch internals relied on, all checked when this module is imported
(L{_check_conch}: an C{ImportError} naming what is missing, never a quiet
fallback to Conch's own framing or algorithms):

 - C{SSHTransportBase.dataReceived} appends to C{self.buf} and takes packets
   with C{self.getPacket()} until it returns None, dispatching each with
   C{self.dispatchMessage(type, payload)}; C{sendPacket(type, payload)} is
   the only way packets are written.  Both are overridden here, keeping
   C{outgoingPacketSequence} and C{incomingPacketSequence} (incremented per
   packet, the incoming one before dispatch) and the queueing of non-kex
   messages during a key exchange (C{_keyExchangeState},
   C{_KEY_EXCHANGE_NONE}, C{_allowedKeyExchangeMessageType},
   C{_blockedByKeyExchange}).
 - C{ssh_KEXINIT} negotiates with C{ffs} over C{supportedKeyExchanges},
   C{supportedPublicKeys}, C{supportedCiphers}, C{supportedMACs} and
   C{supportedCompressions}, sets C{kexAlg} and C{keyAlg}, and leaves the
   chosen names in C{nextEncryptions}, a C{transport.SSHCiphers} with
   C{outCipType}, C{inCipType}, C{outMACType}, C{inMACType}; this module
   then replaces it with a L{KeySet} of the same names.
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

import binascii
import hashlib
import inspect
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from twisted.conch.ssh import _kex
from twisted.conch.ssh import transport as _conch
from twisted.conch.ssh.common import NS, getNS
from twisted.logger import Logger

from edd_gateway.net.addresses import describe_peer
from edd_gateway.ssh import algorithms, packet as _packet

_log = Logger()

MSG_DISCONNECT = 1
MSG_IGNORE = 2
MSG_UNIMPLEMENTED = 3
MSG_DEBUG = 4
MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_CHANNEL_DATA = 94
#: KEXDH_INIT / KEX_ECDH_INIT / KEX_HYBRID_INIT, and their replies: every
#: method the gateway speaks is one message each way (RFC 5656, 4).
MSG_KEX_INIT = 30
MSG_KEX_REPLY = 31
#: The messages allowed before the first NEWKEYS whatever the peer says
#: (RFC 4253, 7.1), besides the key exchange method's own (30-49).
_TRANSPORT_GENERIC = frozenset({MSG_DISCONNECT, MSG_IGNORE, MSG_UNIMPLEMENTED, MSG_DEBUG, MSG_KEXINIT, MSG_NEWKEYS})

_SEQ = 0xFFFFFFFF
_MLKEM768_PUBLIC = 1184
_MLKEM768_CIPHERTEXT = 1088
_X25519_PUBLIC = 32


def _check_conch() -> None:
    """Fail the import, naming what is missing, when Conch lacks an internal this module relies on."""
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
        if (_conch.MSG_KEXINIT, _conch.MSG_NEWKEYS) != (MSG_KEXINIT, MSG_NEWKEYS):
            missing.append("MSG_KEXINIT = 20, MSG_NEWKEYS = 21")
        missing += _check_sources()
    if missing:
        raise ImportError("edd_gateway.ssh.transport_crypto: this Conch (Twisted) lacks internals the gateway's "
                          "SSH transport relies on: " + "; ".join(missing))


def _check_sources() -> list[str]:
    """Where Conch's source is installed, the calls this module's overrides stand in for."""
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


_check_conch()


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
        self.outgoing: _packet.Outgoing | None = None
        self.incoming: _packet.Incoming | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes,
                inInteg: bytes) -> None:
        self.outgoing = _packet.outgoing(self.outCipType, self.outMACType, outIV, outKey, outInteg)
        self.incoming = _packet.incoming(self.inCipType, self.inMACType, inIV, inKey, inInteg)
        self.encBlockSize = _packet.CIPHERS[self.outCipType].block
        self.decBlockSize = _packet.CIPHERS[self.inCipType].block


def _first_match(client: list[bytes], server: list[bytes]) -> bytes | None:
    """RFC 4253, 7.1: the client's first choice that the server has."""
    return next((name for name in client if name in server), None)


def _host_key_type(algorithm: bytes) -> bytes:
    """The key blob type a host key algorithm signs with (RFC 8332: rsa-sha2-* use ssh-rsa keys)."""
    return b"ssh-rsa" if algorithm.startswith(b"rsa-sha2-") else algorithm


class TransportCrypto:
    """
    What the server and client mixins share: packet framing, strict key
    exchange, the refusal of peers with nothing in common.  Subclasses say
    which marker they send (C{_ourStrictMarker}) and look for
    (C{_peerStrictMarker}), and which key exchange message they receive.
    """

    supportedKeyExchanges = list(algorithms.KEX)
    supportedCiphers = list(algorithms.CIPHERS)
    supportedMACs = list(algorithms.MACS)
    supportedCompressions = list(algorithms.COMPRESSIONS)

    _ourStrictMarker: bytes
    _peerStrictMarker: bytes
    #: The key exchange message this side receives (KEX_*_INIT or _REPLY).
    _kexMessageIn: int

    #: Both sides said kex-strict in their first KEXINIT.
    strictKex = False
    #: Until the first NEWKEYS is received.
    _initialKex = True
    _kexInitsReceived = 0
    _outgoing: _packet.Outgoing | None = None
    _incoming: _packet.Incoming | None = None
    #: A NEWKEYS came in: the next packet is under the new keys.
    _incomingSwitch = False
    #: The sequence number of the packet being dispatched.
    _currentSequence = 0
    _broken = False
    _strictMarkerSent = False

    # Set by Conch (bytes; a bytearray here once the version is read, see dataReceived: typed bytes as
    # SSHTransportBase's is, so the uses of a bytearray carry an ignore).  The rest of SSHTransportBase
    # that the mixin uses is reached through the class it is mixed into: "# type: ignore[...]  # Conch's".
    buf: bytes
    transport: Any
    isClient: bool
    sessionID: bytes | None
    nextEncryptions: Any
    incomingPacketSequence: int
    outgoingPacketSequence: int
    supportedPublicKeys: list[bytes]

    def useAlgorithms(self, chosen: algorithms.Algorithms) -> None:
        """Offer C{chosen} (a site policy's subset of the defaults) on this connection."""
        self.supportedKeyExchanges = list(chosen.kex)
        self.supportedCiphers = list(chosen.ciphers)
        self.supportedMACs = list(chosen.macs)

    # Packets.

    def sendPacket(self, messageType: int, payload: bytes, tail: _packet.Buffer = b"") -> None:
        """Send message C{messageType} with C{payload} followed by C{tail} (channel data, unjoined)."""
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:  # type: ignore[attr-defined]  # Conch's
            if not self._allowedKeyExchangeMessageType(messageType):  # type: ignore[attr-defined]  # Conch's
                self._blockedByKeyExchange.append((messageType, payload + tail))  # type: ignore[attr-defined]  # Conch's
                return
        outgoing = self._outgoing
        if outgoing is None:
            outgoing = self._outgoing = _packet.Plain()
        sequence = self.outgoingPacketSequence
        self.transport.write(outgoing.seal(sequence, messageType, payload, tail))
        self.outgoingPacketSequence = (sequence + 1) & _SEQ
        if messageType == MSG_NEWKEYS:
            # Conch calls setKeys before it sends NEWKEYS (RFC 4253, 7.3:
            # what follows it goes under the new keys).
            self._outgoing = self.nextEncryptions.outgoing
            if self._outgoing is None:
                raise RuntimeError("NEWKEYS sent before the keys were set")
            if self.strictKex:
                self.outgoingPacketSequence = 0

    # Receiving.  Conch keeps the bytes received in C{self.buf}, appends with
    # C{buf + data} and cuts each packet off with C{buf[used:]}: two copies
    # of everything waiting, per read and per packet, then three more of
    # each message on its way to the channel.  Once the version exchange is
    # over, C{buf} is a bytearray read from C{_offset} on (packets are
    # opened in place and the consumed bytes dropped once per read), and
    # channel data reaches the connection as a view of the decrypted packet.

    _offset = 0

    def dataReceived(self, data: bytes) -> None:
        if not self.gotVersion or type(self.buf) is not bytearray:  # type: ignore[attr-defined, comparison-overlap]  # Conch's
            super().dataReceived(data)  # type: ignore[misc]  # the version, and what came with it
            return
        if self._broken:
            return  # disconnecting: nothing more is read
        self.buf += data
        self._drain()

    def getPacket(self) -> bytes | None:
        opened = self._nextPacket()
        if opened is None:
            return None
        data, start, stop = opened
        return data[start:stop]

    def _drain(self) -> None:
        """Dispatch the packets waiting in C{buf} (as Conch's C{dataReceived} does for new bytes)."""
        opened = self._nextPacket()
        while opened is not None:
            data, start, stop = opened
            kind = data[start]
            service = self.service  # type: ignore[attr-defined]  # Conch's
            if kind == MSG_CHANNEL_DATA and not self._initialKex and getattr(service, "takes_views", False):
                # What Conch's dispatch would do, minus the copies.
                service.ssh_CHANNEL_DATA(memoryview(data)[start + 1:stop])
            else:
                self.dispatchMessage(kind, data[start + 1:stop])
            opened = self._nextPacket()

    def _nextPacket(self) -> tuple[bytes, int, int] | None:
        """The next packet's plaintext and where its message lies in it, or None (the rest kept)."""
        if self._broken:
            return None
        if self._incomingSwitch:
            incoming = self.nextEncryptions.incoming
            if incoming is None:
                return None  # the client still checks the host key: wait for the keys
            self._incoming, self._incomingSwitch = incoming, False
        incoming = self._incoming
        if incoming is None:
            incoming = self._incoming = _packet.Plain()
        sequence = self.incomingPacketSequence
        try:
            opened = incoming.open_at(self.buf, self._offset, sequence)
        except _packet.PacketError as problem:
            self._broken = True
            self.sendDisconnect(problem.code, problem.message.encode())  # type: ignore[attr-defined]  # Conch's
            return None
        if opened is None:
            self._compact()
            return None
        data, start, stop, used = opened
        self._offset += used
        self._currentSequence = sequence
        self.incomingPacketSequence = (sequence + 1) & _SEQ
        if data[start] == MSG_NEWKEYS:
            self._incomingSwitch = True
            if self.strictKex:
                self.incomingPacketSequence = 0
        return data, start, stop

    def _compact(self) -> None:
        """Drop the bytes already taken; C{buf} becomes the bytearray later reads append to."""
        buf, offset = self.buf, self._offset
        if type(buf) is bytearray:  # type: ignore[comparison-overlap]  # see buf
            del buf[:offset]  # from the front: CPython moves the start, not the bytes
        else:
            self.buf = bytearray(memoryview(buf)[offset:])  # type: ignore[assignment]  # see buf
        self._offset = 0

    def _takeUnread(self) -> bytes:
        """The bytes received and not yet taken as packets, removed from C{buf}."""
        unread = bytes(memoryview(self.buf)[self._offset:])
        self.buf, self._offset = bytearray(), 0  # type: ignore[assignment]  # see buf
        return unread

    def _unread(self) -> bool:
        return len(self.buf) > self._offset

    def sendUnimplemented(self) -> None:
        # Conch names the packet after the one not understood.
        self.sendPacket(MSG_UNIMPLEMENTED, struct.pack(">L", self._currentSequence))

    # The first key exchange.

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self._initialKex:
            problem = self._unexpected(messageNum)
            if problem is not None:
                self._protocolError(problem)
                return
        super().dispatchMessage(messageNum, payload)  # type: ignore[misc]  # Conch's
        if messageNum == MSG_NEWKEYS:
            self._initialKex = False

    def _unexpected(self, messageNum: int) -> str | None:
        """Why C{messageNum} may not come now, before the first NEWKEYS; None when it may."""
        if messageNum not in _TRANSPORT_GENERIC and not 30 <= messageNum <= 49:
            return f"unexpected message type {messageNum} before the key exchange completed"
        if messageNum == MSG_NEWKEYS and not self._keysReady():
            return "NEWKEYS before the key exchange"
        if not self.strictKex or messageNum == MSG_DISCONNECT:
            return None
        if messageNum == MSG_KEXINIT:
            return "strict KEX violation: a second KEXINIT" if self._kexInitsReceived else None
        if messageNum in (MSG_NEWKEYS, self._kexMessageIn):
            return None
        return f"strict KEX violation: unexpected packet type {messageNum} (seqnr {self._currentSequence})"

    def _keysReady(self) -> bool:
        """Whether a NEWKEYS may come now (the client's keys may still wait on the host key check)."""
        return True

    def _protocolError(self, problem: str) -> None:
        _log.info("ssh: {peer}: {problem}; disconnecting", peer=self._peerName(), problem=problem)
        self._broken = True
        self.sendDisconnect(_conch.DISCONNECT_PROTOCOL_ERROR, problem.encode())  # type: ignore[attr-defined]  # Conch's

    def sendKexInit(self) -> None:
        if self.sessionID is not None or self._strictMarkerSent:
            super().sendKexInit()  # type: ignore[misc]  # Conch's
            return
        self._strictMarkerSent = True
        offered = self.supportedKeyExchanges
        self.supportedKeyExchanges = [*offered, self._ourStrictMarker]
        try:
            super().sendKexInit()  # type: ignore[misc]  # Conch's
        finally:
            self.supportedKeyExchanges = offered

    def ssh_KEXINIT(self, packet: bytes) -> None:
        try:
            lists = [names.split(b",") if names else [] for names in getNS(packet[16:], 10)[:10]]
        except struct.error:
            self._protocolError("malformed KEXINIT")
            return
        first = self._kexInitsReceived == 0 and self.sessionID is None
        self._kexInitsReceived += 1
        if first and self._peerStrictMarker in lists[0] and self._saidStrict():
            self.strictKex = True
            if self._currentSequence != 0:
                self._protocolError("strict KEX violation: KEXINIT was not the first packet")
                return
        refusal = self._refusal(lists)
        if refusal is not None:
            self._refuse(refusal)
            return
        before = getattr(self, "nextEncryptions", None)
        self._negotiate(packet)
        chosen = getattr(self, "nextEncryptions", None)
        if chosen is not before and isinstance(chosen, _conch.SSHCiphers):
            self.nextEncryptions = KeySet(chosen.outCipType, chosen.inCipType, chosen.outMACType,
                                          chosen.inMACType)

    def _saidStrict(self) -> bool:
        """Whether our first KEXINIT carried our strict kex marker."""
        ours = algorithms.STRICT_KEX_CLIENT if self.isClient else algorithms.STRICT_KEX_SERVER
        sent = getattr(self, "ourKexInitPayload", b"")
        return bool(sent) and ours in getNS(sent[17:])[0].split(b",")

    def _negotiate(self, packet: bytes) -> None:
        """Conch's negotiation (and, for a client, its first key exchange packet)."""
        super().ssh_KEXINIT(packet)  # type: ignore[misc]  # Conch's

    def _refusal(self, lists: list[list[bytes]]) -> str | None:
        """What the disconnect says when the peer's KEXINIT lists (RFC 4253, 7.1) and ours have nothing in common."""
        peer_kex = [name for name in lists[0] if name not in algorithms.MARKERS]
        ours_theirs = [
            ("kex", self.supportedKeyExchanges, peer_kex),
            ("host key", self.supportedPublicKeys, lists[1]),
            ("cipher", self.supportedCiphers, lists[2]), ("cipher", self.supportedCiphers, lists[3]),
            ("mac", self.supportedMACs, lists[4]), ("mac", self.supportedMACs, lists[5]),
            ("compression", self.supportedCompressions, lists[6]),
            ("compression", self.supportedCompressions, lists[7]),
        ]
        for kind, ours, theirs in ours_theirs:
            client, server = (ours, theirs) if self.isClient else (theirs, ours)
            if _first_match(client, server) is None:
                return algorithms.refusal(kind, ours, theirs)
        return None

    def _refuse(self, description: str) -> None:
        self.algorithmsRefused(description)
        self._broken = True
        self.sendDisconnect(_conch.DISCONNECT_KEY_EXCHANGE_FAILED, description.encode())  # type: ignore[attr-defined]  # Conch's

    def algorithmsRefused(self, description: str) -> None:
        """The peer's algorithms and ours have nothing in common (overridden to tell more)."""
        _log.info("ssh: key exchange with {peer} refused: {reason}", peer=self._peerName(), reason=description)

    def _peerName(self) -> str:
        transport = getattr(self, "transport", None)
        return describe_peer(transport.getPeer()) if transport is not None else "-"


class ServerTransportCrypto(TransportCrypto):
    """For the gateway's server transport (users' side), before Conch's C{SSHServerTransport}."""

    _ourStrictMarker = algorithms.STRICT_KEX_SERVER
    _peerStrictMarker = algorithms.STRICT_KEX_CLIENT
    _kexMessageIn = MSG_KEX_INIT

    def _keysReady(self) -> bool:
        # The server computes its keys as it answers the client's init: a
        # NEWKEYS before that skips the key exchange.
        return bool(getattr(self.nextEncryptions, "encBlockSize", 0))

    def algorithmsRefused(self, description: str) -> None:
        _log.info("ssh: refused the client {client}: {reason}", client=self._peerName(), reason=description)


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
        kex = _first_match(self.supportedKeyExchanges,
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


__all__ = ["ClientTransportCrypto", "KeySet", "ServerTransportCrypto", "TransportCrypto", "hybrid_exchange_hash",
           "hybrid_shared_secret"]
