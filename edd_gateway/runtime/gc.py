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
C{YOUNG_THRESHOLD} allocations.  Objects are still freed by reference
counting at once; only reference cycles wait longer, and a request leaves
none (C{tests/unit/test_h2_garbage.py} for HTTP/2 streams).  A young pass
walks every young object still alive, which under load is the requests in
flight: with 500 HTTP/2 streams in flight, passes every 10,000 allocations
took 436 ms of CPU over 65,000 requests (C{gc.callbacks}), every 100,000
allocations 70 ms, at most some megabytes of cyclic garbage waiting longer.
"""

from __future__ import annotations

import gc

#: Allocations between young-generation passes (CPython's default is 700; 10,000 until 2026-12-04).
YOUNG_THRESHOLD = 100_000


def settle_heap() -> None:
    """Collect what start-up left, freeze the rest out of later passes, space young passes."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
