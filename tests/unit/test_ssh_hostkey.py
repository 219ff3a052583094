"""
The gateway's key files: generated once (0600, atomically), loaded the same
ever after, refused with a clear message when unusable.
"""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh import hostkey
from edd_gateway.ssh.hostkey import KeyFileError, load_host_keys, load_or_create_key, public_text

from edd_gateway.ssh.testing import key


class KeyFileTests(SynchronousTestCase):
    def path(self, name: str = "key") -> str:
        directory = self.mktemp()
        return os.path.join(directory, "secret", name)

    def test_generated_when_missing_private_to_its_owner(self) -> None:
        path = self.path()
        generated = load_or_create_key(path)
        self.assertEqual(generated.sshType(), b"ssh-ed25519")
        self.assertFalse(generated.isPublic())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o077, 0)
        self.assertEqual([n for n in os.listdir(os.path.dirname(path))], ["key"])

    def test_same_key_after_a_restart(self) -> None:
        path = self.path()
        self.assertEqual(load_or_create_key(path), load_or_create_key(path))

    def test_an_existing_file_is_never_replaced(self) -> None:
        path = self.path()
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as file:
            file.write(key("mounted").toString("openssh"))
        self.assertEqual(load_or_create_key(path), key("mounted"))

    def test_public_half_written_for_the_client_key(self) -> None:
        path = self.path("client")
        client = load_or_create_key(path, comment="edd-gateway", write_public=True)
        with open(path + ".pub") as file:
            line = file.read()
        self.assertEqual(line, public_text(client, "edd-gateway") + "\n")
        self.assertEqual(Key.fromString(line.encode()), client.public())

    def test_rsa_for_old_clients(self) -> None:
        self.assertEqual(hostkey.RSA_BITS, 3072)
        self.patch(hostkey, "RSA_BITS", 1024)  # generating 3072 bits takes seconds
        keys = load_host_keys(self.path("ed25519"), self.path("rsa"))
        self.assertEqual([k.sshType() for k in keys], [b"ssh-ed25519", b"ssh-rsa"])
        self.assertEqual(keys[1].size(), 1024)

    def test_unknown_kind(self) -> None:
        self.assertRaises(ValueError, load_or_create_key, self.path(), "dsa")

    def write(self, content: bytes) -> str:
        path = self.path()
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as file:
            file.write(content)
        os.chmod(path, 0o600)
        return path

    def test_not_a_key(self) -> None:
        error = self.assertRaises(KeyFileError, load_or_create_key, self.write(b"hello\n"))
        self.assertIn("is not an SSH private key", str(error))

    def test_public_key_instead_of_private(self) -> None:
        error = self.assertRaises(KeyFileError, load_or_create_key, self.write(public_text(key("x")).encode()))
        self.assertIn("holds a public key", str(error))

    def test_encrypted_key(self) -> None:
        # cryptography's bcrypt KDF costs a fifth of Conch's 100 rounds.
        encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"secret"))
        error = self.assertRaises(KeyFileError, load_or_create_key, self.write(encrypted))
        self.assertIn("encrypted", str(error))

    def test_unreadable(self) -> None:
        path = self.path()
        os.makedirs(path)  # a directory where the file should be
        error = self.assertRaises(KeyFileError, load_or_create_key, path)
        self.assertIn("cannot read the SSH key", str(error))

    def test_readable_by_others_is_warned_about(self) -> None:
        path = self.write(key("loose").toString("openssh"))
        os.chmod(path, 0o644)
        with capturedLogs() as events:
            load_or_create_key(path)
        self.assertTrue(any("readable by others" in e.get("log_format", "") for e in events))

    def test_readable_by_the_group_is_not_warned_about(self) -> None:
        # As a Kubernetes secret volume mounts it for a non-root pod (fsGroup).
        path = self.write(key("mounted").toString("openssh"))
        os.chmod(path, 0o440)
        with capturedLogs() as events:
            load_or_create_key(path)
        self.assertFalse(any("readable by others" in e.get("log_format", "") for e in events))
