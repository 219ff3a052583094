"""
The HPACK encoder of the gateway's response heads (RFC 7541): the static
table only, every other field a literal without indexing, no Huffman
coding — the way nginx encodes its responses.

Hand-written rather than the C{hpack} library's encoder, which C{h2} uses by
default: that one searches its dynamic table field by field and
Huffman-codes every string in Python, a seventh of a proxied request's time
through the gateway.  Without a dynamic table nothing here depends on the
previous head, so encoding is a dictionary lookup per field; what it costs
is the bytes a dynamic table would have saved on repeated values (a
response's C{date}, C{server}, C{x-request-id} change or are short).
Decoding the client's heads stays the C{hpack} library's, with its bounds.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

from edd_gateway.h2.bounded import keep

__all__ = ["StaticTableEncoder"]



def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: C{value} in a C{prefix_bits}-bit prefix whose high bits are C{first}'s."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """RFC 7541 5.2, without Huffman coding."""
    return _integer(len(data), 7, 0x00) + data


# Each field's encoding is bytes worked out once: a static-table field's
# index (6.1), a static-table name's prefix for a literal value (6.2.2),
# and the string lengths of one byte.
_FULL: dict[tuple[bytes, bytes], bytes] = {}
_NAME: dict[bytes, bytes] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _FULL.setdefault((_name, _value), _integer(_index, 7, 0x80))
    _NAME.setdefault(_name, _integer(_index, 4, 0x00))
_SHORT_LENGTHS = [bytes((n,)) for n in range(127)]
#: The one regular field whose value is in the static table.
_ACCEPT_ENCODING = b"accept-encoding"  # (test_h2_hpack checks every entry)


#: Whole fields of static-table names as encoded, for the responses that
#: repeat them; bounded (cleared when full), the values coming from backends.
_REPEATED: dict[tuple[bytes, bytes], bytes] = {}
_REPEATED_KEPT = 1024
_REPEATED_LARGEST = 256

#: Names outside the static table (x-request-id, the backend's own) as
#: literal-name prefixes (6.2.2: index 0, the name as a string), worked out
#: once; bounded, as the names come from backends.
_LITERAL_NAMES: dict[bytes, bytes] = {}
_LITERAL_NAMES_KEPT = 512


def _literal_name(name: bytes) -> bytes:
    prefix = _LITERAL_NAMES.get(name)
    if prefix is None:
        prefix = b"\x00" + _string(name)
        keep(_LITERAL_NAMES, name, prefix, _LITERAL_NAMES_KEPT)
    return prefix


class StaticTableEncoder:
    """
    Stands in for C{hpack.Encoder} on an C{h2} connection
    (C{connection.encoder}): C{h2} calls L{encode} and sets
    L{header_table_size} when the client's SETTINGS change it.
    """

    def __init__(self) -> None:
        #: The client's bound on the table; this encoder uses none of it.
        self.header_table_size = 4096
        # The first block says so (a dynamic table size update to 0), so the
        # client's decoder keeps no entries of ours either.
        self._announce = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        out = []
        if self._announce:
            self._announce = False
            out.append(b"\x20")
        full, names, literal_names, lengths, repeated = _FULL, _NAME, _LITERAL_NAMES, _SHORT_LENGTHS, _REPEATED
        for field_pair in headers:
            encoded = repeated.get(field_pair)
            if encoded is not None:
                out.append(encoded)
                continue
            name, value = field_pair
            # Whole fields in the static table: pseudo-headers', empty
            # values and accept-encoding's only; looked up for those alone,
            # since hashing the value of every other field costs more than
            # the lookup saves.
            if not value or name[:1] == b":" or name == _ACCEPT_ENCODING:
                field = full.get((name, value))
                if field is not None:
                    out.append(field)
                    continue
            prefix = names.get(name)
            kept = prefix is not None
            if prefix is None:
                prefix = literal_names.get(name)
                if prefix is None:
                    prefix = _literal_name(name)
            size = len(value)
            encoded = prefix + (lengths[size] if size < 127 else _integer(size, 7, 0x00)) + value
            out.append(encoded)
            if kept and size <= _REPEATED_LARGEST:
                # A field of a static-table name (server, content-type,
                # cache-control, date within its second) comes back on the
                # next responses; x-request-id and the backend's own names
                # are not kept.
                keep(repeated, field_pair, encoded, _REPEATED_KEPT)
        return b"".join(out)
