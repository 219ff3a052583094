"""
L{edd_gateway.state.routes_sync} against a throwaway PostgreSQL: upsert,
stale file rows deleted, others' rows kept and routed.  Which rows stand
for the routes file and how others' rows become routes (pure) are
C{tests/unit/test_state_routes_sync.py}'s.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from edd_gateway.routes.loader import load_routes_text
from edd_gateway.state.postgres import PostgresDatabase
from edd_gateway.state.routes_sync import file_route_rows
from edd_gateway.testing.postgres import start_postgres
from tests._support.routes_sync import FILE


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
        # xmin is the transaction that wrote a row version: equal before and
        # after says nothing was rewritten, but only if there were rows, and
        # only if a rewrite would show (both proven here, or the test passes
        # on a sync that writes nothing at all).
        empty = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        self.assertEqual(empty, [])
        await database.sync_file_routes(routes)
        before = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        self.assertEqual(len(before), len(file_route_rows(routes)), "the first sync wrote the file's rows")
        self.assertEqual(len(before), 3)
        recorded = await server.query("SELECT xmin::text, host, path_prefix FROM gateway_file_routes"
                                      " ORDER BY host, path_prefix")
        self.assertEqual(len(recorded), 3, "the first sync recorded the file's rows")
        await database.sync_file_routes(routes)
        after = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        self.assertEqual(before, after)
        self.assertEqual(await server.query("SELECT xmin::text, host, path_prefix FROM gateway_file_routes"
                                            " ORDER BY host, path_prefix"), recorded)
        # The same probe sees a real change: one route's target rewritten.
        changed = load_routes_text(FILE.replace("backend:80", "backend:8080"), "routes.yaml")
        await database.sync_file_routes(changed)
        rewritten = await server.query("SELECT xmin::text, id FROM static_routes ORDER BY id")
        self.assertEqual([row[1] for row in rewritten], [row[1] for row in before], "upserted in place")
        self.assertEqual(sum(old != new for old, new in zip(before, rewritten)), 1)
