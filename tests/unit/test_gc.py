"""
The collector tuning applied once the gateway runs (edd_gateway.runtime.gc).
"""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.runtime.gc import YOUNG_THRESHOLD, settle_heap


class SettleHeapTests(SynchronousTestCase):
    def setUp(self) -> None:
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_freezes_what_is_alive(self) -> None:
        """What is alive when the service starts is left out of later collections."""
        gc.unfreeze()
        alive = [object() for _ in range(3)], {"route": ["table"]}
        settle_heap()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertTrue(gc.is_tracked(alive[1]))
        self.assertNotIn(alive[1], gc.get_objects())

    def test_spaces_young_passes(self) -> None:
        """Young passes run every YOUNG_THRESHOLD allocations; the older generations keep their ratios."""
        gc.set_threshold(700, 11, 12)
        settle_heap()
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD, 11, 12))
