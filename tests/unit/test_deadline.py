"""
Tests for L{edd_gateway.http.deadline.Deadline}: one lazily re-armed timer per
connection, on a L{Clock}; and for L{DeadlineGroup}: one such timer shared by
many deadlines (an HTTP/2 connection's streams).
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.deadline import Deadline, DeadlineGroup, GroupDeadline


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[float] = []
        self.deadline = Deadline(self.clock, lambda: self.fired.append(self.clock.seconds()))

    def test_fires_once_at_the_deadline(self) -> None:
        self.deadline.set(10)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [10.0])
        self.clock.advance(100)
        self.assertEqual(self.fired, [10.0])
        self.assertIsNone(self.deadline.due)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_due(self) -> None:
        self.clock.advance(5)
        self.deadline.set(3)
        self.assertEqual(self.deadline.due, 8.0)

    def test_clear_prevents_the_expiry(self) -> None:
        self.deadline.set(10)
        self.deadline.clear()
        self.assertIsNone(self.deadline.due)
        self.clock.advance(20)
        self.assertEqual(self.fired, [])
        # The armed call ran and found nothing to do; nothing stays scheduled.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_removes_the_armed_call(self) -> None:
        self.deadline.set(10)
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_cancel_without_deadline(self) -> None:
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_later_deadline_does_not_reschedule(self) -> None:
        self.deadline.set(10)
        [call] = self.clock.getDelayedCalls()
        self.deadline.set(30)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), 10.0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [], "fired at the old, earlier time")
        # Re-armed for the remaining time.
        [rearmed] = self.clock.getDelayedCalls()
        self.assertEqual(rearmed.getTime(), 30.0)
        self.clock.advance(20)
        self.assertEqual(self.fired, [30.0])

    def test_earlier_deadline_reschedules(self) -> None:
        self.deadline.set(30)
        [call] = self.clock.getDelayedCalls()
        self.deadline.set(5)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5.0])
        # A new call, not the old one moved: moving a call sooner costs the
        # reactor a linear scan of its timers.
        self.assertTrue(call.cancelled)
        self.clock.advance(5)
        self.assertEqual(self.fired, [5.0])

    def test_moving_repeatedly_uses_one_call(self) -> None:
        self.deadline.set(10)
        for _ in range(1, 50):
            self.clock.advance(0.1)
            self.deadline.set(10)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.fired), 1)
        self.assertAlmostEqual(self.fired[0], 14.9)

    def test_set_after_clear_before_the_old_call(self) -> None:
        self.deadline.set(10)
        self.deadline.clear()
        self.deadline.set(20)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [20.0])

    def test_set_again_after_firing(self) -> None:
        self.deadline.set(1)
        self.clock.advance(1)
        self.deadline.set(2)
        self.clock.advance(2)
        self.assertEqual(self.fired, [1.0, 3.0])

    def test_expiry_callback_may_set_a_new_deadline(self) -> None:
        fired: list[float] = []

        def expired() -> None:
            fired.append(self.clock.seconds())
            if len(fired) < 3:
                deadline.set(5)

        deadline = Deadline(self.clock, expired)
        deadline.set(5)
        self.clock.advance(5)
        self.clock.advance(5)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(fired, [5.0, 10.0, 15.0])


class DeadlineGroupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.group = DeadlineGroup(self.clock)
        self.fired: list[tuple[str, float]] = []

    def member(self, name: str) -> GroupDeadline:
        return self.group.deadline(lambda: self.fired.append((name, self.clock.seconds())))

    def test_fires_once_at_the_deadline(self) -> None:
        a = self.member("a")
        a.set(10)
        self.assertEqual(a.due, 10.0)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [("a", 10.0)])
        self.clock.advance(100)
        self.assertEqual(self.fired, [("a", 10.0)])
        self.assertIsNone(a.due)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_call_until_a_deadline_is_set(self) -> None:
        self.member("a")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_members_share_one_call(self) -> None:
        for name in "abcdef":
            self.member(name).set(10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.fired, [(name, 10.0) for name in "abcdef"])

    def test_later_deadline_does_not_rearm(self) -> None:
        a = self.member("a")
        a.set(10)
        [call] = self.clock.getDelayedCalls()
        a.set(30)
        self.member("b").set(20)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), 10.0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [], "fired at the old, earlier time")
        # Re-armed for the earliest deadline left.
        [rearmed] = self.clock.getDelayedCalls()
        self.assertEqual(rearmed.getTime(), 20.0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("b", 20.0)])
        self.clock.advance(10)
        self.assertEqual(self.fired, [("b", 20.0), ("a", 30.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earlier_deadline_rearms(self) -> None:
        a, b = self.member("a"), self.member("b")
        a.set(30)
        [call] = self.clock.getDelayedCalls()
        b.set(5)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5.0])
        # A new call, not the old one moved (see Deadline's test).
        self.assertFalse(call.active())
        self.clock.advance(5)
        self.assertEqual(self.fired, [("b", 5.0)])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [30.0])

    def test_members_fire_in_deadline_order(self) -> None:
        self.member("late").set(20)
        self.member("early").set(10)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("early", 10.0), ("late", 20.0)])

    def test_members_passed_at_once_fire_in_deadline_order(self) -> None:
        self.member("late").set(20)
        self.member("early").set(10)
        self.clock.advance(50)  # one firing finds both passed
        self.assertEqual([name for name, _ in self.fired], ["early", "late"])

    def test_callback_may_set_its_own_deadline_again(self) -> None:
        fired: list[float] = []

        def expired() -> None:
            fired.append(self.clock.seconds())
            if len(fired) < 3:
                member.set(5)

        member = self.group.deadline(expired)
        member.set(5)
        for _ in range(4):
            self.clock.advance(5)
        self.assertEqual(fired, [5.0, 10.0, 15.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_callback_setting_a_later_deadline_keeps_an_earlier_one(self) -> None:
        """A deadline set from a callback arms the call; one set before, and sooner, is not forgotten."""
        other = self.member("other")

        def expired() -> None:
            self.fired.append(("first", self.clock.seconds()))
            other.set(100)

        self.group.deadline(expired).set(1)
        self.member("second").set(5)
        self.clock.advance(1)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5.0])
        self.clock.advance(4)
        self.assertEqual(self.fired, [("first", 1.0), ("second", 5.0)])

    def test_callback_may_release_another_member(self) -> None:
        later = self.member("later")

        def expired() -> None:
            self.fired.append(("first", self.clock.seconds()))
            later.release()

        self.group.deadline(expired).set(10)
        later.set(20)
        self.clock.advance(50)  # both passed: the first's callback releases the other before its turn
        self.assertEqual(self.fired, [("first", 50.0)])
        self.assertIsNone(later.due)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_callback_may_add_a_member(self) -> None:
        def expired() -> None:
            self.fired.append(("first", self.clock.seconds()))
            self.member("added").set(3)

        self.group.deadline(expired).set(1)
        self.clock.advance(1)
        self.clock.advance(3)
        self.assertEqual(self.fired, [("first", 1.0), ("added", 4.0)])

    def test_failing_callback_does_not_stop_the_others(self) -> None:
        self.group.deadline(lambda: 1 // 0).set(1)
        self.member("after").set(1)
        self.member("later").set(2)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [("after", 1.0), ("later", 2.0)])

    def test_cleared_member_never_fires(self) -> None:
        a, b = self.member("a"), self.member("b")
        a.set(10)
        b.set(10)
        a.clear()
        self.assertIsNone(a.due)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("b", 10.0)])

    def test_cleared_members_leave_nothing_armed_once_fired(self) -> None:
        a = self.member("a")
        a.set(10)
        a.cancel()  # a member's cancel is a clear: the call is the group's
        self.assertIsNone(a.due)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_released_member_never_fires(self) -> None:
        a = self.member("a")
        a.set(10)
        a.release()
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_set_after_clear(self) -> None:
        a = self.member("a")
        a.set(10)
        a.clear()
        a.set(20)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [("a", 20.0)])

    def test_cancel_stops_everything(self) -> None:
        a, b = self.member("a"), self.member("b")
        a.set(10)
        b.set(20)
        self.group.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(a.due)
        self.assertIsNone(b.due)
        self.clock.advance(30)
        self.assertEqual(self.fired, [])

    def test_cancel_without_deadline(self) -> None:
        self.group.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_release_leaves_no_cycle(self) -> None:
        """An owner whose member calls back into it is freed by reference counting once it releases it."""

        class Owner:
            def __init__(self, group: DeadlineGroup) -> None:
                self.deadline = group.deadline(self.expired)

            def expired(self) -> None:
                pass

        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            owner = Owner(self.group)
            owner.deadline.set(10)
            gone = weakref.ref(owner)
            owner.deadline.release()
            del owner
            self.assertIsNone(gone(), "the owner outlived its last reference")
            gc.collect()
            self.assertEqual([o for o in gc.garbage if isinstance(o, (Owner, GroupDeadline))], [])
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if enabled:
                gc.enable()
