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

from typing import Any

from OpenSSL import SSL

__all__ = ["AVAILABLE", "CHUNK", "bio_pending", "feed", "pending", "recv", "send", "take_records"]

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
