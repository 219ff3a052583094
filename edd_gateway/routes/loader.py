"""
The routes file: reading it, validating it and turning it into L{Route}s.

It accepts the original Go gateway's format (C{routes: [{host, path, target,
strip_prefix}]}) unchanged, the Kubernetes ConfigMap manifest that carries
such a file in C{data["routes.yaml"]}, and this gateway's extensions (see
docs/routes.md).  YAML is composed into a node tree, not loaded into plain
objects, so that every problem can be reported as C{file:line: reason}; all
problems are collected and raised together in one L{RoutesFileError}.
Each route's own mapping is read by L{edd_gateway.routes.route_reader}.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edd_gateway.files.yamlfile import INVALID, FileError, FileProblem, SafeLoader, is_null, kind, read_utf8
from edd_gateway.routes.fields import INTERNAL_TARGETS, parse_duration
from edd_gateway.routes.model import MatchKind, Route
from edd_gateway.routes.route_reader import RouteReader

__all__ = [
    "DEFAULT_ROUTES_FILE",
    "INTERNAL_TARGETS",
    "RouteProblem",
    "RoutesFileError",
    "load_default_routes",
    "load_routes_file",
    "load_routes_text",
    "parse_duration",
]

_TOP_LEVEL_KEYS = ("routes", "defaults")
_DEFAULTS_KEYS = ("connect_timeout", "response_timeout")
DEFAULT_ROUTES_FILE = "default-routes.yaml"


@dataclass(frozen=True, slots=True)
class RouteProblem(FileProblem):
    """One thing wrong with a routes file; line 0 means the file as a whole."""


class RoutesFileError(FileError):
    """A routes file was refused; C{errors} lists every problem found."""


def load_routes_file(path: str) -> list[Route]:
    """Read and validate the routes file (or ConfigMap manifest) at C{path}."""
    return load_routes_text(read_utf8(path, RouteProblem, RoutesFileError), path)


def load_routes_text(text: str, filename: str) -> list[Route]:
    """
    Validate the routes file C{text}; C{filename} is used in problems as
    given and, as its base name, in each route's C{source}.

    @raise RoutesFileError: listing every problem found.
    """
    reader = _FileReader(filename)
    routes = reader.read(text)
    if reader.problems:
        raise RoutesFileError(reader.sorted_problems())
    return routes


def load_default_routes() -> list[Route]:
    """The embedded routes used when the gateway is given no routes file."""
    resource = resources.files("edd_gateway") / "data" / DEFAULT_ROUTES_FILE
    return load_routes_text(resource.read_text(encoding="utf-8"), DEFAULT_ROUTES_FILE)


class _FileReader(RouteReader):
    """Walks one file's node tree, collecting routes and problems."""

    problem_type = RouteProblem

    def read(self, text: str) -> list[Route]:
        self.set_text(text)
        root = self._single_document(text)
        if root is not None and _is_configmap(root):
            root = self._unwrap_configmap(root)
        if root is None:
            return []
        return self._routes_file(root)

    def _compose(self, text: str) -> list[Node] | None:
        try:
            return [doc for doc in yaml.compose_all(text, Loader=SafeLoader) if doc is not None]
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = self.mark_line(mark.line) if mark is not None else 0
            reason = error.problem or "cannot be parsed"
            if error.context:
                reason = f"{reason} ({error.context})"
            self.problem(line, f"YAML syntax error: {reason}")
        except yaml.YAMLError as error:
            self.problem(self.mark_line(0), f"YAML error: {error}")
        return None

    def _single_document(self, text: str) -> Node | None:
        documents = self._compose(text)
        if documents is None:
            return None
        if not documents:
            self.problem(self.mark_line(0), "the file is empty: expected a mapping with a 'routes' list")
            return None
        if len(documents) == 1:
            return documents[0]
        configmaps = [doc for doc in documents if _is_configmap(doc)]
        if len(configmaps) == 1:
            return configmaps[0]
        self.problem(documents[1], "expected one YAML document (a routes mapping or one ConfigMap)")
        return None

    def _unwrap_configmap(self, manifest: Node) -> Node | None:
        data = _mapping_get(manifest, "data")
        if not isinstance(data, MappingNode):
            self.problem(manifest, "ConfigMap has no 'data' mapping holding 'routes.yaml'")
            return None
        block = _mapping_get(data, "routes.yaml")
        if not isinstance(block, ScalarNode):
            keys = ", ".join(str(key.value) for key, _ in data.value) or "none"
            self.problem(data, f"ConfigMap data has no 'routes.yaml' text (keys: {keys})")
            return None
        # A literal block ("|") keeps its lines, which start on the line after
        # the indicator; other styles fold lines, so their numbers are close.
        # Each line of the embedded text is one YAML line of the file (NEL
        # comes out of the block as a newline), so the offset is in YAML lines.
        self.line_offset = block.start_mark.line + (1 if block.style == "|" else 0)
        return self._single_document(block.value)

    def _routes_file(self, root: Node) -> list[Route]:
        if not isinstance(root, MappingNode):
            self.problem(root, f"expected a mapping with a 'routes' list, got {kind(root)}")
            return []
        fields = self.fields(root, _TOP_LEVEL_KEYS, "top-level")
        defaults = self._defaults(fields.get("defaults"))
        if "routes" not in fields:
            self.problem(root, "missing 'routes' (a list of routes)")
            return []
        routes_node = fields["routes"][1]
        if is_null(routes_node):
            return []
        if not isinstance(routes_node, SequenceNode):
            self.problem(routes_node, f"'routes' must be a list, got {kind(routes_node)}")
            return []
        routes: list[Route] = []
        first_seen: dict[tuple[str, str, MatchKind], int] = {}
        for item in routes_node.value:
            route = self.route(item, defaults)
            if route is None:
                continue
            key = (route.host, route.path, route.match)
            if key in first_seen:
                self.problem(item, f"duplicate of route at {self.filename}:{first_seen[key]}"
                             f" (host {route.host}, {route.match.value} path {route.path})")
                continue
            first_seen[key] = self.line(item)
            routes.append(route)
        return routes

    def _defaults(self, field: tuple[Node, Node] | None) -> dict[str, float]:
        if field is None or is_null(field[1]):
            return {}
        node = field[1]
        if not isinstance(node, MappingNode):
            self.problem(node, f"'defaults' must be a mapping, got {kind(node)}")
            return {}
        fields = self.fields(node, _DEFAULTS_KEYS, "defaults")
        values: dict[str, Any] = {name: self.duration(value, name) for name, (_, value) in fields.items()}
        return {name: value for name, value in values.items() if value is not INVALID}


def _mapping_get(mapping: Node, name: str) -> Node | None:
    if not isinstance(mapping, MappingNode):
        return None
    for key, value in mapping.value:
        if isinstance(key, ScalarNode) and key.value == name:
            return value
    return None


def _is_configmap(node: Node) -> bool:
    declared = _mapping_get(node, "kind")
    return isinstance(declared, ScalarNode) and declared.value == "ConfigMap"
