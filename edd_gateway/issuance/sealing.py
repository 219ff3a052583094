"""
Private keys sealed at rest: AES-256-GCM under the key of
C{--acme-storage-key FILE}, each blob bound to what it is (the row it sits
in, as associated data), so a sealed key copied into another row does not
open.  The database alone (a dump, a replica's credentials) then holds no
usable key; the file is the secret every replica mounts.

Blob layout: version byte 1, 12-byte random nonce, ciphertext with its tag.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "SealError", "Sealer", "generate_key_text", "load_storage_key", "parse_storage_key"]

KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE = 12


class SealError(Exception):
    """A sealed blob does not open: another key, another row, or damaged."""


def parse_storage_key(data: bytes) -> bytes:
    """
    The 32-byte key from a key file's content: base64 (standard or URL-safe)
    or hex text of 32 bytes, or the 32 bytes themselves.

    @raise ValueError: naming what the file must hold.
    """
    text = data.strip()
    for decode in (base64.b64decode, base64.urlsafe_b64decode, binascii.unhexlify):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    if len(data) == KEY_BYTES:
        return data
    raise ValueError(f"the file must hold a {KEY_BYTES}-byte key, as base64 or hex text "
                     "(e.g. the output of: head -c 32 /dev/urandom | base64)")


def load_storage_key(path: str) -> Sealer:
    """
    The sealer of the key in C{path}.

    @raise ValueError: one line, naming the file and what is wrong.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(4096)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        return Sealer(parse_storage_key(data))
    except ValueError as problem:
        raise ValueError(f"{path}: {problem}") from None


def generate_key_text() -> str:
    """A fresh key, as a key file holds it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class Sealer:
    """Seals and opens blobs with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a storage key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, what: str) -> bytes:
        """C{plaintext} sealed, bound to C{what} (e.g. C{certificate:app.example.org})."""
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, what.encode("utf-8"))

    def open(self, sealed: bytes, what: str) -> bytes:
        """
        The plaintext of a blob sealed for C{what}.

        @raise SealError: it does not open.
        """
        sealed = bytes(sealed)
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE + 16:
            raise SealError(f"the sealed {what} is not a sealed blob of this version")
        try:
            return self._aead.decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:], what.encode("utf-8"))
        except InvalidTag:
            raise SealError(f"the sealed {what} does not open with this --acme-storage-key") from None
