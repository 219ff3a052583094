"""
A lazily re-armed timer: one DelayedCall per connection, however often the
deadline moves.

An HTTP connection changes deadline several times per request (idle, head,
waiting for the backend).  Cancelling and scheduling a DelayedCall each
time costs more than the request's parsing; moving a deadline here is one
attribute assignment, and the timer re-arms itself only when it fires early.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    """
    Calls C{on_expiry} once the current deadline passes, unless it is moved
    or cleared first.
    """

    __slots__ = ("_clock", "_on_expiry", "_due", "_call", "_armed_for")

    def __init__(self, clock: IReactorTime, on_expiry: Callable[[], object]) -> None:
        self._clock = clock
        self._on_expiry = on_expiry
        self._due: float | None = None
        self._call: IDelayedCall | None = None
        self._armed_for = 0.0

    def release(self) -> None:
        """Cancel, and forget the callback (its owner is done: no cycle through it is left)."""
        self.cancel()
        self._on_expiry = _nothing

    def set(self, seconds: float) -> None:
        """Expire C{seconds} from now (replacing any earlier deadline)."""
        due = self._clock.seconds() + seconds
        self._due = due
        call = self._call
        if call is None:
            self._call = self._clock.callLater(seconds, self._fire)
            self._armed_for = due
        elif self._armed_for > due:
            # Cancel and schedule anew rather than DelayedCall.reset: moving
            # a call sooner makes the reactor find it in its timer heap by a
            # linear scan (ReactorBase._moveCallLaterSooner), which cost a
            # quarter of the CPU of TLS handshakes with a few hundred
            # connections open.  Cancelling is lazy and scheduling O(log n).
            call.cancel()
            self._call = self._clock.callLater(seconds, self._fire)
            self._armed_for = due

    def clear(self) -> None:
        """No deadline; the armed call, if any, will find nothing to do."""
        self._due = None

    def cancel(self) -> None:
        """No deadline and no armed call: for connections that are gone."""
        self._due = None
        if self._call is not None:
            self._call.cancel()
            self._call = None

    @property
    def due(self) -> float | None:
        return self._due

    def _fire(self) -> None:
        self._call = None
        due = self._due
        if due is None:
            return
        remaining = due - self._clock.seconds()
        if remaining > 0:
            self._call = self._clock.callLater(remaining, self._fire)
            self._armed_for = due
            return
        self._due = None
        self._on_expiry()


def _nothing() -> None:
    pass
