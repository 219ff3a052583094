"""
The HTTP/2 abuse bounds that the C{h2} library leaves to its user, checked
on the client's raw frames before C{h2} parses them.

C{h2} implements the protocol and its flow control; it does not count what
is legal one frame at a time and ruinous by the thousand: PING, SETTINGS
and WINDOW_UPDATE floods, streams opened and reset at once (CVE-2023-44487,
"rapid reset"), and a header block grown across CONTINUATION frames
(CVE-2024-27316: C{h2} stops at 64 frames, up to a megabyte, before it
decodes anything).  This module reads only the 9-byte frame headers: it is
a pure function of the bytes and the clock readings it is given, so that it
can be tested frame by frame, split anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FrameGuard", "GuardLimits", "Violation"]

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
_END_HEADERS = 0x4
_ACK = 0x1
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class GuardLimits:
    """
    The bounds, each a count per C{interval} seconds (per connection), and
    the largest header block.
    """

    interval: float = 10.0
    #: RST_STREAM frames from the client: a browser resets a few streams a second at most.
    resets: int = 200
    #: PING frames that are not acknowledgements.
    pings: int = 100
    #: SETTINGS frames that are not acknowledgements.
    settings: int = 100
    #: WINDOW_UPDATE and PRIORITY frames: cheap to send, each costs the gateway a state change.
    window_updates: int = 10_000
    #: DATA frames with no payload and no END_STREAM, HEADERS-less CONTINUATION noise and unknown frames.
    empty_frames: int = 1_000
    #: Bytes of one header block, HEADERS and its CONTINUATION frames together.
    header_block: int = 65536


@dataclass(frozen=True)
class Violation:
    """A bound broken: the limit's name (for admission and the log) and what the client did."""

    limit: str
    detail: str


class _Window:
    """A count that starts again every C{interval} seconds."""

    __slots__ = ("limit", "count", "started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.started = 0.0

    def add(self, now: float, interval: float) -> bool:
        """Count one more; true once the limit is passed within one interval."""
        if now - self.started >= interval:
            self.started = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class FrameGuard:
    """
    Fed the client's bytes (after the connection preface) as they arrive;
    says the first bound they break.

    Hand-written rather than asking C{h2}: its frame buffer is private and
    yields frames only once whole, after the header block has been buffered.
    """

    def __init__(self, limits: GuardLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._preface_left = len(_PREFACE)
        self._header = b""
        #: Payload bytes of the current frame still to skip.
        self._skip = 0
        self._block = 0
        self._in_block = False
        self._windows = {
            "h2-rapid-reset": _Window(limits.resets),
            "h2-ping-flood": _Window(limits.pings),
            "h2-settings-flood": _Window(limits.settings),
            "h2-window-update-flood": _Window(limits.window_updates),
            "h2-empty-frames": _Window(limits.empty_frames),
        }

    def feed(self, data: bytes) -> Violation | None:
        view = memoryview(data)
        if self._preface_left:
            # The preface itself h2 checks; here it is only skipped.
            taken = min(self._preface_left, len(view))
            self._preface_left -= taken
            view = view[taken:]
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = 9 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < 9:
                return None
            header, self._header = self._header, b""
            length = int.from_bytes(header[:3], "big")
            self._skip = length
            violation = self._frame(header[3], header[4], length)
            if violation is not None:
                return violation
        return None

    def _frame(self, kind: int, flags: int, length: int) -> Violation | None:
        if kind in (HEADERS, CONTINUATION):
            return self._header_block(kind, flags, length)
        if kind == RST_STREAM:
            return self._count("h2-rapid-reset", "reset more than {limit} streams")
        if kind == PING and not flags & _ACK:
            return self._count("h2-ping-flood", "sent more than {limit} PING frames")
        if kind == SETTINGS and not flags & _ACK:
            return self._count("h2-settings-flood", "sent more than {limit} SETTINGS frames")
        if kind in (WINDOW_UPDATE, PRIORITY):
            return self._count("h2-window-update-flood", "sent more than {limit} WINDOW_UPDATE or PRIORITY frames")
        if kind == DATA and length == 0 and not flags & 0x1 or kind > CONTINUATION:
            return self._count("h2-empty-frames", "sent more than {limit} empty or unknown frames")
        return None

    def _header_block(self, kind: int, flags: int, length: int) -> Violation | None:
        if kind == HEADERS or not self._in_block:
            self._block = 0
        self._block += length
        self._in_block = not flags & _END_HEADERS
        if self._block > self.limits.header_block:
            return Violation("header-size", f"sent a header block over {self.limits.header_block} bytes "
                                            f"(HEADERS and CONTINUATION frames together)")
        return None

    def _count(self, limit: str, what: str) -> Violation | None:
        window = self._windows[limit]
        if window.add(self._clock(), self.limits.interval):
            return Violation(limit, what.format(limit=window.limit) + f" within {self.limits.interval:g}s")
        return None
