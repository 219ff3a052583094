"""
The HPACK decoder of the clients' request heads: the C{hpack} library's,
with its bounds, remembering the last few header blocks it decoded that
left its dynamic table as it was.

A client that repeats a request on a connection (an API poller, a gRPC
stub calling one method, a load generator) sends the same block each time
once its fields are in the table: indexed fields and literals it chose not
to index.  Decoding that block again gives the same list as long as the
table has not changed since, so the list is kept, keyed by the block, and
valid until the table next changes (L{_CountingTable.changes}).  Decoding
was a tenth of such a request's time through the gateway.  A block that
adds to the table or resizes it is never kept, and neither is a large one,
so the memory is bounded by L{_KEPT} x L{_LARGEST} per connection.

A block that differs (a browser's: each request its own path) is read by
L{RepeatingBlockDecoder._read_block}: the loop of C{hpack}'s own C{decode},
with a field indexed in one byte (index 1-126: almost every field after a
connection's first request, once the client has added it to the table)
looked up in place, and every other representation read by C{hpack}'s own
methods.  C{hpack} spends about 1.4 microseconds on each indexed field (an
integer decoder, a debug-log call, a tuple subclass made in Python, then a
copy of it), so a browser's 16-field block took 24 microseconds, about as
long as the rest of its request.  It calls C{hpack}'s private methods, as
its own C{decode} does; the differential tests in
C{tests/unit/test_h2_hpack.py} compare it with that C{decode} on every
kind of block, so a release of C{hpack} that changes them fails there.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, HeaderTuple, HPACKDecodingError, InvalidTableIndex, OversizedHeaderListError
from hpack.hpack import _unicode_if_needed
from hpack.table import HeaderTable

__all__ = ["RepeatingBlockDecoder"]

#: How many blocks are kept per connection, and the largest kept.
_KEPT = 16
_LARGEST = 1024
_STATIC = HeaderTable.STATIC_TABLE
_STATIC_FIELDS = HeaderTable.STATIC_TABLE_LENGTH


class _CountingTable(HeaderTable):
    """An HPACK dynamic table that counts its changes: an entry added, the size changed."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]  # the base class's property setter


class RepeatingBlockDecoder(Decoder):
    """Stands in for C{hpack.Decoder} on an C{h2} connection (C{connection.decoder})."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.header_table = _CountingTable()
        self._kept: dict[tuple[bytes, bool], tuple[int, list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        table = self.header_table
        assert isinstance(table, _CountingTable)
        key = (bytes(data), raw)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == table.changes:
            return list(kept[1])
        before = table.changes
        headers = self._read_block(data) if raw else list(super().decode(data, raw))
        if table.changes == before and len(data) <= _LARGEST:
            # bounded.keep's steps in place: a browser's every block comes here.
            if len(self._kept) >= _KEPT:
                self._kept.clear()
            self._kept[key] = (before, headers)
            return list(headers)
        return headers

    def _read_block(self, data: bytes) -> list[HeaderTuple]:
        """
        C{hpack}'s C{decode(data, raw=True)}: the same fields, errors, bounds
        and table, with one-byte indexed fields looked up here.
        """
        dynamic = self.header_table.dynamic_entries
        whole = memoryview(data)
        limit = self.max_header_list_size
        headers: list[HeaderTuple] = []
        size = 0
        at, end = 0, len(data)
        while at < end:
            first = data[at]
            header: HeaderTuple | None
            if 0x80 < first < 0xFF:
                # HeaderTable.get_by_index in place; tuple.__new__ makes what
                # HeaderTuple(*entry) makes, without its Python __new__.
                index = first & 0x7F
                if index <= _STATIC_FIELDS:
                    header = tuple.__new__(HeaderTuple, _STATIC[index - 1])
                elif index - _STATIC_FIELDS <= len(dynamic):
                    header = tuple.__new__(HeaderTuple, dynamic[index - _STATIC_FIELDS - 1])
                else:
                    raise InvalidTableIndex(f"Invalid table index {index}")
                consumed = 1
            else:
                if first & 0x80:
                    header, consumed = self._decode_indexed(whole[at:])
                elif first & 0x40:
                    header, consumed = self._decode_literal_index(whole[at:])
                elif first & 0x20:
                    if headers:
                        raise HPACKDecodingError("Table size update not at the start of the block")
                    consumed, header = self._update_encoding_context(whole[at:]), None
                else:
                    header, consumed = self._decode_literal_no_index(whole[at:])
                if header is not None:
                    header = _unicode_if_needed(header, True)
            if header is not None:
                headers.append(header)
                size += 32 + len(header[0]) + len(header[1])  # hpack.table.table_entry_size
                if size > limit:
                    raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
            at += consumed
        self._assert_valid_table_size()
        return headers
