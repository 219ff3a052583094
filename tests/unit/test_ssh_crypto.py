"""
Tests for the gateway's SSH transport cryptography: the packet
constructions of L{edd_gateway.ssh.packet} against known answers and in
round trips (corruption is a MAC error), the algorithm lists and
C{--ssh-kex}/C{--ssh-ciphers}/C{--ssh-macs} parsing
(L{edd_gateway.ssh.algorithms}), and the seam over Conch
(L{edd_gateway.ssh.transport_crypto}) with a gateway-style server
transport and a gateway-style client transport talking in memory (iosim):
every key exchange, cipher and MAC, strict key exchange (the sequence
numbers restart at each NEWKEYS; an unexpected message in the first key
exchange is fatal), refusals that name what the gateway offers, the client
side of mlkem768x25519-sha256 checked against the draft's formulas.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms as cipher_algorithms, modes
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.service import SSHService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh import algorithms, client_crypto as _client_crypto, conch_internals, keyset, packet as _packet
from edd_gateway.ssh.client_crypto import ClientTransportCrypto
from edd_gateway.ssh.transport_crypto import ServerTransportCrypto
from edd_gateway.ssh.algorithms import Algorithms, parse_algorithm_list
from edd_gateway.ssh.testing import key

PEER = IPv4Address("TCP", "198.51.100.4", 51234)
ECHO = 200  # a service message number (>= 50)

# draft-ietf-sshm-chacha20-poly1305-02, Appendix A: the worked example.
CHACHA_KEY = bytes.fromhex(
    "8bbff6855fc102338c373e73aac0c914f076a905b2444a32eecaffeae22becc5"
    "e9b7a7a5825a8249346ec1c28301cf394543fc7569887d76e168f37562ac0740")
CHACHA_PLAIN = bytes.fromhex(  # padding length, payload (CHANNEL_DATA), padding
    "065e00000000000000384c6f72656d20697073756d20646f6c6f722073697420616d65742c20636f6e7365637465"
    "747572206164697069736963696e6720656c69744e43e804dc6c")
CHACHA_WIRE = bytes.fromhex(
    "2c3ecce4"
    "a5bc05895bf07a7ba956b6c68829ac7c83b780b7000ecde745afc705bbc378ce03a280236b87b53bed5839662302b164"
    "b6286a48cd1e097138e3cb909b8b2b829dd18d2a35ff82d9"
    "95349e855bf02c298ef775f2d1a7e8b8")


def fixed_padding(test: SynchronousTestCase, padding: bytes) -> None:
    test.patch(_packet, "_random", lambda n: padding[:n])


def pair(cipher: bytes, mac: bytes = b"hmac-sha2-256") -> tuple[_packet.Outgoing, _packet.Incoming]:
    iv, key_, integrity = bytes(range(16)), bytes(range(100, 164)), bytes(range(50, 114))
    return (keyset.outgoing(cipher, mac, iv, key_, integrity), keyset.incoming(cipher, mac, iv, key_, integrity))


COMBINATIONS = [(cipher, mac) for cipher in algorithms.CIPHERS
                for mac in (algorithms.MACS if not keyset.CIPHERS[cipher].aead else (b"hmac-sha2-256",))]


class KnownAnswerTests(SynchronousTestCase):
    def test_chacha20_poly1305_worked_example(self) -> None:
        self.assertEqual(len(CHACHA_PLAIN), 72)
        fixed_padding(self, CHACHA_PLAIN[-6:])
        sealed = _packet.ChaChaPolyOut(CHACHA_KEY).seal(7, CHACHA_PLAIN[1], CHACHA_PLAIN[2:-6])
        self.assertEqual(sealed, CHACHA_WIRE)
        self.assertEqual(_packet.ChaChaPolyIn(CHACHA_KEY).open(CHACHA_WIRE, 7), (CHACHA_PLAIN[1:-6], 92))

    def test_chacha20_poly1305_key_halves(self) -> None:
        # K_2 (the first 32 bytes) keys the payload and Poly1305; K_1 the length.
        nonce = bytes(8) + (7).to_bytes(8, "big")
        length = Cipher(cipher_algorithms.ChaCha20(CHACHA_KEY[32:], nonce), None).encryptor().update(
            struct.pack(">L", 72))
        self.assertEqual(length, CHACHA_WIRE[:4])

    def test_hmac_rfc4231_case_2(self) -> None:
        # RFC 4231, 4.3 (key "Jefe"); the 4-byte sequence number is part of the message.
        message = b"what do ya want for nothing?"
        seq, rest = struct.unpack(">L", message[:4])[0], message[4:]
        self.assertEqual(_packet.HMAC("sha256", b"Jefe").digest(seq, rest).hex(),
                         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        self.assertEqual(_packet.HMAC("sha512", b"Jefe").digest(seq, rest).hex(),
                         "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65"
                         "f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737")

    def test_aes_gcm_framing(self) -> None:
        # RFC 5647: the length in clear as AAD, nonce = 4 fixed bytes || 8-byte invocation counter.
        key_, iv = bytes(range(32)), bytes.fromhex("00112233" "fffffffffffffffe")
        fixed_padding(self, b"\xaa" * 32)
        outgoing = _packet.AESGCMOut(key_, iv)
        for counter in (0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF, 0):  # it wraps, the fixed part stays
            sealed = outgoing.seal(3, 94, b"hello")
            length = struct.unpack(">L", sealed[:4])[0]
            self.assertEqual((length, len(sealed)), (16, 4 + 16 + 16))
            encryptor = Cipher(cipher_algorithms.AES(key_),
                               modes.GCM(iv[:4] + counter.to_bytes(8, "big"))).encryptor()
            encryptor.authenticate_additional_data(sealed[:4])
            body = encryptor.update(bytes([16 - 7]) + bytes([94]) + b"hello" + b"\xaa" * 9) + encryptor.finalize()
            self.assertEqual(sealed[4:], body + encryptor.tag)

    def test_ctr_etm_and_em_mac_layouts(self) -> None:
        integrity = bytes(range(64))
        for mac, etm in ((b"hmac-sha2-256-etm@openssh.com", True), (b"hmac-sha2-256", False)):
            outgoing = keyset.outgoing(b"aes128-ctr", mac, bytes(16), bytes(16), integrity)
            fixed_padding(self, bytes(32))
            sealed = outgoing.seal(9, 94, b"x" * 20)
            decrypt = Cipher(cipher_algorithms.AES(bytes(16)), modes.CTR(bytes(16))).decryptor().update
            tag = sealed[-32:]
            if etm:
                length = struct.unpack(">L", sealed[:4])[0]
                self.assertEqual((length + 4 + 32, length % 16), (len(sealed), 0))
                expected = hmac.digest(integrity[:32], struct.pack(">L", 9) + sealed[:-32], "sha256")
                self.assertEqual(decrypt(sealed[4:-32])[1:22], b"^" + b"x" * 20)
            else:
                plain = decrypt(sealed[:-32])
                self.assertEqual((len(plain) % 16, plain[5:26]), (0, b"^" + b"x" * 20))
                expected = hmac.digest(integrity[:32], struct.pack(">L", 9) + plain, "sha256")
            self.assertEqual(tag, expected, mac)


class RoundTripTests(SynchronousTestCase):
    def test_every_cipher_and_mac(self) -> None:
        for cipher, mac in COMBINATIONS:
            outgoing, incoming = pair(cipher, mac)
            for seq, size in enumerate((0, 1, 15, 16, 17, 255, 1000, 32768, 100_000)):
                payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                sealed = outgoing.seal(seq, 94, payload)
                block = keyset.CIPHERS[cipher].block
                clear = 4 if keyset.CIPHERS[cipher].aead or mac.endswith(b"-etm@openssh.com") else 0
                self.assertEqual((len(sealed) - clear - (16 if keyset.CIPHERS[cipher].aead else
                                                         hashlib.new(keyset.MACS[mac][0]).digest_size)) % block,
                                 0, (cipher, mac, size))
                # Byte by byte: nothing until the whole packet is there.
                for cut in (0, 1, 3, 4, 5, 16, len(sealed) - 1):
                    self.assertIsNone(incoming.open(sealed[:cut], seq), (cipher, mac, size, cut))
                self.assertEqual(incoming.open(sealed + b"next", seq), (b"^" + payload, len(sealed)))

    def test_plain(self) -> None:
        plain = _packet.Plain()
        sealed = plain.seal(0, 20, b"kexinit")
        self.assertEqual(len(sealed) % 8, 0)
        self.assertEqual(plain.open(sealed, 0), (b"\x14kexinit", len(sealed)))

    def test_corruption_is_a_mac_error(self) -> None:
        for cipher, mac in COMBINATIONS:
            for where in ("first", "middle", "last"):
                outgoing, incoming = pair(cipher, mac)
                sealed = bytearray(outgoing.seal(0, 94, b"p" * 200))
                index = {"first": 4 if cipher.startswith(b"chacha") else 5, "middle": len(sealed) // 2,
                         "last": len(sealed) - 1}[where]
                sealed[index] ^= 0x01
                with self.assertRaises(_packet.PacketError) as raised:
                    incoming.open(bytes(sealed), 0)
                self.assertEqual((raised.exception.code, raised.exception.message),
                                 (_packet.DISCONNECT_MAC_ERROR, "bad MAC"), (cipher, mac, where))

    def test_a_corrupt_length_is_refused(self) -> None:
        for cipher, mac in COMBINATIONS:
            outgoing, incoming = pair(cipher, mac)
            sealed = bytearray(outgoing.seal(0, 94, b"p" * 200))
            sealed[0] ^= 0x80
            with self.assertRaises(_packet.PacketError) as raised:
                incoming.open(bytes(sealed), 0)
            self.assertIn(raised.exception.code, (_packet.DISCONNECT_PROTOCOL_ERROR, _packet.DISCONNECT_MAC_ERROR))

    def test_wrong_sequence_number_is_a_mac_error(self) -> None:
        for cipher, mac in COMBINATIONS:
            outgoing, incoming = pair(cipher, mac)
            sealed = outgoing.seal(5, 94, b"p" * 64)
            if cipher.startswith(b"chacha"):
                # The length is keyed by the sequence number too: garbage, or a bad MAC.
                with self.assertRaises(_packet.PacketError):
                    incoming.open(sealed, 6)
                continue
            if keyset.CIPHERS[cipher].aead:
                # AES-GCM counts packets itself (RFC 5647, 7.1): a replay is a bad MAC.
                self.assertIsNotNone(incoming.open(sealed, 5))
                with self.assertRaises(_packet.PacketError) as raised:
                    incoming.open(sealed, 6)
                self.assertEqual(raised.exception.code, _packet.DISCONNECT_MAC_ERROR, cipher)
                continue
            with self.assertRaises(_packet.PacketError) as raised:
                incoming.open(sealed, 6)
            self.assertEqual(raised.exception.code, _packet.DISCONNECT_MAC_ERROR, (cipher, mac))

    def test_oversized_and_misaligned_lengths(self) -> None:
        with self.assertRaises(_packet.PacketError) as raised:
            _packet.Plain().open(struct.pack(">L", _packet.MAX_PACKET + 8) + bytes(16), 0)
        self.assertIn("bad packet length", raised.exception.message)
        with self.assertRaises(_packet.PacketError):
            _packet.Plain().open(struct.pack(">LB", 13, 4) + bytes(13), 0)

    def test_short_padding_is_refused(self) -> None:
        with self.assertRaises(_packet.PacketError) as raised:
            _packet.Plain().open(struct.pack(">LB", 12, 3) + bytes(11), 0)
        self.assertEqual(raised.exception.message, "bad padding length 3")


class AlgorithmListTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(algorithms.KEX, (b"mlkem768x25519-sha256", b"curve25519-sha256",
                                          b"curve25519-sha256@libssh.org"))
        self.assertEqual(algorithms.CIPHERS, (b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com",
                                              b"aes128-gcm@openssh.com", b"aes256-ctr", b"aes192-ctr",
                                              b"aes128-ctr"))
        self.assertEqual(algorithms.MACS, (b"hmac-sha2-512-etm@openssh.com", b"hmac-sha2-256-etm@openssh.com",
                                           b"hmac-sha2-512", b"hmac-sha2-256"))
        self.assertEqual(algorithms.CONTAINER_HOST_KEYS, (b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"))
        weak = [name for kind, names in (("kex", algorithms.KEX), ("cipher", algorithms.CIPHERS),
                                         ("mac", algorithms.MACS), ("host key", algorithms.CONTAINER_HOST_KEYS))
                for name in names if algorithms.weakness(kind, name)]
        self.assertEqual(weak, [])
        self.assertEqual(set(algorithms.CIPHERS), set(keyset.CIPHERS))
        self.assertEqual(set(algorithms.MACS), set(keyset.MACS))

    def test_a_subset_in_the_order_given(self) -> None:
        self.assertEqual(parse_algorithm_list("cipher", "aes128-ctr, aes256-gcm@openssh.com"),
                         (b"aes128-ctr", b"aes256-gcm@openssh.com"))
        self.assertEqual(parse_algorithm_list("kex", "curve25519-sha256"), (b"curve25519-sha256",))
        self.assertEqual(parse_algorithm_list("mac", "hmac-sha2-256-etm@openssh.com"),
                         (b"hmac-sha2-256-etm@openssh.com",))

    def test_weak_and_unknown_names_name_the_option_and_the_choices(self) -> None:
        cases = [
            ("cipher", "aes128-cbc", "--ssh-ciphers: aes128-cbc is refused (CBC ciphers are refused); choose "
                                     "from chacha20-poly1305@openssh.com, aes256-gcm@openssh.com, "
                                     "aes128-gcm@openssh.com, aes256-ctr, aes192-ctr, aes128-ctr"),
            ("mac", "hmac-sha1", "--ssh-macs: hmac-sha1 is refused (SHA-1 MACs are refused); choose from "
                                 "hmac-sha2-512-etm@openssh.com, hmac-sha2-256-etm@openssh.com, hmac-sha2-512, "
                                 "hmac-sha2-256"),
            ("kex", "diffie-hellman-group14-sha1", "--ssh-kex: diffie-hellman-group14-sha1 is refused (SHA-1 key "
                                                   "exchanges are refused); choose from mlkem768x25519-sha256, "
                                                   "curve25519-sha256, curve25519-sha256@libssh.org"),
            ("kex", "sntrup761x25519-sha512", "--ssh-kex: sntrup761x25519-sha512 is not supported; choose from "
                                              "mlkem768x25519-sha256, curve25519-sha256, "
                                              "curve25519-sha256@libssh.org"),
        ]
        for kind, text, message in cases:
            with self.assertRaises(ValueError) as raised:
                parse_algorithm_list(kind, text)
            self.assertEqual(str(raised.exception), message)
        for text in ("", "aes128-ctr,", "aes128-ctr,aes128-ctr"):
            self.assertRaises(ValueError, parse_algorithm_list, "cipher", text)

    def test_refusal_words(self) -> None:
        self.assertEqual(
            algorithms.refusal("cipher", algorithms.CIPHERS, [b"aes128-cbc", b"3des-ctr", b"aes256-cbc"]),
            "no common cipher: the gateway offers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
            "aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr; CBC ciphers are refused; 3DES is refused")
        self.assertEqual(algorithms.refusal("host key", [b"ssh-ed25519"], [b"ssh-dss", b"ssh-rsa"]),
                         "no common host key algorithm: the gateway offers ssh-ed25519; DSA keys are refused; "
                         "RSA with SHA-1 (ssh-rsa) is refused")
        self.assertEqual(algorithms.weakness("host key", b"rsa-sha2-256"), None)


# The seam, with transports built as the gateway builds its own.


class EchoService(SSHService):
    """Sends back every service message it gets (the server's), or records them (the client's)."""

    name = b"ssh-userauth"  # the one service Conch's factory serves before a login

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.received.append(packet)
        if not self.transport.isClient:
            self.transport.sendPacket(messageNum, packet)


class Factory(SSHFactory):
    services = {b"ssh-userauth": EchoService}

    def __init__(self, host_keys: tuple[Key, ...] = ()) -> None:
        keys = host_keys or (key("crypto-host"),)
        self.privateKeys = {k.sshType(): k for k in keys}
        self.publicKeys = {kind: k.public() for kind, k in self.privateKeys.items()}
        self.primes = None


class Server(ServerTransportCrypto, conch.SSHServerTransport):
    goodbye: tuple[int, bytes] | None = None

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.goodbye = (reasonCode, description)


class Client(ClientTransportCrypto, conch.SSHClientTransport):
    goodbye: tuple[int, bytes] | None = None
    secure = False
    service_instance: EchoService | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
        self.host_key = hostKey
        return succeed(None)

    def connectionSecure(self) -> None:
        self.secure = True
        self.service_instance = EchoService()
        self.requestService(self.service_instance)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.goodbye = (reasonCode, description)


def sent_disconnects(transport: Any) -> list[tuple[int, bytes]]:
    """The DISCONNECT reasons a transport sent (recorded by a wrapper)."""
    return getattr(transport, "disconnects", [])


def recording(cls: type) -> type:
    class Recording(cls):  # type: ignore[misc, valid-type]
        def sendDisconnect(self, reason: int, desc: bytes) -> None:
            self.__dict__.setdefault("disconnects", []).append((reason, desc))
            super().sendDisconnect(reason, desc)

    return Recording


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def connect(self, server: Any = None, client: Any = None, *, server_algorithms: Algorithms = Algorithms(),
                client_algorithms: Algorithms = Algorithms()) -> tuple[Any, Any, iosim.IOPump]:
        server = server or recording(Server)()
        server.factory = Factory()
        server.__dict__.setdefault("supportedPublicKeys", [b"ssh-ed25519"])
        server.useAlgorithms(server_algorithms)
        client = client or recording(Client)()
        client.useAlgorithms(client_algorithms)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True, peerAddress=PEER),
                             client, iosim.FakeTransport(client, isServer=False), greet=False)
        pump.flush()
        return server, client, pump

    def echo(self, server: Any, client: Any, pump: iosim.IOPump, payloads: list[bytes]) -> None:
        for payload in payloads:
            client.sendPacket(ECHO, payload)
        pump.flush()
        assert client.service_instance is not None
        self.assertEqual(client.service_instance.received[-len(payloads):], payloads)

    def test_every_kex_cipher_and_mac(self) -> None:
        for kex in algorithms.KEX:
            for cipher, mac in COMBINATIONS:
                chosen = Algorithms(kex=(kex,), ciphers=(cipher,), macs=(mac,))
                server, client, pump = self.connect(client_algorithms=chosen)
                self.assertTrue(client.secure, (kex, cipher, mac, sent_disconnects(server),
                                                sent_disconnects(client)))
                self.assertEqual((server.kexAlg, client.kexAlg), (kex, kex))
                self.assertEqual((client.currentEncryptions.outCipType, server.currentEncryptions.inCipType),
                                 (cipher, cipher))
                self.assertTrue(server.strictKex and client.strictKex)
                self.echo(server, client, pump, [b"", b"x" * 40000, bytes(range(256))])

    def test_strict_kex_restarts_the_sequence_numbers(self) -> None:
        server, client, pump = self.connect()
        # After its NEWKEYS the client sent the service request, then nothing.
        self.assertEqual((client.outgoingPacketSequence, server.incomingPacketSequence), (1, 1))
        # The server: EXT_INFO and the service accept.
        self.assertEqual((server.outgoingPacketSequence, client.incomingPacketSequence), (2, 2))
        self.echo(server, client, pump, [b"a", b"b", b"c"])
        self.assertEqual((client.outgoingPacketSequence, server.incomingPacketSequence), (4, 4))

    def test_without_strict_kex_the_sequence_numbers_go_on(self) -> None:
        client = recording(Client)()
        client._ourStrictMarker = b"not-strict@example.com"
        server, client, pump = self.connect(client=client)
        self.assertTrue(client.secure)
        self.assertFalse(server.strictKex or client.strictKex)
        # KEXINIT, the kex init, NEWKEYS, then the service request.
        self.assertEqual((client.outgoingPacketSequence, server.incomingPacketSequence), (4, 4))

    def test_strict_kex_markers_only_in_the_first_kexinit(self) -> None:
        server, client, pump = self.connect()
        first_server = getNS(server.ourKexInitPayload[17:])[0].split(b",")
        first_client = getNS(client.ourKexInitPayload[17:])[0].split(b",")
        self.assertIn(algorithms.STRICT_KEX_SERVER, first_server)
        self.assertIn(algorithms.STRICT_KEX_CLIENT, first_client)
        self.assertNotIn(algorithms.STRICT_KEX_SERVER, server.supportedKeyExchanges)
        client.sendKexInit()  # a rekey
        pump.flush()
        self.assertNotIn(algorithms.STRICT_KEX_CLIENT, getNS(client.ourKexInitPayload[17:])[0].split(b","))
        self.assertNotIn(algorithms.STRICT_KEX_SERVER, getNS(server.ourKexInitPayload[17:])[0].split(b","))

    def test_rekey_resets_again_and_data_flows(self) -> None:
        server, client, pump = self.connect()
        session = server.sessionID
        self.echo(server, client, pump, [b"before"])
        client.sendKexInit()
        pump.flush()
        self.assertEqual(server.sessionID, session)
        self.assertEqual(client.outgoingPacketSequence, 0)  # NEWKEYS was its last packet
        self.echo(server, client, pump, [b"after", b"y" * 70000])
        self.assertEqual(client.outgoingPacketSequence, 2)

    def wire(self, client: Any, payloads: list[tuple[int, bytes]]) -> bytes:
        """The bytes C{client} puts on the wire for C{payloads}, caught instead of sent."""
        wire, real = StringTransport(), client.transport
        client.transport = wire
        for message, payload in payloads:
            client.sendPacket(message, payload)
        client.transport = real
        return wire.value()

    def test_packets_split_anyhow_across_reads(self) -> None:
        # The receive buffer is read from an offset and compacted once per
        # read: a packet cut anywhere, or many in one read, comes out whole.
        payloads = [b"a", b"x" * 40000, bytes(range(256)), b"", b"z" * 33000]
        for cipher, mac in COMBINATIONS:
            server, client, pump = self.connect(client_algorithms=Algorithms(ciphers=(cipher,), macs=(mac,)))
            wire = self.wire(client, [(ECHO, payload) for payload in payloads * 2])
            service = server.service
            for byte in range(len(wire) // 2):
                server.dataReceived(wire[byte:byte + 1])
            server.dataReceived(wire[len(wire) // 2:])
            self.assertEqual(service.received[-len(payloads) * 2:], payloads * 2, (cipher, mac))
            self.assertEqual((len(server.buf), server.incomingPacketSequence), (0, client.outgoingPacketSequence))

    def test_channel_data_reaches_a_service_that_takes_views_as_one(self) -> None:
        class ViewTaker(EchoService):
            takes_views = True

            def __init__(self) -> None:
                super().__init__()
                self.views: list[tuple[type, bytes]] = []

            def ssh_CHANNEL_DATA(self, packet: memoryview) -> None:
                self.views.append((type(packet), bytes(packet)))

        server, client, pump = self.connect()
        service = ViewTaker()
        server.setService(service)
        data = struct.pack(">2L", 0, 5) + b"hello"
        server.dataReceived(self.wire(client, [(94, data), (ECHO, b"not channel data")]))
        self.assertEqual((service.views, service.received), ([(memoryview, data)], [b"not channel data"]))

    def test_a_rekey_the_server_starts(self) -> None:
        server, client, pump = self.connect()
        service = client.service_instance
        for _ in range(3):
            server.sendKexInit()
            pump.flush()
            self.assertEqual(server.incomingPacketSequence, 0)  # the client's NEWKEYS came last
        # Conch's client would have asked for its service again at each NEWKEYS.
        self.assertIs(client.service_instance, service)
        self.assertEqual(client._gotNewKeys, 0)
        self.echo(server, client, pump, [b"still here"])
        self.assertEqual(sent_disconnects(server) + sent_disconnects(client), [])

    def test_an_unexpected_message_in_the_first_kex_is_fatal(self) -> None:
        class Chatty(Client):
            def sendKexInit(self) -> None:
                super().sendKexInit()
                self.sendPacket(conch.MSG_IGNORE, NS(b"between"))

        server, client, pump = self.connect(client=recording(Chatty)())
        self.assertFalse(client.secure)
        self.assertEqual(sent_disconnects(server), [(conch.DISCONNECT_PROTOCOL_ERROR,
                                                     b"strict KEX violation: unexpected packet type 2 (seqnr 1)")])
        self.assertTrue(any("198.51.100.4:51234" in str(event.get("peer")) for event in self.logged))

    def test_the_same_message_is_fine_without_strict_kex(self) -> None:
        class Chatty(Client):
            _ourStrictMarker = b"not-strict@example.com"

            def sendKexInit(self) -> None:
                super().sendKexInit()
                if self.sessionID is None:
                    self.sendPacket(conch.MSG_IGNORE, NS(b"between"))

        server, client, pump = self.connect(client=recording(Chatty)())
        self.assertTrue(client.secure)
        self.assertEqual(sent_disconnects(server), [])

    def test_kexinit_must_come_first_under_strict_kex(self) -> None:
        class Early(Client):
            def connectionMade(self) -> None:
                self.transport.write(self.ourVersionString + b"\r\n")
                self.currentEncryptions = conch.SSHCiphers(b"none", b"none", b"none", b"none")
                self.sendPacket(conch.MSG_IGNORE, NS(b"first"))
                self.sendKexInit()
                self._gotNewKeys = 0

        server, client, pump = self.connect(client=recording(Early)())
        self.assertEqual(sent_disconnects(server), [(conch.DISCONNECT_PROTOCOL_ERROR,
                                                     b"strict KEX violation: KEXINIT was not the first packet")])

    def test_a_service_request_before_the_keys_is_refused(self) -> None:
        class Hasty(Client):
            _ourStrictMarker = b"not-strict@example.com"

            def sendKexInit(self) -> None:
                super().sendKexInit()
                self._keyExchangeState = self._KEY_EXCHANGE_NONE  # let it through
                self.sendPacket(conch.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
                self._keyExchangeState = self._KEY_EXCHANGE_REQUESTED

        server, client, pump = self.connect(client=recording(Hasty)())
        self.assertIsNone(server.service)
        self.assertEqual(sent_disconnects(server), [(conch.DISCONNECT_PROTOCOL_ERROR,
                                                     b"unexpected message type 5 before the key exchange completed")])

    def test_a_newkeys_before_the_exchange_is_refused(self) -> None:
        class Skipping(Client):
            def _negotiate(self, packet: bytes) -> None:
                conch.SSHTransportBase.ssh_KEXINIT(self, packet)  # no key exchange packet: NEWKEYS at once
                self.transport.write(_packet.Plain().seal(self.outgoingPacketSequence, conch.MSG_NEWKEYS, b""))

        server, client, pump = self.connect(client=recording(Skipping)())
        self.assertEqual(sent_disconnects(server), [(conch.DISCONNECT_PROTOCOL_ERROR,
                                                     b"NEWKEYS before the key exchange")])

    def test_markers_are_never_the_kex(self) -> None:
        only_markers = Algorithms(kex=(algorithms.STRICT_KEX_SERVER, b"ext-info-s"))
        client = recording(Client)()
        server, client, pump = self.connect(client=client, client_algorithms=only_markers)
        self.assertFalse(client.secure)
        (reason, text), = sent_disconnects(server) or sent_disconnects(client)
        self.assertEqual(reason, conch.DISCONNECT_KEY_EXCHANGE_FAILED)
        self.assertTrue(text.startswith(b"no common key exchange method: the gateway offers "), text)

    def refused(self, names: dict[str, list[bytes]]) -> tuple[Any, Any]:
        """A client whose KEXINIT lists (a Conch client's defaults otherwise) are C{names}."""

        class Old(recording(Client)):  # type: ignore[misc]
            _ourStrictMarker = b"not-strict@example.com"

        client = Old()
        # The client's own check (and Conch's) would refuse first: let only the server judge.
        client._refusal = lambda lists: None
        client._negotiate = lambda packet: None
        for attribute, value in names.items():
            setattr(client, attribute, value)
        server = recording(Server)()
        server.factory = Factory()
        server.supportedPublicKeys = [b"ssh-ed25519"]
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True, peerAddress=PEER),
                             client, iosim.FakeTransport(client, isServer=False), greet=False)
        pump.flush()
        return server, client

    def test_weak_clients_are_told_what_is_offered(self) -> None:
        cases = [
            ({"supportedCiphers": [b"aes128-cbc", b"3des-cbc"]},
             b"no common cipher: the gateway offers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
             b"aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr; CBC ciphers are refused"),
            ({"supportedMACs": [b"hmac-sha1", b"hmac-md5"]},
             b"no common MAC: the gateway offers hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,"
             b"hmac-sha2-512,hmac-sha2-256; SHA-1 MACs are refused; MD5 MACs are refused"),
            ({"supportedKeyExchanges": [b"diffie-hellman-group14-sha1", b"diffie-hellman-group-exchange-sha1"]},
             b"no common key exchange method: the gateway offers mlkem768x25519-sha256,curve25519-sha256,"
             b"curve25519-sha256@libssh.org; SHA-1 key exchanges are refused"),
            ({"supportedPublicKeys": [b"ssh-dss", b"ssh-rsa"]},
             b"no common host key algorithm: the gateway offers ssh-ed25519; DSA keys are refused; "
             b"RSA with SHA-1 (ssh-rsa) is refused"),
        ]
        for names, message in cases:
            del self.logged[:]
            server, client = self.refused(names)
            self.assertEqual(client.goodbye, (conch.DISCONNECT_KEY_EXCHANGE_FAILED, message))
            lines = [event for event in self.logged if "refused the client" in event.get("log_format", "")]
            self.assertEqual([(event["client"], event["reason"]) for event in lines],
                             [("198.51.100.4:51234", message.decode())])

    def test_a_container_offering_only_weak_host_keys_is_refused(self) -> None:
        server = recording(Server)()
        server.supportedPublicKeys = [b"ssh-rsa", b"ssh-dss", b"ecdsa-sha2-nistp256"]
        server._refusal = lambda lists: None
        server, client, pump = self.connect(server=server)
        self.assertFalse(client.secure)
        self.assertEqual(sent_disconnects(client), [(
            conch.DISCONNECT_KEY_EXCHANGE_FAILED,
            b"no common host key algorithm: the gateway offers ssh-ed25519,rsa-sha2-512,rsa-sha2-256; "
            b"RSA with SHA-1 (ssh-rsa) is refused; DSA keys are refused; NIST-curve (ECDSA) host keys are not used")])

    def test_a_signature_of_another_algorithm_is_refused(self) -> None:
        client = recording(Client)()
        client.makeConnection(StringTransport())
        client.keyAlg, client.kexAlg = b"rsa-sha2-512", b"curve25519-sha256"
        rsa_blob = NS(b"ssh-rsa") + NS(b"\x01\x00\x01") + NS(b"\x00" + b"\xff" * 256)
        client.dispatchMessage(31, NS(rsa_blob) + NS(b"e" * 32) + NS(NS(b"ssh-rsa") + NS(b"sig")))
        self.assertEqual(sent_disconnects(client), [(
            conch.DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
            b"the host key is ssh-rsa signed with ssh-rsa, not the agreed rsa-sha2-512")])

    def test_mlkem768x25519_as_the_draft_has_it(self) -> None:
        mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(range(64)))
        x25519_key = x25519.X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
        self.patch(_client_crypto.mlkem.MLKEM768PrivateKey, "generate", staticmethod(lambda: mlkem_key))
        self.patch(_client_crypto.x25519.X25519PrivateKey, "generate", staticmethod(lambda: x25519_key))
        replies: list[bytes] = []

        class Watching(Client):
            def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> Any:
                replies.append(packet)
                return super().ssh_KEX_DH_GEX_GROUP(packet)

        server, client, pump = self.connect(client=recording(Watching)(),
                                            client_algorithms=Algorithms(kex=(b"mlkem768x25519-sha256",)))
        self.assertTrue(client.secure)
        c_init = (mlkem_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                  + x25519_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        self.assertEqual((len(c_init), client._clientInit), (1184 + 32, c_init))
        host_key, s_reply, signature, _ = getNS(replies[0], 3)
        self.assertEqual(len(s_reply), 1088 + 32)
        k_pq = mlkem_key.decapsulate(s_reply[:1088])
        k_cl = x25519_key.exchange(x25519.X25519PublicKey.from_public_bytes(s_reply[1088:]))
        shared = hashlib.sha256(k_pq + k_cl).digest()
        # K is a string, not an mpint.
        transcript = b"".join(NS(part) for part in (
            client.ourVersionString, server.ourVersionString, client.ourKexInitPayload, server.ourKexInitPayload,
            host_key, c_init, s_reply, shared))
        exchange_hash = hashlib.sha256(transcript).digest()
        self.assertEqual(client.sessionID, exchange_hash)
        self.assertEqual(server.sessionID, exchange_hash)
        self.assertTrue(Key.fromString(host_key).verify(signature, exchange_hash))
        self.assertIsNone(client._mlkemPrivate, "the private keys are forgotten")
        self.echo(server, client, pump, [b"post-quantum"])

    def test_a_slow_host_key_check_holds_the_packets_after_newkeys(self) -> None:
        from twisted.internet.defer import Deferred

        checks: list[Deferred[None]] = []

        class Slow(Client):
            def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
                checks.append(Deferred())
                return checks[-1]

        class Eager(Server):
            # As OpenSSH's sshd sends EXT_INFO: at once after its NEWKEYS.
            def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
                super()._keySetup(sharedSecret, exchangeHash)
                self.sendPacket(conch.MSG_IGNORE, NS(b"under the new keys"))

        server, client, pump = self.connect(server=recording(Eager)(), client=recording(Slow)())
        self.assertFalse(client.secure)
        self.assertTrue(client.buf, "the packet after the server's NEWKEYS waits in the buffer")
        checks[0].callback(None)
        pump.flush()
        self.assertTrue(client.secure)
        self.assertEqual(client.peerExtensions.get(b"server-sig-algs"), b"ssh-ed25519")
        self.echo(server, client, pump, [b"ok"])

    def test_transport_errors_disconnect_with_a_mac_error(self) -> None:
        server, client, pump = self.connect()
        client.sendPacket(ECHO, b"to be corrupted")
        wire = bytearray(pump.clientIO.getOutBuffer())
        wire[-1] ^= 1
        server.dataReceived(bytes(wire))
        self.assertEqual(sent_disconnects(server), [(conch.DISCONNECT_MAC_ERROR, b"bad MAC")])
        server.dataReceived(b"more")  # nothing more is read
        self.assertEqual(len(sent_disconnects(server)), 1)


class ImportCheckTests(SynchronousTestCase):
    def test_a_missing_internal_fails_the_import(self) -> None:
        self.patch(conch.SSHCiphers, "setKeys", lambda self, keys: None)
        with self.assertRaises(ImportError) as raised:
            conch_internals.check_conch()
        self.assertIn("SSHCiphers.setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)", str(raised.exception))

    def test_a_missing_method_is_named(self) -> None:
        original = conch.SSHServerTransport._ssh_KEX_HYBRID_INIT
        del conch.SSHServerTransport._ssh_KEX_HYBRID_INIT
        self.addCleanup(setattr, conch.SSHServerTransport, "_ssh_KEX_HYBRID_INIT", original)
        with self.assertRaises(ImportError) as raised:
            conch_internals.check_conch()
        self.assertIn("SSHServerTransport._ssh_KEX_HYBRID_INIT", str(raised.exception))

    def test_the_installed_conch_passes(self) -> None:
        conch_internals.check_conch()


class OptionTests(SynchronousTestCase):
    def options(self, *argv: str) -> Any:
        from edd_gateway.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        self.assertEqual(self.options().ssh_settings().algorithms, Algorithms())

    def test_narrowed_in_the_order_given(self) -> None:
        settings = self.options("--ssh-kex", "curve25519-sha256,mlkem768x25519-sha256",
                                "--ssh-ciphers", "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
                                "--ssh-macs", "hmac-sha2-256-etm@openssh.com").ssh_settings()
        expected = Algorithms(kex=(b"curve25519-sha256", b"mlkem768x25519-sha256"),
                              ciphers=(b"aes256-gcm@openssh.com", b"chacha20-poly1305@openssh.com"),
                              macs=(b"hmac-sha2-256-etm@openssh.com",))
        self.assertEqual(settings.algorithms, expected)
        self.assertEqual(settings.upstream().algorithms, expected)

    def test_weak_or_unknown_names_are_usage_errors(self) -> None:
        from twisted.python.usage import UsageError

        for option, value, words in (("--ssh-ciphers", "aes128-cbc", "CBC ciphers are refused"),
                                     ("--ssh-macs", "hmac-md5", "MD5 MACs are refused"),
                                     ("--ssh-kex", "ecdh-sha2-nistp256", "NIST-curve ECDH is not offered"),
                                     ("--ssh-kex", "nonsense", "nonsense is not supported")):
            with self.assertRaises(UsageError) as raised:
                self.options(option, value)
            self.assertIn(f"{option}: ", str(raised.exception))
            self.assertIn(words, str(raised.exception))
            self.assertIn("choose from ", str(raised.exception))

    def test_both_transports_offer_the_policy(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from edd_gateway.ssh.factory import GatewaySSHFactory, SSHSettings
        from edd_gateway.ssh.pins import MemoryHostKeyPins
        from edd_gateway.ssh.upstream_protocol import UpstreamTransport
        from edd_gateway.ssh.testing import container, directory

        policy = Algorithms(kex=(b"curve25519-sha256",), ciphers=(b"aes128-gcm@openssh.com",),
                            macs=(b"hmac-sha2-512",))
        factory = GatewaySSHFactory(directory(container()), MemoryHostKeyPins(), [key("host")], key("client"),
                                    MemoryReactorClock(), SSHSettings(algorithms=policy))
        server = factory.buildProtocol(PEER)
        attempt: Any = type("Attempt", (), {"connector": factory.connector})()
        client = UpstreamTransport(attempt)
        for transport in (server, client):
            self.assertEqual((transport.supportedKeyExchanges, transport.supportedCiphers, transport.supportedMACs),
                             ([b"curve25519-sha256"], [b"aes128-gcm@openssh.com"], [b"hmac-sha2-512"]))
        self.assertEqual(client.supportedPublicKeys, list(algorithms.CONTAINER_HOST_KEYS))
