"""
The seam between Conch's SSH transport and the gateway's own packet
protection (L{edd_gateway.ssh.packet}), key exchange additions and strict
key exchange: L{TransportCrypto}, what both of the gateway's sides share,
and L{ServerTransportCrypto}, placed before Conch's C{SSHServerTransport}
in the users' transport (C{factory.py}); the containers' side,
L{edd_gateway.ssh.client_crypto.ClientTransportCrypto}, builds on it.

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
   ours have nothing in common (L{algorithms.refusal}), with a log line.

The per-packet path (C{sendPacket}, C{dataReceived}, C{_drain},
C{_nextPacket}) stays in the one class, L{TransportCrypto}, so that no
packet pays for another layer.  The Conch internals it relies on are
listed, and checked when this module is imported, in
L{edd_gateway.ssh.conch_internals}; which protection an agreed cipher
stands for is L{edd_gateway.ssh.keyset}'s.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import transport as _conch
from twisted.conch.ssh.common import getNS
from twisted.logger import Logger

from edd_gateway.net.addresses import describe_peer
from edd_gateway.ssh import algorithms, packet as _packet
from edd_gateway.ssh.conch_internals import check_conch
from edd_gateway.ssh.keyset import KeySet

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

check_conch()


def first_match(client: list[bytes], server: list[bytes]) -> bytes | None:
    """RFC 4253, 7.1: the client's first choice that the server has."""
    return next((name for name in client if name in server), None)


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
            if first_match(client, server) is None:
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


__all__ = ["MSG_KEX_INIT", "MSG_KEX_REPLY", "ServerTransportCrypto", "TransportCrypto", "first_match"]
