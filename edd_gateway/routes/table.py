"""
The route table: which route a normalised (host, path) goes to.

A L{RouteTable} is immutable and built once per routes version: a dict from
host to that host's exact and prefix indexes, so a lookup costs one dict probe
per segment boundary of the request path, whatever the number of routes.
L{LiveRouteTable} holds the current table, swaps in a new one atomically when
a source reloads, and keeps the seed gateway's 100-entry LRU of recent answers
in front of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from edd_gateway.routes.model import MatchKind, Route, RouteMatch

__all__ = ["LiveRouteTable", "RouteTable", "describe_route"]

_EXPLAIN_OTHERS_LIMIT = 20


def describe_route(route: Route) -> str:
    """One line naming a route, for logs and C{explain}."""
    flags = ["strip_prefix" if route.strip_prefix else "", "redirect_https" if route.redirect_https else "",
             "tls passthrough" if route.tls_passthrough else "",
             f"protocol {route.protocol} (HTTP/2 cleartext to the backend)" if route.http2_backend else ""]
    extra = "".join(f", {flag}" for flag in flags if flag)
    return f"{route.source or '?'}: {route.host} {route.match.value} {route.path} -> {route.target}{extra}"


class _HostRoutes:
    """One host's routes: exact paths and prefix paths (no trailing slash)."""

    __slots__ = ("exact", "prefix")

    def __init__(self) -> None:
        self.exact: dict[str, Route] = {}
        self.prefix: dict[str, Route] = {}


class RouteTable:
    """
    An immutable set of routes indexed for lookup.

    When two routes share host, match kind and path (the loader refuses that,
    other sources might not) the first one is kept.
    """

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        hosts: dict[str, _HostRoutes] = {}
        kept: list[Route] = []
        for route in routes:
            entry = hosts.get(route.host)
            if entry is None:
                entry = hosts[route.host] = _HostRoutes()
            if route.match is MatchKind.EXACT:
                index, key = entry.exact, route.path
            else:
                index, key = entry.prefix, route.path.rstrip("/") or "/"
            if key not in index:
                index[key] = route
                kept.append(route)
        self._hosts = hosts
        self._routes = tuple(kept)

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        return f"<RouteTable {len(self._routes)} routes, {len(self._hosts)} hosts>"

    @property
    def routes(self) -> tuple[Route, ...]:
        """The routes in the order given (duplicates dropped)."""
        return self._routes

    def hosts(self) -> tuple[str, ...]:
        """Every host that has at least one route, sorted."""
        return tuple(sorted(self._hosts))

    def tls_passthrough(self, host: str) -> Route | None:
        """The route relaying TLS for C{host} undecrypted, if it has one."""
        entry = self._hosts.get(host)
        if entry is None:
            return None
        route = entry.prefix.get("/")
        return route if route is not None and route.tls_passthrough else None

    def lookup(self, host: str, path: str) -> RouteMatch | None:
        """
        The route for an already normalised host and path (no query): an
        exact route for the path, else the longest prefix route matching on a
        segment boundary (the host's C{/} route last), else L{None}.
        """
        entry = self._hosts.get(host)
        if entry is None:
            return None
        route = entry.exact.get(path)
        if route is not None:
            return RouteMatch(route, "/" if route.strip_prefix else path)
        # The walk of _boundaries(), inlined: this runs for every request.
        prefixes = entry.prefix
        candidate = path.rstrip("/") or "/"
        while True:
            route = prefixes.get(candidate)
            if route is not None:
                return RouteMatch(route, _upstream_path(route, candidate, path))
            if candidate == "/":
                return None
            candidate = candidate[: candidate.rfind("/")] or "/"

    def explain(self, host: str, path: str) -> list[str]:
        """
        Lines telling how C{lookup(host, path)} decides: each candidate
        considered, why it won or lost, and the result.
        """
        lines = [f"host: {host}", f"path: {path}"]
        entry = self._hosts.get(host)
        if entry is None:
            lines.append(f"no route has host {host} ({len(self._hosts)} hosts have routes)")
            return lines + ["result: no route (the gateway answers 404)"]
        match = self.lookup(host, path)
        winner = match.route if match is not None else None
        exact = entry.exact.get(path)
        if exact is None:
            lines.append(f"exact {path}: no route")
        else:
            lines.append(f"exact {path}: {describe_route(exact)} -- wins: an exact route comes first")
        considered = {id(exact)}
        for candidate in _boundaries(path):
            route = entry.prefix.get(candidate)
            if route is None:
                lines.append(f"prefix {candidate}: no route")
                continue
            considered.add(id(route))
            if route is winner:
                why = "wins: the longest prefix matching on a segment boundary"
            elif winner is not None and winner.match is MatchKind.EXACT:
                why = "loses: an exact route wins"
            else:
                why = f"loses: {winner.path if winner else '?'} is a longer prefix"
            lines.append(f"prefix {candidate}: {describe_route(route)} -- {why}")
        lines.extend(_unmatched(entry, considered))
        if match is None:
            return lines + [f"result: no route for this path on {host} (the gateway answers 404)"]
        return lines + [f"result: {describe_route(match.route)}", f"upstream path: {match.upstream_path}"]


def _boundaries(path: str) -> Iterable[str]:
    """C{/a/b/c} gives C{/a/b/c}, C{/a/b}, C{/a}, C{/}: longest first."""
    candidate = path.rstrip("/") or "/"
    while True:
        yield candidate
        if candidate == "/":
            return
        candidate = candidate[: candidate.rfind("/")] or "/"


def _upstream_path(route: Route, prefix: str, path: str) -> str:
    if not route.strip_prefix or prefix == "/":
        return path
    return path[len(prefix):] or "/"


def _unmatched(entry: _HostRoutes, considered: set[int]) -> list[str]:
    others = [route for route in (*entry.exact.values(), *entry.prefix.values())
              if id(route) not in considered]
    lines = [f"other route {describe_route(route)} -- does not match this path"
             for route in others[:_EXPLAIN_OTHERS_LIMIT]]
    if len(others) > _EXPLAIN_OTHERS_LIMIT:
        lines.append(f"... and {len(others) - _EXPLAIN_OTHERS_LIMIT} more routes on this host")
    return lines


class LiveRouteTable:
    """
    The table in force, swapped whole when a source reloads.

    L{lookup} answers from an LRU of the last C{cache_size} (host, path)
    pairs, misses included; L{swap} replaces the table and the cache together.

    @ivar observers: callables given each new table after a swap.
    """

    _log = Logger()

    def __init__(self, table: RouteTable | None = None, cache_size: int = 100) -> None:
        self._table = table if table is not None else RouteTable()
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], RouteMatch | None] = OrderedDict()
        self.observers: list[Callable[[RouteTable], object]] = []

    @property
    def current(self) -> RouteTable:
        """The table lookups use now."""
        return self._table

    @property
    def cached_entries(self) -> int:
        """How many answers the LRU holds (never more than its size)."""
        return len(self._cache)

    def swap(self, table: RouteTable) -> None:
        """Put C{table} in force, forget cached answers, tell observers."""
        self._table = table
        self._cache = OrderedDict()
        for observer in list(self.observers):
            try:
                observer(table)
            except Exception:
                self._log.failure("Route table observer {observer!r} failed", observer=observer)

    def lookup(self, host: str, path: str) -> RouteMatch | None:
        """L{RouteTable.lookup} on the current table, through the LRU."""
        key = (host, path)
        cache = self._cache
        try:
            match = cache[key]
        except KeyError:
            match = self._table.lookup(host, path)
            cache[key] = match
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
            return match
        cache.move_to_end(key)
        return match
