"""
A lazily re-armed timer: one DelayedCall per connection, however often the
deadline moves.

An HTTP connection changes deadline several times per request (idle, head,
waiting for the backend).  Cancelling and scheduling a DelayedCall each
time costs more than the request's parsing; moving a deadline here is one
attribute assignment, and the timer re-arms itself only when it fires early.

A L{DeadlineGroup} does the same for many deadlines at once: the requests
of one HTTP/2 connection, each on its own stream.  Its members
(L{GroupDeadline}, with L{Deadline}'s interface) share one DelayedCall,
armed for the earliest of their deadlines; a request arms nothing of its
own, which was a DelayedCall and a push onto the reactor's timer heap (and
a cancel) per stream, 3-5 % of the gateway's CPU with many streams in flight.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


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


class DeadlineGroup:
    """
    One DelayedCall for many deadlines (L{GroupDeadline}s), armed for the
    earliest of them and re-armed, as L{Deadline}'s, only when a deadline
    moves sooner than it or when it fires.
    """

    __slots__ = ("_clock", "_pending", "_call", "_armed_for")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: The members that have a deadline, and when it is: a cleared member is not looked at.
        self._pending: dict[GroupDeadline, float] = {}
        self._call: IDelayedCall | None = None
        self._armed_for = 0.0

    def deadline(self, on_expiry: Callable[[], object]) -> GroupDeadline:
        """A new member, with no deadline yet, that calls C{on_expiry} once its deadline passes."""
        return GroupDeadline(self, on_expiry)

    def cancel(self) -> None:
        """No member has a deadline any more, and no call is armed: for connections that are gone."""
        self._pending.clear()
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _arm(self, due: float, seconds: float) -> None:
        # Cancelled and scheduled anew, never DelayedCall.reset (see Deadline.set).
        if self._call is not None:
            self._call.cancel()
        self._call = self._clock.callLater(seconds, self._fire)
        self._armed_for = due

    def _fire(self) -> None:
        self._call = None
        pending = self._pending
        now = self._clock.seconds()
        # A snapshot, in deadline order: a callback may set, clear or
        # release any member (itself included) and add new ones.
        expired = sorted([member for member, due in pending.items() if due <= now], key=pending.__getitem__)
        for member in expired:
            due = pending.get(member)
            if due is None or due > now:
                continue  # cleared or moved by an earlier callback
            del pending[member]
            try:
                member._on_expiry()
            except Exception:
                # As independent as a DelayedCall each: the other members
                # still expire, and the group is still re-armed.
                log.failure("A deadline's expiry failed")
        if pending:
            earliest = min(pending.values())
            if self._call is None or self._armed_for > earliest:
                self._arm(earliest, max(earliest - now, 0.0))


class GroupDeadline:
    """
    A L{Deadline} on its L{DeadlineGroup}'s shared DelayedCall: calls
    C{on_expiry} once the current deadline passes, unless it is moved or
    cleared first.
    """

    __slots__ = ("_group", "_on_expiry")

    def __init__(self, group: DeadlineGroup, on_expiry: Callable[[], object]) -> None:
        self._group = group
        self._on_expiry = on_expiry

    def release(self) -> None:
        """No deadline, and forget the callback (its owner is done: no cycle through it is left)."""
        self._group._pending.pop(self, None)
        self._on_expiry = _nothing

    def set(self, seconds: float) -> None:
        """Expire C{seconds} from now (replacing any earlier deadline)."""
        group = self._group
        due = group._clock.seconds() + seconds
        group._pending[self] = due
        if group._call is None or group._armed_for > due:
            group._arm(due, seconds)

    def clear(self) -> None:
        """No deadline; the group's armed call, if any, will find nothing to do for this one."""
        self._group._pending.pop(self, None)

    def cancel(self) -> None:
        """
        No deadline, as L{clear}: the armed call is the group's, cancelled
        with the group (L{DeadlineGroup.cancel}) once the connection is gone.
        """
        self._group._pending.pop(self, None)

    @property
    def due(self) -> float | None:
        return self._group._pending.get(self)


def _nothing() -> None:
    pass
