"""
The HTTP/2 side's settings (the C{--h2-*} options as one immutable value)
and the names of HTTP/2 error codes, for logs and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from h2.errors import ErrorCodes

from edd_gateway.h2.guard import GuardLimits

__all__ = ["CONNECTION_WINDOW", "H2Settings", "code_name"]

#: The receive window of the whole connection, all its streams together.
CONNECTION_WINDOW = 1 << 24


@dataclass(frozen=True)
class H2Settings:
    """The HTTP/2 limits a listener advertises and enforces (C{--h2-*})."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS: a browser opens up to 100 (Chromium) or 250 (Firefox asks for more).
    max_concurrent_streams: int = 128
    #: SETTINGS_INITIAL_WINDOW_SIZE: what one stream may send before it is acknowledged.
    initial_window: int = 1 << 20
    guard: GuardLimits = field(default_factory=GuardLimits)


def code_name(code: int) -> str:
    """An HTTP/2 error code's name (RFC 9113 7), or its number when it has none."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
