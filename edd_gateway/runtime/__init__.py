"""
The process the gateway runs in: the asyncio reactor it installs, the
open-file limit raised at start, and the garbage collector settled once
running.
"""
