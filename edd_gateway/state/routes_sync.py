"""
The routes file and the C{static_routes} table together.

On start and on every reload of the routes file, its routes are upserted
into C{static_routes} and recorded in C{gateway_file_routes}; rows recorded
there that left the file are deleted (the original gateway never deleted
them).  Rows that others inserted are routed too: the route list is the
file's own routes first (with everything the file can say that the table
cannot: exact matches, timeouts, TLS passthrough), then the other rows in
priority order.  The table keeps the first of two routes for the same host
and path, so the file wins over a row that only differs by a trailing slash.

The pure half (rows from routes, routes from rows) is separate from the SQL
half (an interaction on a txpostgres cursor) so both can be tested alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from edd_gateway.routes.fields import parse_route_host, parse_route_path, parse_target
from edd_gateway.routes.model import MatchKind, Route

__all__ = [
    "SELECT_STATIC_ROUTES", "StaticRouteRow", "file_route_rows", "merge_routes", "row_priority",
    "routes_from_rows", "static_route_rows", "sync_file_routes_interaction",
]


@dataclass(frozen=True, slots=True)
class StaticRouteRow:
    """One row of C{static_routes}; C{from_file} when C{gateway_file_routes} lists it."""

    host: str
    path_prefix: str
    target: str
    strip_prefix: bool = False
    priority: int = 0
    id: int | None = None
    from_file: bool = False


def row_priority(path_prefix: str) -> int:
    """The original gateway's priority: longer prefixes first, C{/} last."""
    return 0 if path_prefix == "/" else len(path_prefix) * 10


def file_route_rows(routes: Iterable[Route]) -> list[StaticRouteRow]:
    """
    The rows that represent the file's routes.  Exact-match routes have no
    row (the table only knows prefixes); they are still routed from the file.
    """
    rows: dict[tuple[str, str], StaticRouteRow] = {}
    for route in routes:
        if route.match is not MatchKind.PREFIX:
            continue
        key = (route.host, route.path)
        if key not in rows:
            rows[key] = StaticRouteRow(route.host, route.path, str(route.target), route.strip_prefix,
                                       row_priority(route.path), from_file=True)
    return list(rows.values())


def routes_from_rows(rows: Iterable[StaticRouteRow]) -> tuple[list[Route], list[str]]:
    """
    Routes for the rows others inserted (file rows are skipped: the file's
    own routes stand for them), highest priority first, and one problem
    line per row that cannot be routed.
    """
    routes: list[Route] = []
    problems: list[str] = []
    others = sorted((row for row in rows if not row.from_file),
                    key=lambda row: (-row.priority, row.id if row.id is not None else 0))
    for row in others:
        where = f"static_routes id {row.id}" if row.id is not None else "static_routes"
        try:
            host = parse_route_host(row.host)
            path = parse_route_path(row.path_prefix, MatchKind.PREFIX)
            target = parse_target(row.target)
        except ValueError as error:
            problems.append(f"{where} ({row.host} {row.path_prefix}): {error}")
            continue
        routes.append(Route(host=host, path=path, target=target, strip_prefix=row.strip_prefix,
                            source=where))
    return routes, problems


def merge_routes(file_routes: Sequence[Route], other_routes: Sequence[Route]) -> list[Route]:
    """The route list for the table: the file's routes first, then the others'."""
    return [*file_routes, *other_routes]


SELECT_STATIC_ROUTES = (
    "SELECT s.id, s.host, s.path_prefix, s.target, s.strip_prefix, s.priority, f.host IS NOT NULL"
    " FROM static_routes s LEFT JOIN gateway_file_routes f"
    " ON f.host = s.host AND f.path_prefix = s.path_prefix"
)

# IS DISTINCT FROM: a resync that changes nothing writes nothing (no dead
# tuples every poll interval).
_UPSERT = """
    INSERT INTO static_routes (host, path_prefix, target, strip_prefix, priority)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::boolean[], %s::int[])
    ON CONFLICT (host, path_prefix) DO UPDATE
    SET target = EXCLUDED.target, strip_prefix = EXCLUDED.strip_prefix, priority = EXCLUDED.priority
    WHERE (static_routes.target, static_routes.strip_prefix, static_routes.priority)
          IS DISTINCT FROM (EXCLUDED.target, EXCLUDED.strip_prefix, EXCLUDED.priority)
"""
_RECORD = """
    INSERT INTO gateway_file_routes (host, path_prefix)
    SELECT * FROM unnest(%s::text[], %s::text[])
    ON CONFLICT DO NOTHING
"""
_KEPT = "SELECT 1 FROM unnest(%s::text[], %s::text[]) AS kept(host, path_prefix)"
_DELETE_STALE = f"""
    DELETE FROM static_routes s USING gateway_file_routes f
    WHERE f.host = s.host AND f.path_prefix = s.path_prefix
      AND NOT EXISTS ({_KEPT} WHERE kept.host = s.host AND kept.path_prefix = s.path_prefix)
"""
_FORGET_STALE = f"""
    DELETE FROM gateway_file_routes f
    WHERE NOT EXISTS ({_KEPT} WHERE kept.host = f.host AND kept.path_prefix = f.path_prefix)
"""


def sync_file_routes_interaction(cursor: Any, rows: Sequence[StaticRouteRow]) -> Deferred[None]:
    """
    For C{runInteraction}: make the table hold exactly C{rows} as the file's
    rows, in one transaction (a row the file takes over from someone else
    becomes the file's, as the original gateway's upsert did).
    """
    return ensureDeferred(_sync(cursor, rows))


async def _sync(cursor: Any, rows: Sequence[StaticRouteRow]) -> None:
    hosts = [row.host for row in rows]
    paths = [row.path_prefix for row in rows]
    await cursor.execute(_UPSERT, (hosts, paths, [row.target for row in rows],
                                   [row.strip_prefix for row in rows], [row.priority for row in rows]))
    await cursor.execute(_RECORD, (hosts, paths))
    await cursor.execute(_DELETE_STALE, (hosts, paths))
    await cursor.execute(_FORGET_STALE, (hosts, paths))


def static_route_rows(records: Iterable[Sequence[Any]]) -> list[StaticRouteRow]:
    """Rows of L{SELECT_STATIC_ROUTES} as L{StaticRouteRow}s."""
    return [StaticRouteRow(host, path_prefix, target, bool(strip_prefix), int(priority or 0), row_id, bool(mine))
            for row_id, host, path_prefix, target, strip_prefix, priority, mine in records]
