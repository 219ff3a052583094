"""
One route of the routes file: L{RouteReader} turns a route's mapping into a
L{Route} (its host, path, target and settings, the response header edits and
HSTS this gateway adds), reporting each problem at the node it is about, as
C{file:line: reason}.  The file around the routes (documents, the ConfigMap
manifest, the top level and its defaults) is L{edd_gateway.routes.loader}'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edd_gateway.files.yamlfile import INVALID, NodeReader, is_null, kind
from edd_gateway.routes.fields import (
    parse_duration,
    parse_header_name,
    parse_header_value,
    parse_proxy_protocol,
    parse_route_host,
    parse_route_path,
    parse_target,
)
from edd_gateway.routes.model import PROTOCOLS, Hsts, MatchKind, ResponseHeaders, Route, Target

__all__ = ["ROUTE_KEYS", "RouteReader"]

ROUTE_KEYS = (
    "host", "path", "target", "strip_prefix", "match",
    "connect_timeout", "response_timeout", "redirect_https", "tls", "proxy_protocol",
    "response_headers", "hsts", "protocol",
)
_REQUIRED_KEYS = ("host", "path", "target")
_RESPONSE_HEADERS_KEYS = ("set", "remove")
_HSTS_KEYS = ("max_age", "include_subdomains")
_STS = "strict-transport-security"


class RouteReader(NodeReader):
    """
    Reads route mappings into L{Route}s, collecting problems.

    @ivar source_name: the file's base name, which each route's C{source}
        names with the route's line.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self.source_name = os.path.basename(filename) or filename

    def route(self, node: Node, defaults: dict[str, float]) -> Route | None:
        """The route C{node} describes, C{defaults} filling its timeouts; None when it has problems (reported)."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"each route must be a mapping with host, path and target, got {kind(node)}")
            return None
        fields = self.fields(node, ROUTE_KEYS, "route")
        missing = [name for name in _REQUIRED_KEYS if name not in fields]
        if missing:
            self.problem(node, f"route is missing {', '.join(missing)}")
        values = {name: value for name, (_, value) in fields.items()}
        match = self._choice(values.get("match"), "match", ("prefix", "exact"), "prefix")
        tls = self._choice(values.get("tls"), "tls", ("terminate", "passthrough"), "terminate")
        protocol = self._choice(values.get("protocol"), "protocol", PROTOCOLS, "http")
        host = self._parsed(values["host"], "host", parse_route_host) if "host" in values else INVALID
        path = (self._parsed(values["path"], "path", parse_route_path, MatchKind(match))
                if "path" in values and match is not INVALID else INVALID)
        target = self._parsed(values["target"], "target", parse_target) if "target" in values else INVALID
        proxy_protocol = (self._parsed(values["proxy_protocol"], "proxy_protocol", parse_proxy_protocol)
                          if "proxy_protocol" in values else None)
        settings: dict[str, Any] = {  # booleans and durations (INVALID when reported), by Route field
            "strip_prefix": self.boolean(values.get("strip_prefix"), "strip_prefix"),
            "redirect_https": self.boolean(values.get("redirect_https"), "redirect_https"),
            "connect_timeout": self.duration(values.get("connect_timeout"), "connect_timeout",
                                              defaults.get("connect_timeout")),
            "response_timeout": self.duration(values.get("response_timeout"), "response_timeout",
                                               defaults.get("response_timeout")),
        }
        response_headers = self._response_headers(values.get("response_headers"))
        hsts = self._hsts(values.get("hsts"))
        parts = [match, tls, protocol, host, path, target, proxy_protocol, response_headers, hsts,
                 *settings.values()]
        if missing or any(part is INVALID for part in parts):
            return None
        passthrough = tls == "passthrough"
        if hsts is not None and passthrough:
            # The backend's own TLS answers pass undecrypted: the gateway
            # cannot add to them, and plain HTTP must never carry HSTS.
            self.problem(values["hsts"], "hsts needs tls: terminate (with passthrough the backend's TLS "
                         "answers are not the gateway's to change; set HSTS on the backend)")
            return None
        if passthrough and not self._passthrough_ok(values["tls"], path, match, target):
            return None
        if protocol != "http" and not self._http2_ok(values["protocol"], protocol, passthrough, target):
            return None
        if proxy_protocol is not None and not passthrough:
            # HTTP routes share pooled keep-alive backend connections between
            # clients: a header sent once per connection cannot name them.
            self.problem(values["proxy_protocol"], "proxy_protocol needs tls: passthrough (HTTP routes share "
                         "backend connections between clients; the backend gets X-Forwarded-For instead)")
            return None
        return Route(host=host, path=path, target=target, match=MatchKind(match),
                     tls_passthrough=passthrough, source=f"{self.source_name}:{self.line(node)}",
                     proxy_protocol=proxy_protocol, response_headers=response_headers, hsts=hsts,
                     protocol=protocol, **settings)

    def _response_headers(self, node: Node | None) -> ResponseHeaders | None:
        """C{response_headers: {set: {Name: value}, remove: [Name]}}; L{None} when absent or empty."""
        if node is None or is_null(node):
            return None
        if not isinstance(node, MappingNode):
            self.problem(node, f"response_headers must be a mapping with set and/or remove, got {kind(node)}")
            return INVALID
        fields = self.fields(node, _RESPONSE_HEADERS_KEYS, "response_headers")
        before = len(self.problems)
        seen: dict[str, int] = {}
        pairs = self._header_set(fields["set"][1], seen) if "set" in fields else ()
        removed = self._header_remove(fields["remove"][1], seen) if "remove" in fields else ()
        if len(self.problems) > before:
            return INVALID
        if not pairs and not removed:
            return None
        return ResponseHeaders(set=pairs, remove=removed)

    def _header_set(self, node: Node, seen: dict[str, int]) -> tuple[tuple[str, str], ...]:
        if is_null(node):
            return ()
        if not isinstance(node, MappingNode):
            self.problem(node, f"response_headers set must be a mapping of header names to values, got {kind(node)}")
            return ()
        pairs: list[tuple[str, str]] = []
        for key, value in node.value:
            name = self._header_name(key, seen)
            if name is INVALID:
                continue
            if name.lower() == _STS:
                self.problem(key, "Strict-Transport-Security is set with the route's hsts key, "
                             "which sends it over terminated TLS only")
                continue
            text = self._parsed(value, f"the value of header {name}", parse_header_value)
            if text is not INVALID:
                pairs.append((name, text))
        return tuple(pairs)

    def _header_remove(self, node: Node, seen: dict[str, int]) -> tuple[str, ...]:
        if is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            self.problem(node, f"response_headers remove must be a list of header names, got {kind(node)}")
            return ()
        names = [self._header_name(item, seen) for item in node.value]
        return tuple(name for name in names if name is not INVALID)

    def _header_name(self, node: Node, seen: dict[str, int]) -> str:
        """A header name of set or remove; one name may appear once in both together."""
        name = self._parsed(node, "a header name", parse_header_name)
        if name is INVALID:
            return INVALID
        lower = name.lower()
        if lower in seen:
            self.problem(node, f"header {name!r} given twice in response_headers (first on line {seen[lower]})")
            return INVALID
        seen[lower] = self.line(node)
        return str(name)

    def _hsts(self, node: Node | None) -> Hsts | None:
        """C{hsts: {max_age: SECONDS, include_subdomains: BOOL}}."""
        if node is None:
            return None
        if not isinstance(node, MappingNode):
            self.problem(node, "hsts must be a mapping with max_age (seconds) and optionally include_subdomains, "
                         f"got {kind(node)}")
            return INVALID
        fields = self.fields(node, _HSTS_KEYS, "hsts")
        include = self.boolean(fields["include_subdomains"][1] if "include_subdomains" in fields else None,
                               "include_subdomains")
        if "max_age" not in fields:
            self.problem(node, "hsts is missing max_age (seconds; 0 tells browsers to forget the policy)")
            return INVALID
        age_node = fields["max_age"][1]
        age = self.construct(age_node)
        if age is INVALID:
            return INVALID  # type: ignore[return-value]  # narrowed by the `is` test
        if isinstance(age, bool) or not isinstance(age, int) or age < 0:
            self.problem(age_node, f"hsts max_age must be a whole number of seconds, 0 or more, "
                         f"got {getattr(age_node, 'value', age)!r}")
            return INVALID
        if include is INVALID:
            return INVALID  # type: ignore[return-value]  # narrowed by the `is` test
        return Hsts(max_age=age, include_subdomains=include)

    def _passthrough_ok(self, node: Node, path: str, match: str, target: Target) -> bool:
        # TLS passthrough is chosen by SNI alone, before any path is known.
        if path != "/" or match != "prefix":
            self.problem(node, "tls: passthrough applies to a whole host: its route must be the prefix path /")
            return False
        if target.internal is not None:
            self.problem(node, "tls: passthrough needs a host:port target, not an internal one")
            return False
        return True

    def _http2_ok(self, node: Node, protocol: str, passthrough: bool, target: Target) -> bool:
        # The gateway speaks HTTP/2 to the backend itself: it must see the
        # requests (TLS terminated) and have a backend to speak to.
        if passthrough:
            self.problem(node, f"protocol: {protocol} needs tls: terminate (with passthrough the gateway never "
                         "sees the requests; the backend's own TLS carries its HTTP/2)")
            return False
        if target.internal is not None:
            self.problem(node, f"protocol: {protocol} needs a host:port target, not an internal one")
            return False
        return True

    def _text(self, node: Node, name: str) -> str:
        # The raw scalar text, not the YAML 1.1 value: "10:80" must not turn
        # into the sexagesimal integer 680, nor "on" into True.
        if not isinstance(node, ScalarNode):
            self.problem(node, f"{name} must be a string, got {kind(node)}")
            return INVALID
        if is_null(node):
            self.problem(node, f"{name} must not be empty")
            return INVALID
        return str(node.value)

    def _parsed(self, node: Node, name: str, parse: Callable[..., Any], *args: object) -> Any:
        text = self._text(node, name)
        if text is INVALID:
            return text
        try:
            return parse(text, *args)
        except ValueError as error:
            self.problem(node, str(error))
            return INVALID

    def _choice(self, node: Node | None, name: str, choices: tuple[str, ...], default: str) -> str:
        if node is None:
            return default
        text = node.value if isinstance(node, ScalarNode) else None
        if text not in choices:
            self.problem(node, f"{name} must be one of {', '.join(choices)}")
            return INVALID
        return str(text)

    def duration(self, node: Node | None, name: str, default: float | None = None) -> float | None:
        if node is None:
            return default
        value = self.construct(node)
        if value is INVALID:
            return value
        try:
            return parse_duration(value)
        except ValueError as error:
            self.problem(node, f"{name}: {error}")
            return INVALID
