"""L{edd_gateway.h2.bounded.keep}: a table never holds more than its bound, and keeps the newest entry."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.bounded import keep


class KeepTests(SynchronousTestCase):
    def test_kept_under_the_bound(self) -> None:
        table: dict[int, str] = {}
        for n in range(3):
            keep(table, n, str(n), 3)
        self.assertEqual(table, {0: "0", 1: "1", 2: "2"})

    def test_emptied_at_the_bound_then_the_new_entry_kept(self) -> None:
        table = {0: "0", 1: "1", 2: "2"}
        keep(table, 3, "3", 3)
        self.assertEqual(table, {3: "3"})

    def test_never_over_the_bound(self) -> None:
        table: dict[int, int] = {}
        for n in range(1000):
            keep(table, n, n, 7)
            self.assertLessEqual(len(table), 7)
            self.assertEqual(table[n], n)
