"""
``twistd`` with a memory probe, for the soak: the gateway runs unchanged in
this process (``twisted.scripts.twistd.run``), and SIGUSR2 makes it append
one JSON line to the file named by C{EDD_SOAK_PROBE}: the interpreter's
allocated memory blocks (C{sys.getallocatedblocks}) and objects tracked by
the garbage collector, before and after a full collection, the types of the
objects that collection found in unreachable reference cycles, and the
count of live objects by type.  When C{EDD_SOAK_PROBE}.trim exists it then
calls glibc's C{malloc_trim(0)} (the soak asks for it once, after its last
round and its last RSS reading).  RSS tells what the process holds from the system;
these tell what Python still uses, which is what a leak grows and what the
allocator's high-water mark does not.

The probe runs only when the soak asks, between rounds, with no load.
(twistd itself uses SIGUSR2 only with ``--debug``, which the soak does not
pass.)

Usage: python _soak_gateway.py [twistd arguments ...]
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import time
from typing import Any


def probe(path: str) -> None:
    before_blocks = sys.getallocatedblocks()
    before_objects = len(gc.get_objects())
    # Collect once keeping what the collection finds, to name the types caught in reference cycles.
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        unreachable = gc.collect()
        garbage = collections.Counter(type(item).__qualname__ for item in gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    gc.collect()
    live = gc.get_objects()
    by_type = collections.Counter(type(item).__qualname__ for item in live)
    record = {"time": time.time(), "allocated_blocks": before_blocks, "gc_objects": before_objects,
              "collected": unreachable, "allocated_blocks_after_collect": sys.getallocatedblocks(),
              "gc_objects_after_collect": len(live), "garbage_types": dict(garbage.most_common(25)),
              "types": dict(by_type.most_common(400))}
    del live
    if os.path.exists(path + ".trim"):
        # Asked for after the last round: give free heap back to the system, to show how much of RSS it was.
        import ctypes

        record["malloc_trim"] = ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open(path, "a") as output:
        output.write(json.dumps(record) + "\n")


def main() -> None:
    path = os.environ["EDD_SOAK_PROBE"]

    def on_signal(signum: int, frame: Any) -> None:
        probe(path)

    signal.signal(signal.SIGUSR2, on_signal)
    sys.argv = ["twistd", *sys.argv[1:]]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
