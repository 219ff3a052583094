"""
The body of a TLS ClientHello handshake message, parsed strictly: what a
client asks for (SNI host name, ALPN protocols, versions, cipher suites).

Every vector must fit its parent exactly (RFC 8446 section 4.1.2, RFC 6066
section 3, RFC 7301), and every read is bounded.  It is the message alone,
already reassembled: L{edd_gateway.tls.clienthello.ClientHelloParser} finds
it in the stream of records and segments, and raises this module's
L{ClientHelloError} for the framing as well, so callers catch one error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientHello", "ClientHelloError", "parse_client_hello_body"]

_EXTENSION_SERVER_NAME = 0
_EXTENSION_ALPN = 16
_EXTENSION_SUPPORTED_VERSIONS = 43
_NAME_TYPE_HOST_NAME = 0

_MAX_HOST_NAME = 253
_MAX_LABEL = 63
_HOST_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class ClientHelloError(ValueError):
    """
    The bytes are not a ClientHello this gateway accepts.

    @ivar reason: a short human-readable reason, for the log line that names
        the client and closes the connection.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientHello:
    """
    What a ClientHello asks for.

    @ivar server_name: the SNI host_name, lower-case without a trailing dot;
        L{None} when the client sent no SNI.
    @ivar alpn: the ALPN protocol names in the client's order (decoded as
        Latin-1 so that any opaque name round-trips); empty without ALPN.
    @ivar legacy_version: the ClientHello's version field, e.g. C{0x0303}.
    @ivar supported_versions: the versions of the supported_versions
        extension in the client's order (GREASE values included); empty when
        the extension is absent.
    @ivar cipher_suites: the offered cipher suite code points.
    @ivar extension_types: the extension type code points, in order.
    """

    server_name: str | None
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extension_types: tuple[int, ...]



class _Reader:
    """A cursor over one length-delimited vector; every read is bounded."""

    __slots__ = ("_data", "_position", "_end", "_what")

    def __init__(self, data: bytes, what: str, start: int = 0, end: int | None = None):
        self._data = data
        self._position = start
        self._end = len(data) if end is None else end
        self._what = what

    @property
    def remaining(self) -> int:
        return self._end - self._position

    # The bounds are checked inline, not through the remaining property: a
    # parse makes some fifty reads, on every TLS handshake.

    def integer(self, size: int, field: str) -> int:
        return int.from_bytes(self.raw(size, field), "big")

    def raw(self, size: int, field: str) -> bytes:
        start = self._position
        end = start + size
        if end > self._end:
            raise ClientHelloError(f"{field} needs {size} bytes but {self._what} has {self._end - start}")
        self._position = end
        return self._data[start:end]

    def vector(self, length_size: int, field: str) -> _Reader:
        """Read a length prefix and return a reader bounded by it."""
        position = self._position
        start = position + length_size
        if start > self._end:
            raise ClientHelloError(f"length of {field} needs {length_size} bytes but {self._what} has "
                                   f"{self._end - position}")
        data = self._data
        length = data[position] if length_size == 1 else int.from_bytes(data[position:start], "big")
        end = start + length
        if end > self._end:
            raise ClientHelloError(f"{field} claims {length} bytes but {self._what} has {self._end - start}")
        self._position = end
        return _Reader(data, field, start, end)

    def expect_end(self) -> None:
        if self.remaining:
            raise ClientHelloError(f"{self.remaining} stray bytes after {self._what}")


def parse_client_hello_body(body: bytes) -> ClientHello:
    """
    Parse the body of a ClientHello handshake message (without its 4-byte
    handshake header), checking that every vector fits its parent exactly.
    """
    reader = _Reader(body, "ClientHello")
    legacy_version = reader.integer(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise ClientHelloError(f"ClientHello version {legacy_version:#06x} is not TLS")
    reader.raw(32, "random")
    session_id = reader.vector(1, "legacy_session_id")
    if session_id.remaining > 32:
        raise ClientHelloError("legacy_session_id longer than 32 bytes")
    suites = reader.vector(2, "cipher_suites")
    if suites.remaining < 2 or suites.remaining % 2:
        raise ClientHelloError("cipher_suites length is not a positive even number")
    count = suites.remaining // 2
    # One struct call for the whole list: per-suite reads were most of a
    # parse (a modern hello offers dozens).
    cipher_suites = struct.unpack(f">{count}H", suites.raw(count * 2, "cipher suites"))
    compression = reader.vector(1, "legacy_compression_methods")
    if compression.remaining < 1:
        raise ClientHelloError("no compression methods")
    extensions = _parse_extensions(reader)
    reader.expect_end()
    return ClientHello(
        server_name=_server_name(_extension(body, extensions, _EXTENSION_SERVER_NAME)),
        alpn=_alpn(_extension(body, extensions, _EXTENSION_ALPN)),
        legacy_version=legacy_version,
        supported_versions=_supported_versions(_extension(body, extensions, _EXTENSION_SUPPORTED_VERSIONS)),
        cipher_suites=cipher_suites,
        extension_types=tuple(extensions),
    )


def _parse_extensions(reader: _Reader) -> dict[int, tuple[int, int]]:
    # Extensions are optional before TLS 1.3: no bytes left means none.
    if reader.remaining == 0:
        return {}
    block = reader.vector(2, "extensions")
    # Index arithmetic rather than a _Reader per field: a browser's hello
    # carries a dozen or more extensions, and this loop was a tenth of a
    # TLS handshake's CPU (py-spy).  Readers are made for the few read.
    data, position, end = block._data, block._position, block._end
    spans: dict[int, tuple[int, int]] = {}
    while position < end:
        if end - position < 4:
            raise ClientHelloError(f"extension header needs 4 bytes but extensions has {end - position}")
        extension_type = (data[position] << 8) | data[position + 1]
        length = (data[position + 2] << 8) | data[position + 3]
        start = position + 4
        if length > end - start:
            raise ClientHelloError(
                f"extension {extension_type} claims {length} bytes but extensions has {end - start}")
        if extension_type in spans:
            raise ClientHelloError(f"extension {extension_type} sent twice")
        spans[extension_type] = (start, start + length)
        position = start + length
    return spans


def _extension(data: bytes, spans: dict[int, tuple[int, int]], kind: int) -> _Reader | None:
    """A reader over extension C{kind}'s contents, or L{None} when the hello has none."""
    span = spans.get(kind)
    return None if span is None else _Reader(data, f"extension {kind}", *span)


def _server_name(extension: _Reader | None) -> str | None:
    if extension is None:
        return None
    names = extension.vector(2, "server_name_list")
    extension.expect_end()
    if names.remaining == 0:
        raise ClientHelloError("empty server_name_list")
    host_name: str | None = None
    while names.remaining:
        name_type = names.integer(1, "server name type")
        name = names.vector(2, "server name")
        if name_type != _NAME_TYPE_HOST_NAME:
            continue
        if host_name is not None:
            raise ClientHelloError("more than one SNI host_name")
        host_name = _validated_host_name(name.raw(name.remaining, "server name"))
    return host_name


def _validated_host_name(raw: bytes) -> str:
    try:
        text = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise ClientHelloError("SNI host_name is not ASCII") from None
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > _MAX_HOST_NAME:
        raise ClientHelloError(f"SNI host_name of {len(name)} characters")
    for label in name.split("."):
        if not label or len(label) > _MAX_LABEL:
            raise ClientHelloError(f"SNI host_name {name!r} has a bad label length")
        if not _HOST_NAME_CHARACTERS.issuperset(label):
            raise ClientHelloError(f"SNI host_name {name!r} is not a DNS name")
    return name


def _alpn(extension: _Reader | None) -> tuple[str, ...]:
    if extension is None:
        return ()
    protocols = extension.vector(2, "protocol_name_list")
    extension.expect_end()
    if protocols.remaining == 0:
        raise ClientHelloError("empty ALPN protocol_name_list")
    names = []
    while protocols.remaining:
        name = protocols.vector(1, "ALPN protocol name")
        if name.remaining == 0:
            raise ClientHelloError("empty ALPN protocol name")
        names.append(name.raw(name.remaining, "ALPN protocol name").decode("latin-1"))
    return tuple(names)


def _supported_versions(extension: _Reader | None) -> tuple[int, ...]:
    if extension is None:
        return ()
    versions = extension.vector(1, "supported_versions")
    extension.expect_end()
    if versions.remaining < 2 or versions.remaining % 2:
        raise ClientHelloError("supported_versions length is not a positive even number")
    return tuple(
        versions.integer(2, "supported version") for _ in range(versions.remaining // 2)
    )
