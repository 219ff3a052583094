"""
Tests for L{edd_gateway.http.deadline.Deadline}: one lazily re-armed timer per
connection, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.deadline import Deadline


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
