"""
The TLS ClientHello parser: what a client asks for, read without decrypting.

It owns the framing of the first flight of a TLS connection (records of
content type 22 carrying one handshake message of type 1, possibly split over
many TCP segments and many records) and hands the reassembled message to
L{edd_gateway.tls.clienthello_body}, which checks its lengths strictly and
extracts what routing needs: the SNI host name and the ALPN protocols.  It is
a pure function of the bytes fed to it, with a size bound, and keeps every
byte so that a passthrough relay can replay them untouched.  Hand-written
because neither the standard library nor pyOpenSSL exposes a ClientHello
parser, and the wire format (RFC 8446 section 4.1.2, RFC 6066 section 3,
RFC 7301) is small and fixed.
"""

from __future__ import annotations

from edd_gateway.tls.clienthello_body import ClientHello, ClientHelloError, parse_client_hello_body

__all__ = ["DEFAULT_MAX_BYTES", "ClientHelloParser"]

DEFAULT_MAX_BYTES = 16 * 1024

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_CONTENT_TYPE_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
# A plaintext record fragment is at most 2^14 bytes (RFC 8446 section 5.1).
_MAX_RECORD_PAYLOAD = 2**14


class ClientHelloParser:
    """
    Reassemble and parse the ClientHello at the start of a TLS stream.

    Feed it bytes as they arrive; L{feed} returns L{None} until the whole
    ClientHello handshake message is in, then the L{ClientHello} (again on
    every later call).  Every fed byte stays in L{buffered}.  Malformed input,
    or a hello that would need more than C{max_bytes} of stream, raises
    L{ClientHelloError}, and so does every later call.

    Records are consumed incrementally, so a client trickling one byte at a
    time costs linear, not quadratic, work.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        # Offset in _buffer of the first record not yet moved into _handshake.
        self._next_record = 0
        self._handshake = bytearray()
        self._result: ClientHello | None = None
        self._error: ClientHelloError | None = None

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, to replay to a passthrough backend."""
        return bytes(self._buffer)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def feed(self, data: bytes) -> ClientHello | None:
        if self._error is not None:
            raise self._error
        self._buffer += data
        if self._result is not None:
            return self._result
        try:
            self._result = self._advance()
        except ClientHelloError as error:
            self._error = error
            raise
        return self._result

    def _advance(self) -> ClientHello | None:
        while True:
            length = self._record_header()
            if length is None:
                break
            payload_start = self._next_record + _RECORD_HEADER
            payload_end = payload_start + length
            if payload_end > self._max_bytes:
                raise ClientHelloError(
                    f"a TLS record ending at byte {payload_end} exceeds the "
                    f"{self._max_bytes}-byte limit"
                )
            if len(self._buffer) < payload_end:
                # Look into a partial record early, so that garbage fails now
                # rather than after max_bytes of waiting.
                partial = self._buffer[payload_start : payload_start + _HANDSHAKE_HEADER]
                self._check_handshake_header(
                    bytes(self._handshake[:_HANDSHAKE_HEADER] + partial),
                    known=len(self._handshake) + len(self._buffer) - payload_start,
                    stream_end=len(self._buffer),
                )
                break
            self._handshake += self._buffer[payload_start:payload_end]
            self._next_record = payload_end
            message_length = self._check_handshake_header(
                bytes(self._handshake[:_HANDSHAKE_HEADER]),
                known=len(self._handshake),
                stream_end=payload_end,
            )
            if message_length is None:
                continue
            message_end = _HANDSHAKE_HEADER + message_length
            if len(self._handshake) >= message_end:
                return parse_client_hello_body(
                    bytes(self._handshake[_HANDSHAKE_HEADER:message_end])
                )
        if len(self._buffer) > self._max_bytes:
            raise ClientHelloError(
                f"no complete ClientHello within {self._max_bytes} bytes"
            )
        return None

    def _record_header(self) -> int | None:
        """
        Validate the next record's header if present; return its payload
        length, or L{None} when the header is not all in yet.
        """
        start = self._next_record
        available = self._buffer[start : start + _RECORD_HEADER]
        if available[:1] and available[0] != _CONTENT_TYPE_HANDSHAKE:
            if start == 0 and available[0] & 0x80:
                raise ClientHelloError("SSLv2-compatible ClientHello is not supported")
            raise ClientHelloError(
                f"TLS record of content type {available[0]} before the "
                "ClientHello was complete"
            )
        if len(available) >= 2 and available[1] != 3:
            raise ClientHelloError(f"TLS record version major {available[1]} is not 3")
        if len(available) < _RECORD_HEADER:
            return None
        length = int.from_bytes(available[3:5], "big")
        if length == 0:
            raise ClientHelloError("empty handshake record")
        if length > _MAX_RECORD_PAYLOAD:
            raise ClientHelloError(f"TLS record of {length} bytes exceeds 2^14")
        return length

    def _check_handshake_header(
        self, header: bytes, known: int, stream_end: int
    ) -> int | None:
        """
        Validate the handshake message header as far as its bytes are in and
        return the message length, or L{None} while the header is incomplete.

        @param header: up to the first four bytes of the handshake stream.
        @param known: how many handshake bytes have arrived.
        @param stream_end: the stream offset just after the last of them, to
            bound the bytes the complete message would need.
        """
        if header[:1] and header[0] != _HANDSHAKE_CLIENT_HELLO:
            raise ClientHelloError(
                f"handshake message type {header[0]} is not ClientHello"
            )
        if len(header) < _HANDSHAKE_HEADER:
            return None
        message_length = int.from_bytes(header[1:4], "big")
        # Every missing byte of the message costs at least itself on the wire.
        missing = _HANDSHAKE_HEADER + message_length - known
        if missing > 0 and stream_end + missing > self._max_bytes:
            raise ClientHelloError(
                f"ClientHello of {message_length} bytes exceeds the "
                f"{self._max_bytes}-byte limit"
            )
        return message_length
