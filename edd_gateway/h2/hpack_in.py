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
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, HeaderTuple
from hpack.table import HeaderTable

__all__ = ["RepeatingBlockDecoder"]

#: How many blocks are kept per connection, and the largest kept.
_KEPT = 16
_LARGEST = 1024


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
        headers = list(super().decode(data, raw))
        if table.changes == before and len(data) <= _LARGEST:
            if len(self._kept) >= _KEPT:
                self._kept.clear()
            self._kept[key] = (before, headers)
            return list(headers)
        return headers
