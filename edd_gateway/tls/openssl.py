"""
The terminated-TLS data path, straight into the OpenSSL that pyOpenSSL binds.

Each pyOpenSSL call on a memory-BIO connection wraps one OpenSSL call in
argument conversion, a fresh buffer and an error check: on a kept-alive
HTTPS request (a BIO write and read, an C{SSL_read}, an C{SSL_write}) that
wrapping cost more than the OpenSSL work itself, about a tenth of the
gateway's CPU per request (measured with py-spy, and with a micro-benchmark:
3.4 against 1.2 microseconds to encrypt a response and take its record).
The functions here make the same OpenSSL calls through pyOpenSSL's own cffi
bindings with one reusable buffer, and on failure raise through pyOpenSSL's
own error check (C{Connection._raise_ssl_error}), so callers see exactly the
exceptions and messages pyOpenSSL's C{recv}, C{send}, C{bio_write} and
C{bio_read} raise.

C{OpenSSL._util}, the connection's C{_ssl}, C{_into_ssl} and C{_from_ssl},
and C{_raise_ssl_error} are pyOpenSSL internals (unchanged since pyOpenSSL
0.14).  If any is missing, L{AVAILABLE} is false and each function calls the
public pyOpenSSL method instead.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

__all__ = [
    "AVAILABLE",
    "CHUNK",
    "TicketKeyLookup",
    "bio_pending",
    "feed",
    "pending",
    "recv",
    "send",
    "set_ticket_key_callback",
    "take_records",
    "ticket_keys_unavailable",
]

#: Bytes taken from OpenSSL per call: two TLS records' worth, as Twisted's
#: TLSMemoryBIOProtocol reads.
CHUNK = 2**15

try:
    from OpenSSL._util import ffi as _ffi, lib as _lib

    _bio_write: Any = _lib.BIO_write
    _bio_read: Any = _lib.BIO_read
    _ssl_read: Any = _lib.SSL_read
    _ssl_write: Any = _lib.SSL_write
    _ssl_pending: Any = _lib.SSL_pending
    _mem_data_length: Any = getattr(_lib, "BIO_get_mem_data", None)
    _NULL: Any = _ffi.NULL
    # One buffer for the process: the reactor thread is the only caller,
    # and every result is copied out before the next call.
    _buffer: Any = _ffi.new("char[]", CHUNK)
    _copy: Any = _ffi.buffer
    if not all(hasattr(SSL.Connection, name) for name in ("_raise_ssl_error", "bio_write", "recv")):
        raise AttributeError("pyOpenSSL's Connection has changed")
except (ImportError, AttributeError):  # a pyOpenSSL without these internals
    #: Whether the short way is there (tests turn it off to check the other).
    AVAILABLE = False
else:
    AVAILABLE = True


def feed(connection: SSL.Connection, data: bytes) -> None:
    """Put bytes from the network into the receive BIO (C{bio_write})."""
    if AVAILABLE and type(data) is bytes:
        written = _bio_write(connection._into_ssl, data, len(data))
        if written == len(data):
            return
        # A memory BIO fails only without memory: let pyOpenSSL say so.
    connection.bio_write(data)


def recv(connection: SSL.Connection) -> bytes:
    """Decrypted application bytes, up to CHUNK (C{recv}); raises as pyOpenSSL does."""
    if not AVAILABLE:
        return connection.recv(CHUNK)
    ssl = connection._ssl
    count = _ssl_read(ssl, _buffer, CHUNK)
    if count <= 0:
        connection._raise_ssl_error(ssl, count)
        return b""
    return _copy(_buffer, count)[:]


def send(connection: SSL.Connection, data: bytes) -> int:
    """Hand C{data} to OpenSSL to encrypt (C{send}); the count taken; raises as pyOpenSSL does."""
    if not AVAILABLE or type(data) is not bytes:
        return connection.send(data)
    ssl = connection._ssl
    taken = _ssl_write(ssl, data, len(data))
    if taken <= 0:
        connection._raise_ssl_error(ssl, taken)
    return taken


def take_records(connection: SSL.Connection) -> bytes | None:
    """
    The TLS records OpenSSL has made for the network, up to CHUNK bytes
    (C{bio_read}); None when there are none.
    """
    if not AVAILABLE:
        if not bio_pending(connection, "_from_ssl"):
            return None
        try:
            return connection.bio_read(CHUNK)
        except SSL.WantReadError:
            return None
    count = _bio_read(connection._from_ssl, _buffer, CHUNK)
    return _copy(_buffer, count)[:] if count > 0 else None


def pending(connection: SSL.Connection) -> int:
    """Decrypted bytes OpenSSL holds for the next read (C{pending})."""
    if not AVAILABLE:
        return connection.pending()
    return int(_ssl_pending(connection._ssl))


def bio_pending(connection: SSL.Connection, which: str) -> bool:
    """
    Whether one of a memory-BIO connection's BIOs holds bytes (C{_into_ssl}:
    from the network, C{_from_ssl}: for it).  pyOpenSSL binds no
    BIO_ctrl_pending; BIO_get_mem_data tells a memory BIO's length.  True
    (try, and let OpenSSL say) when either is missing.
    """
    bio = getattr(connection, which, None)
    if bio is None or not AVAILABLE or _mem_data_length is None:
        return True
    return bool(_mem_data_length(bio, _NULL) > 0)


# ---------------------------------------------------------------------------
# Session ticket keys.
#
# Neither pyOpenSSL nor cryptography's cffi bindings bind
# SSL_CTX_set_tlsext_ticket_key_evp_cb (nor SSL_CTX_ctrl, through which
# SSL_CTRL_SET_TLSEXT_TICKET_KEYS would set one key): without it OpenSSL
# encrypts tickets with a key it draws once per SSL_CTX, never rotated and
# never shared with another replica.  cryptography's wheels link OpenSSL
# statically into C{cryptography.hazmat.bindings._rust} and ship that
# module's ELF symbol table, so the functions are in the process, only not
# exported: L{set_ticket_key_callback} finds their addresses there (load bias
# taken from the exported C{PyInit__rust}, and checked against the address
# cffi itself reports for one of its own wrappers) and calls them through a
# private cffi FFI.  It relies on: a Linux ELF build of that module with its
# C{.symtab}, and OpenSSL 3.0+'s C{EVP_CipherInit_ex}, C{EVP_aes_*_cbc},
# C{EVP_MAC_CTX_set_params} and C{OSSL_PARAM} layout (public, stable API).
# Without any of that L{ticket_keys_unavailable} says why and callers decide
# (the gateway refuses --tls-ticket-keys and says so).  A build that links
# OpenSSL dynamically is served by the first lookup: dlsym on the module's
# own handle, which searches its dependencies -- never the process's global
# namespace, where Python's C{ssl} module may have put another libssl.

#: What the ticket callback needs, and what the address check compares.
_TICKET_SYMBOLS = (
    "SSL_CTX_set_tlsext_ticket_key_evp_cb",
    "EVP_CipherInit_ex",
    "EVP_aes_128_cbc",
    "EVP_aes_256_cbc",
    "EVP_MAC_CTX_set_params",
)
_CHECK_SYMBOL = "_cffi_d_SSL_CTX_new"
_ANCHOR_SYMBOL = "PyInit__rust"

_TICKET_CDEF = """
typedef struct {
    const char *key;
    unsigned int data_type;
    void *data;
    size_t data_size;
    size_t return_size;
} OSSL_PARAM;
typedef int (*ticket_cb)(void *ssl, unsigned char *name, unsigned char *iv,
                         void *cipher_ctx, void *mac_ctx, int enc);
"""
_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5
#: OSSL_PARAM_UNMODIFIED: ((size_t)-1).
_UNMODIFIED = 2**64 - 1

#: What the callback returns to OpenSSL (SSL_CTX_set_tlsext_ticket_key_cb(3)).
TICKET_UNKNOWN, TICKET_OK, TICKET_RENEW = 0, 1, 2


def _elf_symbols(path: str, wanted: set[str]) -> dict[str, int]:
    """
    The C{st_value} of each name in C{wanted} found in the ELF64
    little-endian file's C{.symtab} (and C{.dynsym}); nothing when the file
    is not such an ELF or has no symbol table.
    """
    found: dict[str, int] = {}
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:6] != b"\x7fELF\x02\x01":
            return found
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        for _, kind, _, _, offset, size, link, _, _, entsize in sections:
            if kind not in (2, 11) or entsize != 24:  # SHT_SYMTAB, SHT_DYNSYM
                continue
            strings, strings_size = sections[link][4], sections[link][5]
            table = data[strings:strings + strings_size]
            # A symbol names its string by offset: find the wanted strings
            # first, then compare integers over the whole table.
            offsets: dict[int, str] = {}
            for name in wanted - found.keys():
                start = table.find(b"\0" + name.encode() + b"\0")
                while start != -1:
                    offsets[start + 1] = name
                    start = table.find(b"\0" + name.encode() + b"\0", start + 1)
            for st_name, _, _, _, value, _ in struct.iter_unpack("<IBBHQQ", data[offset:offset + size]):
                if value and st_name in offsets:
                    found.setdefault(offsets[st_name], value)
    return found


def _resolve_ticket_functions() -> dict[str, int]:
    """The addresses of L{_TICKET_SYMBOLS} in the OpenSSL pyOpenSSL uses; raises when not found."""
    from cryptography.hazmat.bindings import _rust

    path = _rust.__file__
    if path is None:
        raise LookupError("cryptography's _rust module has no file")
    handle = ctypes.CDLL(path)
    addresses: dict[str, int] = {}
    for name in _TICKET_SYMBOLS:
        try:
            addresses[name] = ctypes.cast(getattr(handle, name), ctypes.c_void_p).value or 0
        except AttributeError:
            break
    else:
        return addresses
    table = _elf_symbols(os.path.realpath(path), {*_TICKET_SYMBOLS, _CHECK_SYMBOL, _ANCHOR_SYMBOL})
    missing = {*_TICKET_SYMBOLS, _CHECK_SYMBOL, _ANCHOR_SYMBOL} - table.keys()
    if missing:
        raise LookupError(f"not in {path}'s symbol table: {', '.join(sorted(missing))}")
    anchor = ctypes.cast(getattr(handle, _ANCHOR_SYMBOL), ctypes.c_void_p).value or 0
    bias = anchor - table[_ANCHOR_SYMBOL]
    from cryptography.hazmat.bindings._rust import _openssl as bindings

    # cffi reports the address of its direct-call wrapper for a function.
    reported = int(bindings.ffi.cast("uintptr_t", bindings.ffi.addressof(bindings.lib, "SSL_CTX_new")))
    if bias + table[_CHECK_SYMBOL] != reported:
        # The symbol table is not the loaded code's: calling into it would crash.
        raise LookupError(f"{path}'s symbol table does not match the loaded module")
    return {name: bias + table[name] for name in _TICKET_SYMBOLS}


class _TicketFunctions:
    """The OpenSSL functions the ticket callback calls, typed in a private FFI."""

    def __init__(self, addresses: dict[str, int]) -> None:
        import cffi

        self.ffi = ffi = cffi.FFI()
        ffi.cdef(_TICKET_CDEF)
        self.set_callback: Any = ffi.cast("long (*)(void *, ticket_cb)",
                                          addresses["SSL_CTX_set_tlsext_ticket_key_evp_cb"])
        self.cipher_init: Any = ffi.cast("int (*)(void *, const void *, void *, const unsigned char *, "
                                         "const unsigned char *, int)", addresses["EVP_CipherInit_ex"])
        self.aes_128_cbc: Any = ffi.cast("const void *(*)(void)", addresses["EVP_aes_128_cbc"])()
        self.aes_256_cbc: Any = ffi.cast("const void *(*)(void)", addresses["EVP_aes_256_cbc"])()
        self.mac_set_params: Any = ffi.cast("int (*)(void *, const OSSL_PARAM *)",
                                            addresses["EVP_MAC_CTX_set_params"])
        self._digest_name = ffi.new("char[]", b"digest")
        self._key_name = ffi.new("char[]", b"key")
        self._sha256 = ffi.new("char[]", b"SHA256")

    def init_mac(self, mac_ctx: Any, key: bytes) -> bool:
        """HMAC-SHA256 with C{key} on OpenSSL's MAC context."""
        ffi = self.ffi
        params = ffi.new("OSSL_PARAM[3]")
        key_buffer = ffi.new("unsigned char[]", key)
        params[0] = (self._digest_name, _OSSL_PARAM_UTF8_STRING, self._sha256, 6, _UNMODIFIED)
        params[1] = (self._key_name, _OSSL_PARAM_OCTET_STRING, key_buffer, len(key), _UNMODIFIED)
        params[2] = (ffi.NULL, 0, ffi.NULL, 0, 0)
        return bool(self.mac_set_params(mac_ctx, params) == 1)

    def init_cipher(self, cipher_ctx: Any, key: bytes, iv: bytes, encrypt: bool) -> bool:
        """AES-CBC (128 or 256 by the key's length) with C{key} and C{iv}."""
        cipher = self.aes_256_cbc if len(key) == 32 else self.aes_128_cbc
        return bool(self.cipher_init(cipher_ctx, cipher, self.ffi.NULL, key, iv, 1 if encrypt else 0) == 1)


class TicketKeyLookup:
    """What the callback asks: the ticket key to encrypt with, and a key by name."""

    def encryption_key(self) -> tuple[bytes, bytes, bytes] | None:
        """(name 16 bytes, HMAC secret, AES key), or None to issue no ticket."""
        raise NotImplementedError

    def decryption_key(self, name: bytes) -> tuple[bytes, bytes, bool] | None:
        """(HMAC secret, AES key, whether to renew the ticket), or None when unknown."""
        raise NotImplementedError


_ticket_functions: _TicketFunctions | None = None
_tickets_problem: str | None = None


def ticket_keys_unavailable() -> str | None:
    """
    Why OpenSSL cannot be given our ticket keys, or None when it can.  The
    functions are looked up on first use (a third of a second: the symbol
    table is read), not when the TLS data path is imported.
    """
    global _ticket_functions, _tickets_problem
    if _ticket_functions is None and _tickets_problem is None:
        if not AVAILABLE:
            _tickets_problem = "pyOpenSSL's cffi bindings are not reachable"
        else:
            try:
                _ticket_functions = _TicketFunctions(_resolve_ticket_functions())
            except Exception as problem:  # any failure means: no ticket keys, never a crash
                _tickets_problem = str(problem) or type(problem).__name__
    return _tickets_problem


def set_ticket_key_callback(
    context: SSL.Context, keys: TicketKeyLookup, on_error: Callable[[BaseException], None]
) -> None:
    """
    Make OpenSSL encrypt and decrypt C{context}'s session tickets (TLS 1.2
    and 1.3, stateless) with the keys C{keys} gives at each call.  Decrypting
    with any key but the encrypting one renews the ticket, so a client moves
    to the newest key at its next resumption.  C{on_error} hears an
    exception raised inside the callback (which then answers "no ticket" /
    "unknown key": a full handshake, never a failed one).

    @raise RuntimeError: when L{ticket_keys_unavailable} gives a reason.
    """
    problem = ticket_keys_unavailable()
    functions = _ticket_functions
    if problem is not None or functions is None:
        raise RuntimeError(f"TLS ticket keys cannot be set: {problem}")
    ffi = functions.ffi

    def callback(ssl: Any, name: Any, iv: Any, cipher_ctx: Any, mac_ctx: Any, enc: int) -> int:
        if enc:
            key = keys.encryption_key()
            if key is None:
                return TICKET_UNKNOWN
            key_name, hmac_secret, aes_key = key
            fresh_iv = os.urandom(16)
            ffi.memmove(name, key_name, 16)
            ffi.memmove(iv, fresh_iv, 16)
            if functions.init_cipher(cipher_ctx, aes_key, fresh_iv, True) and functions.init_mac(mac_ctx, hmac_secret):
                return TICKET_OK
            # 0, not -1: OpenSSL then sends no ticket instead of failing the handshake.
            return TICKET_UNKNOWN
        found = keys.decryption_key(ffi.buffer(name, 16)[:])
        if found is None:
            return TICKET_UNKNOWN
        hmac_secret, aes_key, renew = found
        if not (functions.init_mac(mac_ctx, hmac_secret)
                and functions.init_cipher(cipher_ctx, aes_key, ffi.buffer(iv, 16)[:], False)):
            return TICKET_UNKNOWN
        return TICKET_RENEW if renew else TICKET_OK

    def onerror(kind: type, value: BaseException, traceback: object) -> None:
        on_error(value)

    c_callback = ffi.callback("ticket_cb", callback, error=TICKET_UNKNOWN, onerror=onerror)
    pointer = ffi.cast("void *", int(_ffi.cast("uintptr_t", context._context)))
    functions.set_callback(pointer, c_callback)
    # OpenSSL holds only the raw pointer: the context keeps the callback alive.
    context._edd_ticket_callback = c_callback  # type: ignore[attr-defined]  # kept alive here
