"""
The bounded tables of the HTTP/2 path: what was worked out once for one
input (a header block's fields, a field's HPACK bytes, a backend line's
field, a request's view), kept for the next equal input.

Each is a plain C{dict}, read with C{dict.get} on the hot path (a hit costs
no Python call); what misses is put in with L{keep}, which empties the
table first when it holds its bound.  Emptying rather than evicting one
entry: the inputs come from clients and backends, so a table that fills is
being fed inputs that do not repeat, and starting again costs nothing per
entry, where an LRU's bookkeeping would cost on every hit.  The HPACK
decoder's table of blocks (L{edd_gateway.h2.hpack_in}) takes these steps in
place: a browser's every request head misses it.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["keep"]

K = TypeVar("K")
V = TypeVar("V")


def keep(table: dict[K, V], key: K, value: V, most: int) -> None:
    """Put C{key} in C{table}, emptied first if it holds C{most} entries."""
    if len(table) >= most:
        table.clear()
    table[key] = value
