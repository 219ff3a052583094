"""
Session ticket keys without OpenSSL: the in-memory rotation on an injected
clock (the newest encrypts, the two before it decrypt, older ones are gone),
the key file's format (HAProxy's) and its errors by file:line, and a reload
that keeps the keys in use when the new file is bad.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.tls.tickets import (
    RotatingTicketKeys,
    TicketKeyRing,
    TicketKeysError,
    TicketKeysFile,
    parse_ticket_keys,
)


def key_line(size: int = 80) -> str:
    return base64.b64encode(os.urandom(size)).decode()


class RotationTests(SynchronousTestCase):
    def test_the_newest_encrypts_and_two_before_it_decrypt(self) -> None:
        clock, ring = Clock(), TicketKeyRing()
        keeper = RotatingTicketKeys(ring, clock, interval=3600.0, keep=2)
        keeper.startService()
        self.addCleanup(keeper.stopService)
        names = []
        for _ in range(4):
            name = ring.encryption_key()[0]  # type: ignore[index]
            names.append(name)
            clock.advance(3600)
        self.assertEqual(len(set(names)), 4, "a new key every interval")
        current = ring.encryption_key()[0]  # type: ignore[index]
        self.assertNotIn(current, names)
        # The newest resumes; the two before it resume and renew; the oldest is gone.
        self.assertEqual(ring.decryption_key(current)[2], False)  # type: ignore[index]
        self.assertEqual([ring.decryption_key(name)[2] for name in names[-2:]], [True, True])  # type: ignore[index]
        self.assertIsNone(ring.decryption_key(names[0]))
        self.assertIsNone(ring.decryption_key(names[1]))
        self.assertEqual(ring.tickets["unknown_key"], 2)


class FileFormatTests(SynchronousTestCase):
    def test_the_last_is_next_and_the_last_but_one_encrypts(self) -> None:
        lines = [key_line() for _ in range(3)]
        keys = parse_ticket_keys("# rotated weekly\n\n" + "\n".join(lines) + "\n", "keys")
        raw = [base64.b64decode(line) for line in lines]
        self.assertEqual(keys.encrypting.name, raw[1][:16])
        self.assertEqual([key.name for key in keys.keys], [r[:16] for r in raw])

    def test_one_key_encrypts(self) -> None:
        line = key_line(48)
        self.assertEqual(parse_ticket_keys(line, "keys").encrypting.name, base64.b64decode(line)[:16])

    def test_errors_name_file_and_line_never_key_material(self) -> None:
        good = key_line()
        for text, message in (("not base64!!", "keys:1: not base64"),
                              (good + "\n" + key_line(32), "keys:2:"),
                              (good + "\n" + key_line(48), "keys:2:"),
                              ("", "keys:")):
            with self.assertRaises(TicketKeysError) as raised:
                parse_ticket_keys(text, "keys")
            self.assertTrue(str(raised.exception).startswith(message), str(raised.exception))
            self.assertNotIn(good, str(raised.exception))


class KeyFileReloadTests(SynchronousTestCase):
    def test_a_bad_file_keeps_the_keys_in_use(self) -> None:
        path = Path(self.mktemp())
        path.write_text(key_line() + "\n")
        clock, ring = Clock(), TicketKeyRing()
        keeper = TicketKeysFile(str(path), ring, clock, interval=5.0)
        keeper.reload()
        before = ring.keys
        self.assertIsNotNone(before)
        path.write_text("garbage\n")
        keeper.reload()
        self.assertIs(ring.keys, before)
        path.write_text(key_line() + "\n" + key_line() + "\n")
        keeper.reload()
        self.assertIsNot(ring.keys, before)
