"""
What the gateway's YAML files (the routes file, the containers file) share:
problems reported as C{file:line: reason}, all collected and raised
together, and a reader over the composed node tree (composed, not loaded,
so that every node still knows its line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_YAML_ONLY_BREAK_CHARS = "\x85\u2028\u2029"
_YAML_ONLY_BREAKS = re.compile(f"[{_YAML_ONLY_BREAK_CHARS}]")
_YAML_BREAKS = re.compile(f"\r\n|[\r\n{_YAML_ONLY_BREAK_CHARS}]")


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One thing wrong with a file; line 0 means the file as a whole."""

    filename: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.reason}"


class FileError(ValueError):
    """A file was refused; C{errors} lists every problem found, by line."""

    def __init__(self, errors: Sequence[FileProblem]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.errors)


def read_utf8(
    path: str, problem: Callable[[str, int, str], FileProblem], error: Callable[[list[Any]], FileError]
) -> str:
    """The text of the file at C{path}, or C{error} naming why it cannot be had."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as failure:
        raise error([problem(path, 0, f"cannot read: {failure.strerror or failure}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as failure:
        line = data.count(b"\n", 0, failure.start) + 1
        raise error([problem(path, line, "not valid UTF-8")]) from None


class _Invalid:
    """Marks a value already reported as a problem."""


INVALID: Any = _Invalid()


class NodeReader:
    """
    Walks one file's node tree, collecting problems of type C{problem_type};
    subclasses add the file's own structure.
    """

    problem_type: Callable[[str, int, str], FileProblem] = FileProblem

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[FileProblem] = []
        self.line_offset = 0
        self._constructor = SafeConstructor()
        self._file_lines: list[int] | None = None

    def set_text(self, text: str) -> None:
        """
        The file's text, given before it is parsed.  YAML also breaks lines at NEL, LS and
        PS (U+0085, U+2028, U+2029), which editors and C{grep -n} do not:
        when the text holds any, a table maps YAML's line numbers to the
        file's, so that problems name the line an operator sees.
        """
        self._file_lines = None
        if not _YAML_ONLY_BREAKS.search(text):
            return
        table, file_line = [0], 0
        for found in _YAML_BREAKS.finditer(text):
            if found.group() not in _YAML_ONLY_BREAK_CHARS:
                file_line += 1
            table.append(file_line)
        self._file_lines = table

    def mark_line(self, line: int) -> int:
        """
        The file's 1-based line for YAML's 0-based C{line} of the text being
        read; C{line_offset} counts YAML lines too (a ConfigMap's embedded
        routes text starts that many lines into the file).
        """
        line += self.line_offset
        table = self._file_lines
        if table is not None and 0 <= line < len(table):
            line = table[line]
        return line + 1

    def line(self, node: Node) -> int:
        return self.mark_line(node.start_mark.line)

    def problem(self, where: Node | int, reason: str) -> None:
        line = where if isinstance(where, int) else self.line(where)
        self.problems.append(self.problem_type(self.filename, line, reason))

    def sorted_problems(self) -> list[FileProblem]:
        return sorted(self.problems, key=lambda problem: problem.line)

    def fields(self, mapping: MappingNode, allowed: tuple[str, ...],
                what: str) -> dict[str, tuple[Node, Node]]:
        """
        The allowed keys of C{mapping}, each with its key and value nodes;
        unknown and repeated keys are reported as problems.
        """
        fields: dict[str, tuple[Node, Node]] = {}
        for key, value in mapping.value:
            name = key.value if isinstance(key, ScalarNode) else None
            if not isinstance(name, str) or name not in allowed:
                shown = repr(name) if isinstance(name, str) else kind(key)
                self.problem(key, f"unknown {what} key {shown} (allowed: {', '.join(allowed)})")
            elif name in fields:
                self.problem(key, f"key {name!r} given twice (first on line {self.line(fields[name][0])})")
            else:
                fields[name] = (key, value)
        return fields

    def construct(self, node: Node) -> object:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as error:
            self.problem(node, f"cannot read value: {error}")
            return INVALID

    def boolean(self, node: Node | None, name: str) -> bool:
        if node is None:
            return False
        value = self.construct(node)
        if not isinstance(value, bool):
            if value is not INVALID:
                self.problem(node, f"{name} must be true or false, got {getattr(node, 'value', node)!r}")
            return INVALID
        return value


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def kind(node: Node) -> str:
    """How a problem names what it found instead of what it wanted."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    return f"{node.value!r}"
