"""
Tests for L{edd_gateway.routes.table}: lookup priority, segment boundaries,
strip_prefix, explain, and the live table's swap and LRU.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.loader import load_routes_file
from edd_gateway.routes.model import MatchKind, Route, RouteMatch, Target
from edd_gateway.routes.table import LiveRouteTable, RouteTable

ORIGINALS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "original")


def route(host: str, path: str, match: MatchKind = MatchKind.PREFIX, strip: bool = False,
          target: str = "backend", passthrough: bool = False) -> Route:
    return Route(host=host, path=path, target=Target(target, 80), match=match, strip_prefix=strip,
                 tls_passthrough=passthrough, source=f"test:{target}")


def winner(table: RouteTable | LiveRouteTable, host: str, path: str) -> tuple[str, str] | None:
    """The winning route's target name and the upstream path."""
    match = table.lookup(host, path)
    return None if match is None else (match.route.target.host, match.upstream_path)


class LookupTests(SynchronousTestCase):
    """Priority: exact, then the longest prefix on a segment boundary, then /."""

    table = RouteTable([
        route("a.com", "/", target="root"),
        route("a.com", "/compute", target="compute"),
        route("a.com", "/compute/admin", target="admin"),
        route("a.com", "/compute/status", MatchKind.EXACT, target="status"),
        route("b.com", "/api", strip=True, target="api"),
        route("b.com", "/login", MatchKind.EXACT, strip=True, target="login"),
        route("c.com", "/", strip=True, target="c-root"),
    ])

    def test_exactWins(self) -> None:
        self.assertEqual(winner(self.table, "a.com", "/compute/status"), ("status", "/compute/status"))

    def test_exactMatchesOnlyItsPath(self) -> None:
        self.assertEqual(winner(self.table, "a.com", "/compute/status/x"), ("compute", "/compute/status/x"))
        self.assertEqual(winner(self.table, "a.com", "/compute/status/"), ("compute", "/compute/status/"))

    def test_longestPrefixWins(self) -> None:
        self.assertEqual(winner(self.table, "a.com", "/compute/admin/users"), ("admin", "/compute/admin/users"))
        self.assertEqual(winner(self.table, "a.com", "/compute/x"), ("compute", "/compute/x"))

    def test_segmentBoundaries(self) -> None:
        self.assertEqual(winner(self.table, "a.com", "/compute"), ("compute", "/compute"))
        self.assertEqual(winner(self.table, "a.com", "/compute/"), ("compute", "/compute/"))
        self.assertEqual(winner(self.table, "a.com", "/computex"), ("root", "/computex"))
        self.assertEqual(winner(self.table, "a.com", "/compute/adminx"), ("compute", "/compute/adminx"))

    def test_rootLast(self) -> None:
        self.assertEqual(winner(self.table, "a.com", "/"), ("root", "/"))
        self.assertEqual(winner(self.table, "a.com", "/other/x"), ("root", "/other/x"))

    def test_unknownHostOrNoRoot(self) -> None:
        self.assertIsNone(self.table.lookup("z.com", "/"))
        self.assertIsNone(self.table.lookup("b.com", "/"))
        self.assertIsNone(self.table.lookup("b.com", "/apix"))

    def test_stripPrefix(self) -> None:
        self.assertEqual(winner(self.table, "b.com", "/api/users/1"), ("api", "/users/1"))
        self.assertEqual(winner(self.table, "b.com", "/api/"), ("api", "/"))
        self.assertEqual(winner(self.table, "b.com", "/api"), ("api", "/"))
        self.assertEqual(winner(self.table, "b.com", "/login"), ("login", "/"))

    def test_rootRouteStripsNothing(self) -> None:
        self.assertEqual(winner(self.table, "c.com", "/x/y"), ("c-root", "/x/y"))

    def test_matchCarriesRoute(self) -> None:
        match = self.table.lookup("a.com", "/compute/x")
        self.assertIsInstance(match, RouteMatch)
        assert match is not None
        self.assertIs(match.route, self.table.routes[1])

    def test_prefixWithTrailingSlashFromOtherSources(self) -> None:
        table = RouteTable([route("a.com", "/api/", target="api")])
        self.assertEqual(winner(table, "a.com", "/api"), ("api", "/api"))
        self.assertEqual(winner(table, "a.com", "/api/v1"), ("api", "/api/v1"))

    def test_firstOfDuplicatesKept(self) -> None:
        table = RouteTable([route("a.com", "/x", target="first"), route("a.com", "/x", target="second")])
        self.assertEqual(len(table), 1)
        self.assertEqual(winner(table, "a.com", "/x"), ("first", "/x"))

    def test_collectionInterface(self) -> None:
        self.assertEqual(len(self.table), 7)
        self.assertEqual(self.table.routes[0].target.host, "root")
        self.assertEqual(self.table.hosts(), ("a.com", "b.com", "c.com"))
        self.assertEqual(len(RouteTable()), 0)

    def test_tlsPassthrough(self) -> None:
        table = RouteTable([route("vm.com", "/", passthrough=True), route("a.com", "/")])
        self.assertEqual(table.tls_passthrough("vm.com"), table.routes[0])
        self.assertIsNone(table.tls_passthrough("a.com"))
        self.assertIsNone(table.tls_passthrough("z.com"))


class OriginalRoutesTests(SynchronousTestCase):
    """The production ConfigMap routes as the seed documents them."""

    def setUp(self) -> None:
        self.table = RouteTable(load_routes_file(os.path.join(ORIGINALS, "gateway-routes.configmap.yaml")))

    def test_routing(self) -> None:
        expectations = {
            ("cloud-api.eddisonso.com", "/compute/containers"): "edd-compute",
            ("cloud-api.eddisonso.com", "/sse/health"): "cluster-monitor",
            ("cloud-api.eddisonso.com", "/sse/other"): "simple-file-share-backend",
            ("cloud-api.eddisonso.com", "/ws/logs/pod-1"): "log-service",
            ("health.cloud.eddisonso.com", "/sse/logs"): "log-service",
            ("health.cloud.eddisonso.com", "/sse/logsx"): "cluster-monitor",
            ("cloud.eddisonso.com", "/index.html"): "simple-file-share-frontend",
        }
        for (host, path), target in expectations.items():
            self.assertEqual(winner(self.table, host, path), (target, path))


class LargeTableTests(SynchronousTestCase):
    """A 10,000-route table answers correctly."""

    def test_tenThousandRoutes(self) -> None:
        routes = [route(f"h{n % 100}.example.com", f"/svc{n}/v{n % 7}", target=f"t{n}") for n in range(9900)]
        routes += [route(f"h{n}.example.com", "/", target=f"root{n}") for n in range(100)]
        table = RouteTable(routes)
        self.assertEqual(len(table), 10000)
        for n in range(0, 9900, 37):
            host = f"h{n % 100}.example.com"
            self.assertEqual(winner(table, host, f"/svc{n}/v{n % 7}/deep/path"), (f"t{n}", f"/svc{n}/v{n % 7}/deep/path"))
            self.assertEqual(winner(table, host, f"/svc{n}/v{n % 7}x"), (f"root{n % 100}", f"/svc{n}/v{n % 7}x"))
            self.assertEqual(winner(table, f"h{(n + 1) % 100}.example.com", f"/svc{n}/v{n % 7}")[0],
                             f"root{(n + 1) % 100}")


def referenceLookup(routes: list[Route], host: str, path: str) -> str | None:
    """The rules stated plainly, by scanning every route."""
    for candidate in routes:
        if candidate.host == host and candidate.match is MatchKind.EXACT and candidate.path == path:
            return candidate.target.host
    best: Route | None = None
    for candidate in routes:
        prefix = candidate.path
        matches = prefix == "/" or path == prefix or path.startswith(prefix + "/")
        if candidate.host == host and candidate.match is MatchKind.PREFIX and matches:
            if best is None or len(prefix) > len(best.path):
                best = candidate
    return best.target.host if best else None


_SEGMENT = st.sampled_from(["a", "b", "ab"])
_PATHS = st.lists(_SEGMENT, max_size=4).map(lambda segments: "/" + "/".join(segments))


class ReferenceTests(SynchronousTestCase):
    """The indexed lookup agrees with scanning every route."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["x.com", "y.com"]), _PATHS, st.booleans()), max_size=12,
                    unique_by=lambda spec: spec),
           st.sampled_from(["x.com", "y.com"]), _PATHS, st.booleans())
    def test_agreesWithReference(self, specs: list[tuple[str, str, bool]], host: str, path: str,
                                 trailing: bool) -> None:
        routes = [route(h, p, MatchKind.EXACT if exact else MatchKind.PREFIX, target=f"t{i}")
                  for i, (h, p, exact) in enumerate(specs)]
        if trailing and path != "/":
            path += "/"
        expected = referenceLookup(routes, host, path)
        actual = winner(RouteTable(routes), host, path)
        self.assertEqual(actual[0] if actual else None, expected)


class ExplainTests(SynchronousTestCase):
    """L{RouteTable.explain} tells which candidates won and lost."""

    table = LookupTests.table

    def test_prefixWinner(self) -> None:
        lines = self.table.explain("a.com", "/compute/admin/x")
        self.assertEqual(lines[:3], ["host: a.com", "path: /compute/admin/x", "exact /compute/admin/x: no route"])
        self.assertIn("prefix /compute/admin/x: no route", lines)
        self.assertIn("prefix /compute/admin: test:admin: a.com prefix /compute/admin -> admin:80"
                      " -- wins: the longest prefix matching on a segment boundary", lines)
        self.assertIn("prefix /compute: test:compute: a.com prefix /compute -> compute:80"
                      " -- loses: /compute/admin is a longer prefix", lines)
        self.assertIn("other route test:status: a.com exact /compute/status -> status:80"
                      " -- does not match this path", lines)
        self.assertEqual(lines[-2:], ["result: test:admin: a.com prefix /compute/admin -> admin:80",
                                      "upstream path: /compute/admin/x"])

    def test_exactWinner(self) -> None:
        lines = self.table.explain("a.com", "/compute/status")
        self.assertIn("exact /compute/status: test:status: a.com exact /compute/status -> status:80"
                      " -- wins: an exact route comes first", lines)
        self.assertIn("prefix /compute: test:compute: a.com prefix /compute -> compute:80"
                      " -- loses: an exact route wins", lines)

    def test_stripShown(self) -> None:
        lines = self.table.explain("b.com", "/api/v1")
        self.assertEqual(lines[-2:], ["result: test:api: b.com prefix /api -> api:80, strip_prefix",
                                      "upstream path: /v1"])

    def test_noRoute(self) -> None:
        self.assertEqual(self.table.explain("z.com", "/"), [
            "host: z.com", "path: /", "no route has host z.com (3 hosts have routes)",
            "result: no route (the gateway answers 404)"])
        self.assertEqual(self.table.explain("b.com", "/x")[-1],
                         "result: no route for this path on b.com (the gateway answers 404)")


class LiveRouteTableTests(SynchronousTestCase):
    """The live table: swap, observers and the LRU."""

    def setUp(self) -> None:
        self.first = RouteTable([route("a.com", "/", target="one")])
        self.second = RouteTable([route("a.com", "/", target="two")])
        self.live = LiveRouteTable(self.first)

    def test_emptyByDefault(self) -> None:
        live = LiveRouteTable()
        self.assertEqual(len(live.current), 0)
        self.assertIsNone(live.lookup("a.com", "/"))

    def test_lookupThroughCache(self) -> None:
        first = self.live.lookup("a.com", "/x")
        self.assertEqual(winner(self.live, "a.com", "/x"), ("one", "/x"))
        self.assertIs(self.live.lookup("a.com", "/x"), first)
        self.assertEqual(self.live.cached_entries, 1)

    def test_swapReplacesTableAndCache(self) -> None:
        self.live.lookup("a.com", "/x")
        self.live.swap(self.second)
        self.assertIs(self.live.current, self.second)
        self.assertEqual(self.live.cached_entries, 0)
        self.assertEqual(winner(self.live, "a.com", "/x"), ("two", "/x"))

    def test_missesCachedAndInvalidated(self) -> None:
        self.assertIsNone(self.live.lookup("b.com", "/"))
        self.live.swap(RouteTable([route("b.com", "/", target="b")]))
        self.assertEqual(winner(self.live, "b.com", "/"), ("b", "/"))

    def test_lruBounded(self) -> None:
        for n in range(250):
            self.live.lookup("a.com", f"/{n}")
            self.assertLessEqual(self.live.cached_entries, 100)
        self.assertEqual(self.live.cached_entries, 100)

    def test_lruEvictsLeastRecentlyUsed(self) -> None:
        live = LiveRouteTable(self.first, cache_size=2)
        kept = live.lookup("a.com", "/kept")
        dropped = live.lookup("a.com", "/dropped")
        self.assertIs(live.lookup("a.com", "/kept"), kept)
        live.lookup("a.com", "/new")
        self.assertIs(live.lookup("a.com", "/kept"), kept)
        recomputed = live.lookup("a.com", "/dropped")
        self.assertEqual(recomputed, dropped)
        self.assertIsNot(recomputed, dropped)
        self.assertEqual(live.cached_entries, 2)

    def test_observersToldAfterSwap(self) -> None:
        seen: list[tuple[RouteTable, RouteTable]] = []
        self.live.observers.append(lambda table: seen.append((table, self.live.current)))
        self.live.swap(self.second)
        self.assertEqual(seen, [(self.second, self.second)])

    def test_failingObserverLoggedOthersStillTold(self) -> None:
        seen: list[RouteTable] = []

        def broken(table: RouteTable) -> None:
            raise RuntimeError("observer bug")

        self.live.observers.extend([broken, seen.append])
        self.live.swap(self.second)
        self.assertEqual(seen, [self.second])
        self.assertIs(self.live.current, self.second)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
