"""
Tests for L{edd_gateway.state.routes_sync}: which rows stand for the routes
file, how others' rows become routes.  The sync itself, against a throwaway
PostgreSQL: C{tests/integration/test_state_routes_sync.py}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.loader import load_routes_text
from edd_gateway.routes.model import MatchKind, Target
from edd_gateway.routes.table import RouteTable
from edd_gateway.state.routes_sync import (
    StaticRouteRow,
    file_route_rows,
    merge_routes,
    routes_from_rows,
)
from tests._support.routes_sync import FILE

class PureTests(SynchronousTestCase):
    def test_file_rows(self) -> None:
        rows = file_route_rows(load_routes_text(FILE, "routes.yaml"))
        self.assertEqual(rows, [
            StaticRouteRow("cloud-api.example.com", "/", "backend:80", False, 0, from_file=True),
            StaticRouteRow("cloud-api.example.com", "/compute", "edd-compute:80", True, 80, from_file=True),
            StaticRouteRow("welcome.example.com", "/", "internal:welcome", False, 0, from_file=True),
        ])

    def test_others_rows_become_routes_by_priority(self) -> None:
        routes, problems = routes_from_rows([
            StaticRouteRow("a.example.com", "/", "low:80", priority=0, id=1),
            StaticRouteRow("A.Example.com", "/api/", "high:81", strip_prefix=True, priority=40, id=2),
            StaticRouteRow("mine.example.com", "/", "file:80", id=3, from_file=True),
            StaticRouteRow("bad host!", "/", "x:80", id=4),
            StaticRouteRow("b.example.com", "nope", "x:80", id=5),
            StaticRouteRow("b.example.com", "/", "no-port", id=6),
        ])
        self.assertEqual([(r.host, r.path, r.target, r.strip_prefix, r.source) for r in routes], [
            ("a.example.com", "/api", Target("high", 81), True, "static_routes id 2"),
            ("a.example.com", "/", Target("low", 80), False, "static_routes id 1"),
        ])
        self.assertTrue(all(r.match is MatchKind.PREFIX for r in routes))
        self.assertEqual([problem.split(" (")[0] for problem in problems],
                         ["static_routes id 4", "static_routes id 5", "static_routes id 6"])

    def test_file_wins_over_an_equivalent_row(self) -> None:
        file_routes = load_routes_text(FILE, "routes.yaml")
        others, _ = routes_from_rows([StaticRouteRow("cloud-api.example.com", "/compute/", "other:80", id=9)])
        table = RouteTable(merge_routes(file_routes, others))
        match = table.lookup("cloud-api.example.com", "/compute/x")
        self.assertEqual(match.route.target, Target("edd-compute", 80))
