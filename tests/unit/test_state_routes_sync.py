"""
Tests for L{edd_gateway.state.routes_sync}: which rows stand for the routes
file, how others' rows become routes, and, against a throwaway PostgreSQL,
the sync itself: upsert, stale file rows deleted, others' rows kept and
routed.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from edd_gateway.routes.loader import load_routes_text
from edd_gateway.routes.model import MatchKind, Target
from edd_gateway.routes.table import RouteTable
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.routes_sync import (
    StaticRouteRow,
    file_route_rows,
    merge_routes,
    routes_from_rows,
)
from edd_gateway.testing._postgres import start_postgres

FILE = """\
routes:
  - host: cloud-api.example.com
    path: /
    target: backend:80
  - host: cloud-api.example.com
    path: /compute/
    target: edd-compute:80
    strip_prefix: true
  - host: cloud-api.example.com
    path: /exact
    match: exact
    target: exact:80
  - host: welcome.example.com
    path: /
    target: internal:welcome
"""


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


class DatabaseSyncTests(TestCase):
    async def test_upsert_delete_stale_keep_others(self) -> None:
        server = await start_postgres(self)
        database = PostgresDatabase(server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        await server.execute("INSERT INTO static_routes (host, path_prefix, target, strip_prefix, priority)"
                             " VALUES ('other.example.com', '/', '10.0.0.7:8080', false, 0),"
                             " ('cloud-api.example.com', '/compute', 'stolen:80', false, 5)")
        first = load_routes_text(FILE, "routes.yaml")
        await database.sync_file_routes(first)
        rows = await server.query("SELECT host, path_prefix, target, strip_prefix, priority FROM static_routes"
                                  " ORDER BY host, path_prefix")
        self.assertEqual(rows, [
            ("cloud-api.example.com", "/", "backend:80", False, 0),
            # The file takes over a row with its key, as the original gateway's upsert did.
            ("cloud-api.example.com", "/compute", "edd-compute:80", True, 80),
            ("other.example.com", "/", "10.0.0.7:8080", False, 0),
            ("welcome.example.com", "/", "internal:welcome", False, 0),
        ])
        others = await database.load_other_routes()
        self.assertEqual([(r.host, str(r.target)) for r in others], [("other.example.com", "10.0.0.7:8080")])

        # The next version of the file drops two routes and changes one.
        second = load_routes_text(FILE.replace("backend:80", "backend:8080").split("  - host: welcome")[0]
                                  .replace("path: /compute/", "path: /storage/"), "routes.yaml")
        await database.sync_file_routes(second)
        rows = await server.query("SELECT host, path_prefix, target FROM static_routes ORDER BY host, path_prefix")
        self.assertEqual(rows, [
            ("cloud-api.example.com", "/", "backend:8080"),
            ("cloud-api.example.com", "/storage", "edd-compute:80"),
            ("other.example.com", "/", "10.0.0.7:8080"),
        ])
        recorded = await server.query("SELECT host, path_prefix FROM gateway_file_routes ORDER BY path_prefix")
        self.assertEqual(recorded, [("cloud-api.example.com", "/"), ("cloud-api.example.com", "/storage")])

        # An empty file leaves only the others' rows.
        await database.sync_file_routes([])
        rows = await server.query("SELECT host FROM static_routes")
        self.assertEqual(rows, [("other.example.com",)])

    async def test_unchanged_sync_writes_nothing(self) -> None:
        server = await start_postgres(self)
        database = PostgresDatabase(server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        routes = load_routes_text(FILE, "routes.yaml")
        await database.sync_file_routes(routes)
        before = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        await database.sync_file_routes(routes)
        after = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        self.assertEqual(before, after)
