"""
The garbage collector, tuned for a long-running proxy.

CPython's cyclic collector runs a young-generation pass every 700 new
container objects, and now and then a full pass over every object alive.
A proxy allocates a few hundred per connection (protocols, timers, parsed
heads) and keeps a large, unchanging heap from its start (modules, the route
table, certificates, the Service of a thousand ports): full passes walked all
of it, a few percent of a TLS handshake's CPU (measured with perf).  So, once
the service has started: what is alive then is frozen out of collection
(C{gc.freeze}, made for long-running servers), and young passes run every
C{YOUNG_THRESHOLD} allocations, as Python 3.13 moved towards.  Objects are
still freed by reference counting at once; only reference cycles wait longer.
"""

from __future__ import annotations

import gc

#: Allocations between young-generation passes (CPython's default is 700).
YOUNG_THRESHOLD = 100_000


def settle_heap() -> None:
    """Collect what start-up left, freeze the rest out of later passes, space young passes."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
