"""
The open-file limit.  Every connection is a descriptor, and so is every
listener (a thousand for the container port range); Linux starts services
with a soft limit of 1024 unless the unit or the runtime raises it.  Like
HAProxy and nginx (worker_rlimit_nofile), the gateway raises its soft limit
to the hard limit at start, which needs no privilege.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


def raise_open_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; the new soft limit (None where unsupported)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as problem:
        log.warn("cannot raise the open-file limit from {soft} to {hard}: {problem}", soft=soft, hard=hard,
                 problem=problem)
        return soft
    return hard
