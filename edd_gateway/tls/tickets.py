"""
TLS session ticket keys: which key encrypts new tickets, which keys still
decrypt old ones, and where they come from.

A ticket is the client's copy of its session, encrypted with a key only the
servers know; whoever holds the key can resume the session, and can decrypt
any recorded connection that resumed with it.  So the key must change on a
schedule (forward secrecy), the previous keys must go on decrypting for a
while (or every client falls back to a full handshake at each change), and
replicas must share the keys (or a client resumes only on the replica that
served it first).  Two sources, as nginx and HAProxy have:

- L{RotatingTicketKeys}: keys drawn in memory, a new one every C{interval}
  seconds, the newest encrypting and the C{keep} previous ones decrypting.
  Private to the process.
- L{TicketKeysFile}: the keys of C{--tls-ticket-keys FILE} (a secret mounted
  in every replica), re-read when the file changes; a bad file keeps the
  keys in use.  Its format is HAProxy's C{tls-ticket-keys} (see
  L{parse_ticket_keys}), so a key file made for HAProxy works here.

Both publish an immutable L{TicketKeySet} into a L{TicketKeyRing}, the
object OpenSSL's ticket callback (L{edd_gateway.tls.openssl}) asks at each
ticket; swapping the set is one assignment, so a handshake never sees half a
reload.
"""

from __future__ import annotations

import base64
import binascii
import collections
import os
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edd_gateway.tls.openssl import TicketKeyLookup
from edd_gateway.files.watch import FileWatcher

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_ROTATION",
    "KEY_SIZES",
    "RotatingTicketKeys",
    "TicketKey",
    "TicketKeyRing",
    "TicketKeySet",
    "TicketKeysError",
    "TicketKeysFile",
    "parse_ticket_keys",
    "read_ticket_keys",
]

#: Seconds between two in-memory keys.
DEFAULT_ROTATION = 3600.0
#: Previous in-memory keys that still decrypt: with the default rotation a
#: ticket resumes for 2 to 3 hours, past OpenSSL's 2-hour session lifetime.
DEFAULT_KEEP = 2
#: A key's raw size: 16 name + 16 HMAC secret + 16 AES-128 key, or 16 name +
#: 32 HMAC secret + 32 AES-256 key (HAProxy's two sizes; nginx's too).
KEY_SIZES = (48, 80)
_NAME_SIZE = 16


class TicketKeysError(ValueError):
    """A ticket key file that cannot be used; the message is C{FILE[:LINE]: reason}."""


@dataclass(frozen=True)
class TicketKey:
    """One ticket key: its public name (sent in every ticket) and its two secrets."""

    name: bytes
    hmac_secret: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> TicketKey:
        """A key from its 48 or 80 raw bytes (name, HMAC secret, AES key)."""
        if len(raw) not in KEY_SIZES:
            raise ValueError(f"a ticket key is 48 or 80 bytes, not {len(raw)}")
        half = (len(raw) - _NAME_SIZE) // 2
        return cls(raw[:_NAME_SIZE], raw[_NAME_SIZE:_NAME_SIZE + half], raw[_NAME_SIZE + half:])

    @classmethod
    def generate(cls) -> TicketKey:
        """A fresh random AES-256 key."""
        return cls.from_bytes(os.urandom(KEY_SIZES[1]))

    def label(self) -> str:
        """The start of the name in hex: not secret (clients see it), enough to tell keys apart in logs."""
        return self.name[:4].hex()


@dataclass(frozen=True)
class TicketKeySet:
    """The key that encrypts new tickets and every key that decrypts (the encrypting one included)."""

    encrypting: TicketKey
    keys: tuple[TicketKey, ...]
    _by_name: dict[bytes, TicketKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {key.name: key for key in self.keys})
        if self.encrypting.name not in self._by_name:
            raise ValueError("the encrypting key must be one of the keys")

    def find(self, name: bytes) -> TicketKey | None:
        return self._by_name.get(name)


class TicketKeyRing(TicketKeyLookup):
    """
    The current L{TicketKeySet}, as OpenSSL's ticket callback asks it, and
    what became of the tickets (counters for the metrics).
    """

    def __init__(self, keys: TicketKeySet | None = None) -> None:
        self.keys = keys
        #: Tickets issued, resumed with the encrypting key, resumed with an
        #: older one (and so renewed), and presented with a key no longer known.
        self.tickets: collections.Counter[str] = collections.Counter()

    def swap(self, keys: TicketKeySet) -> None:
        self.keys = keys

    def encryption_key(self) -> tuple[bytes, bytes, bytes] | None:
        keys = self.keys
        if keys is None:
            return None
        self.tickets["issued"] += 1
        key = keys.encrypting
        return key.name, key.hmac_secret, key.aes_key

    def decryption_key(self, name: bytes) -> tuple[bytes, bytes, bool] | None:
        keys = self.keys
        key = None if keys is None else keys.find(name)
        if keys is None or key is None:
            self.tickets["unknown_key"] += 1
            return None
        renew = key is not keys.encrypting
        self.tickets["renewed" if renew else "resumed"] += 1
        return key.hmac_secret, key.aes_key, renew


def parse_ticket_keys(text: str, path: str) -> TicketKeySet:
    """
    The keys of a ticket key file, HAProxy's C{tls-ticket-keys} format: one
    base64 key per line, each 48 bytes (AES-128) or 80 bytes (AES-256), all
    of one size, oldest first (e.g. C{openssl rand 80 | openssl base64 -A}).
    Blank lines and lines starting with C{#} are skipped.  Every key
    decrypts.  With one key it encrypts; with more, the last but one does:
    the last is the next key, known to every replica before any encrypts
    with it, so an operator rotates by appending a key and dropping the
    first, and replicas that see the new file at different moments still
    read each other's tickets.

    @raise TicketKeysError: naming C{path} and the line; never key material.
    """
    keys: list[TicketKey] = []
    names: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise TicketKeysError(f"{where}: not base64") from None
        if len(raw) not in KEY_SIZES:
            raise TicketKeysError(f"{where}: a key is 48 or 80 bytes (base64 of 64 or 108 characters), "
                                  f"this one is {len(raw)} bytes")
        key = TicketKey.from_bytes(raw)
        if keys and len(raw) != _NAME_SIZE + 2 * len(keys[0].aes_key):
            raise TicketKeysError(f"{where}: all keys must be of one size (the first is "
                                  f"{_NAME_SIZE + 2 * len(keys[0].aes_key)} bytes)")
        if key.name in names:
            raise TicketKeysError(f"{where}: the same key name (its first 16 bytes) as line {names[key.name]}")
        names[key.name] = number
        keys.append(key)
    if not keys:
        raise TicketKeysError(f"{path}: no key (one base64 key of 48 or 80 bytes per line)")
    return TicketKeySet(keys[-2] if len(keys) > 1 else keys[0], tuple(keys))


def read_ticket_keys(path: str) -> TicketKeySet:
    """L{parse_ticket_keys} of the file at C{path}; an unreadable file is a L{TicketKeysError} too."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except UnicodeDecodeError:
        raise TicketKeysError(f"{path}: not a text file of base64 keys") from None
    except OSError as problem:
        raise TicketKeysError(f"{path}: {problem.strerror or problem}") from None
    return parse_ticket_keys(text, path)


def _describe(keys: TicketKeySet) -> str:
    encrypting = keys.keys.index(keys.encrypting) + 1
    return (f"{len(keys.keys)} keys of {_NAME_SIZE + 2 * len(keys.encrypting.aes_key)} bytes, "
            f"encrypting with #{encrypting} ({keys.encrypting.label()})")


class RotatingTicketKeys(Service):
    """
    In-memory keys: one drawn at construction (so the ring is never empty),
    then a new one every C{interval} seconds on C{clock}, which encrypts from
    then on while the C{keep} before it go on decrypting.
    """

    _log = Logger()

    def __init__(self, ring: TicketKeyRing, clock: IReactorTime, interval: float = DEFAULT_ROTATION,
                 keep: int = DEFAULT_KEEP) -> None:
        self.ring = ring
        self.interval = interval
        self.keep = keep
        self._clock = clock
        self._loop: LoopingCall | None = None
        self.rotations = 0
        self.rotate()

    def describe(self) -> str:
        return (f"keys drawn in memory, a new one every {self.interval:g}s, the {self.keep} previous kept "
                f"for decryption (private to this process: give replicas --tls-ticket-keys)")

    def rotate(self) -> None:
        """A new encrypting key; the oldest beyond C{keep} previous ones is forgotten."""
        fresh = TicketKey.generate()
        previous = () if self.ring.keys is None else self.ring.keys.keys[:self.keep]
        self.ring.swap(TicketKeySet(fresh, (fresh, *previous)))
        self.rotations += 1

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.rotate)
        loop.clock = self._clock
        # The first key is already there: the first rotation is one interval away.
        loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()


class TicketKeysFile(FileWatcher):
    """
    The keys of C{--tls-ticket-keys FILE}: read at construction (a bad file
    stops the start), re-read whenever the file changes; a bad version is
    logged in one line and the keys in use stay.
    """

    _log = Logger()

    def __init__(self, path: str, ring: TicketKeyRing, clock: IReactorTime, interval: float = 5.0) -> None:
        super().__init__(path, self.reload, clock, interval)
        self.ring = ring
        #: Files taken ("ok") and refused ("failed") since start, the first one included.
        self.reloads: collections.Counter[str] = collections.Counter()
        ring.swap(read_ticket_keys(path))
        self.reloads["ok"] += 1

    def describe(self) -> str:
        keys = self.ring.keys
        assert keys is not None
        return f"keys from {self.path} ({_describe(keys)}), re-read when it changes"

    def reload(self) -> None:
        """Take the file's keys, or keep the ones in use when it is bad; never raises."""
        try:
            keys = read_ticket_keys(self.path)
        except TicketKeysError as problem:
            self.reloads["failed"] += 1
            current = self.ring.keys
            self._log.error("tls: ticket keys: {problem}; keeping the {count} keys in use",
                            problem=str(problem), count=0 if current is None else len(current.keys))
            return
        self.ring.swap(keys)
        self.reloads["ok"] += 1
        self._log.info("tls: ticket keys reloaded from {path}: {description}", path=self.path,
                       description=_describe(keys))
