"""
The signature algorithms the gateway verifies for users' keys (what
server-sig-algs lists) and offers for its host keys; SHA-1 RSA only when
allowed.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.signatures import SignaturePolicy, server_sig_algs

from edd_gateway.ssh.testing import USER_KEYS, typed_key

DEFAULT = SignaturePolicy()
ALLOWING = SignaturePolicy(allow_sha1_rsa=True)


class AlgorithmListTests(SynchronousTestCase):
    def test_server_sig_algs_are_the_verified_algorithms(self) -> None:
        self.assertEqual(DEFAULT.signature_algorithms, (
            b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521",
            b"rsa-sha2-512", b"rsa-sha2-256"))
        self.assertEqual(ALLOWING.signature_algorithms, (*DEFAULT.signature_algorithms, b"ssh-rsa"))

    def test_every_listed_algorithm_is_accepted_for_its_key(self) -> None:
        for kind, algorithms in USER_KEYS.items():
            for algorithm in algorithms:
                self.assertIn(algorithm, DEFAULT.signature_algorithms)
                self.assertIsNone(DEFAULT.refusal(typed_key(kind).public(), algorithm, None), kind)

    def test_host_key_algorithms(self) -> None:
        ed, rsa_key = typed_key("ed25519"), typed_key("rsa")
        self.assertEqual(DEFAULT.host_key_algorithms([ed]), [b"ssh-ed25519"])
        self.assertEqual(DEFAULT.host_key_algorithms([ed, rsa_key]), [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"])
        self.assertEqual(ALLOWING.host_key_algorithms([ed, rsa_key]),
                         [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"])

    def test_only_server_sig_algs_is_rewritten(self) -> None:
        extensions = [(b"server-sig-algs", b"ssh-ed25519"), (b"other@example.com", b"x")]
        self.assertEqual(server_sig_algs(extensions, [b"a", b"b"]),
                         [(b"server-sig-algs", b"a,b"), (b"other@example.com", b"x")])


class RefusalTests(SynchronousTestCase):
    def test_sha1_rsa_only_when_allowed(self) -> None:
        public = typed_key("rsa").public()
        self.assertIn("--ssh-allow-sha1-rsa", DEFAULT.refusal(public, b"ssh-rsa", None) or "")
        self.assertIsNone(ALLOWING.refusal(public, b"ssh-rsa", None))

    def test_signature_must_be_the_named_algorithm(self) -> None:
        private = typed_key("rsa")
        for named, signed in ((b"rsa-sha2-256", b"ssh-rsa"), (b"rsa-sha2-512", b"rsa-sha2-256")):
            signature = private.sign(b"data", signatureType=signed)
            self.assertEqual(ALLOWING.refusal(private.public(), named, signature),
                             f"the signature is {signed.decode()} but the request names {named.decode()}")
        self.assertIsNone(DEFAULT.refusal(private.public(), b"rsa-sha2-512",
                                          private.sign(b"data", signatureType=b"rsa-sha2-512")))

    def test_unreadable_signature(self) -> None:
        self.assertEqual(DEFAULT.refusal(typed_key("ed25519").public(), b"ssh-ed25519", b"\x00\x00\x01"),
                         "the signature could not be read")

    def test_names_of_other_key_types(self) -> None:
        ecdsa = typed_key("ecdsa-p384").public()
        self.assertIsNotNone(DEFAULT.refusal(ecdsa, b"ecdsa-sha2-nistp256", None))
        self.assertIsNotNone(DEFAULT.refusal(typed_key("rsa").public(), b"ssh-ed25519", None))
        self.assertIsNotNone(DEFAULT.refusal(typed_key("ed25519").public(), b"rsa-sha2-256", None))

    def test_dsa_is_not_accepted(self) -> None:
        self.assertEqual(DEFAULT.refusal(typed_key("dsa").public(), b"ssh-dss", None), "ssh-dss keys are not accepted")

    def test_short_rsa_keys_are_refused(self) -> None:
        # As OpenSSH's RequiredRSASize; only the public half is needed.
        modulus = secrets.randbits(768) | (1 << 767) | 1
        short = Key(rsa.RSAPublicNumbers(65537, modulus).public_key())
        self.assertEqual(DEFAULT.refusal(short, b"rsa-sha2-256", None), "the RSA key has 768 bits, fewer than 1024")

    def test_unknown_algorithm_name(self) -> None:
        refusal = DEFAULT.refusal(typed_key("rsa").public(), b"rsa-sha2-999", NS(b"rsa-sha2-999") + NS(b""))
        self.assertEqual(refusal, "rsa-sha2-999 is not a signature algorithm accepted for RSA keys")
