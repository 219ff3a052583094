"""
Explaining a routing decision to an operator: from a URL (or a Host and a
request target) as a client would send it, through the same normalisation the
proxy applies, to the lines of L{RouteTable.explain}.
"""

from __future__ import annotations

from edd_gateway.routes.normalize import (
    BadRequestTarget,
    normalize_host,
    normalize_request_target,
    split_absolute_form,
)
from edd_gateway.routes.table import RouteTable

__all__ = ["ExplainInputError", "explain_request", "explain_url"]


class ExplainInputError(ValueError):
    """The URL, host or path given cannot be a request the gateway routes."""


def explain_url(table: RouteTable, url: str) -> tuple[list[str], bool]:
    """
    Explain how a request for C{url} (C{http://host/path?query}; a missing
    scheme means C{http://}) is routed.

    @return: the lines, and whether a route matched.
    @raise ExplainInputError: when the proxy would answer 400 to it.
    """
    if "://" not in url:
        url = "http://" + url
    try:
        parts = split_absolute_form(url.encode("utf-8"))
    except BadRequestTarget as error:
        raise ExplainInputError(f"{url}: {error}") from error
    if parts is None:
        raise ExplainInputError(f"{url}: expected a URL like http://host/path")
    authority, target = parts
    return explain_request(table, authority.decode("utf-8"), target.decode("utf-8"))


def explain_request(table: RouteTable, host: str, target: str) -> tuple[list[str], bool]:
    """
    Explain how a request with Host C{host} for C{target} (C{/path?query})
    is routed.

    @return: the lines, and whether a route matched.
    @raise ExplainInputError: when the proxy would answer 400 to it.
    """
    normal_host = normalize_host(host)
    if normal_host is None:
        raise ExplainInputError(f"host {host!r} is not a valid host name or IP address (400)")
    if not target.startswith("/"):
        target = "/" + target
    try:
        path, query = normalize_request_target(target.encode("utf-8"))
    except BadRequestTarget as error:
        raise ExplainInputError(f"path {target!r}: {error} (400)") from error
    lines = [f"request: Host {host!r}, target {target!r}"]
    lines += table.explain(normal_host, path)
    matched = table.lookup(normal_host, path) is not None
    if matched and query:
        lines.append(f"query: ?{query} (appended to the upstream path)")
    return lines, matched
