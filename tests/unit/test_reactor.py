"""
The gateway's reactor (edd_gateway.runtime.reactor.GatewayReactor): its timed calls
keep Twisted's semantics while leaving far-off calls off the timer heap
until the loop's timer fires.
"""

from __future__ import annotations

import asyncio

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.runtime.reactor import _NEW_CALLS_BOUND, GatewayReactor


class TimedCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.reactor = GatewayReactor(self.loop)
        self.now = 1000.0
        self.reactor.seconds = lambda: self.now  # type: ignore[method-assign]
        self.fired: list[str] = []

    def later(self, delay: float, name: str):  # type: ignore[no-untyped-def]
        return self.reactor.callLater(delay, self.fired.append, name)

    def test_first_call_sets_the_loop_timer(self) -> None:
        self.later(10, "a")
        self.assertIsNotNone(self.reactor._scheduledAt)
        remaining = self.reactor._scheduledAt - self.loop.time()
        self.assertTrue(9 < remaining <= 10, remaining)

    def test_later_call_waits_off_the_heap(self) -> None:
        """A call due after the loop's timer is not pushed, nor does it move the timer."""
        self.later(10, "a")
        scheduled = self.reactor._scheduledAt
        late = self.later(20, "b")
        self.assertEqual(self.reactor._scheduledAt, scheduled)
        self.assertIn(late, self.reactor._newTimedCalls)
        self.assertNotIn(late, self.reactor._pendingTimedCalls)

    def test_sooner_call_moves_the_loop_timer(self) -> None:
        self.later(10, "a")
        scheduled = self.reactor._scheduledAt
        self.later(5, "b")
        self.assertLess(self.reactor._scheduledAt, scheduled)

    def test_cancelled_waiting_call_is_dropped(self) -> None:
        self.later(10, "a")
        self.later(20, "b").cancel()
        self.now += 30
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor._cancellations, 0)

    def test_calls_fire_in_time_order(self) -> None:
        self.later(10, "a")
        self.later(30, "c")
        self.later(20, "b")
        self.now += 15
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["a"])
        self.now += 20
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["a", "b", "c"])

    def test_waiting_calls_are_bounded(self) -> None:
        """Past the bound the waiting calls go onto the heap, so a far-off timer cannot let them pile up."""
        self.later(10, "a")
        for _ in range(_NEW_CALLS_BOUND + 2):
            self.later(60, "far")
        self.assertLessEqual(len(self.reactor._newTimedCalls), _NEW_CALLS_BOUND + 1)
        self.assertEqual(len(self.reactor.getDelayedCalls()), _NEW_CALLS_BOUND + 3)
