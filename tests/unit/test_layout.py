"""
Tests of the package layout (docs/architecture.md, "Modules"): a module whose
name starts with an underscore is imported only by the modules of its own
package.  Anything another package or a test needs is public, so that the
underscore keeps meaning "private to this package" as the layout grows.

The check reads the sources (C{ast}), imports nothing, and covers the
gateway, its tests, the benchmarks and the twistd plugin.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

#: The checkout: the nearest folder above this file holding setup.cfg (wherever tests/ arranges its modules).
ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "setup.cfg").exists())
SOURCES = ("edd_gateway", "tests", "bench", "twisted/plugins")


def _package_of(path: Path) -> str:
    """The dotted package a source file's relative imports start from."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1])


def _is_module(dotted: str) -> bool:
    place = ROOT.joinpath(*dotted.split("."))
    return place.with_suffix(".py").exists() or (place / "__init__.py").exists()


def _imported(node: ast.AST, package: str) -> list[str]:
    """The dotted modules one import statement names (C{from P import m} names C{P.m} when m is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(up + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]


def _private_owner(dotted: str) -> str | None:
    """The package holding the first underscore module of C{dotted}, if it names one."""
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def private_imports_from_outside() -> Iterator[str]:
    """C{file:line: module (private to package)} for every import of an underscore module from another package."""
    for source in SOURCES:
        for path in sorted((ROOT / source).glob("**/*.py")):
            package = _package_of(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for dotted in _imported(node, package):
                    owner = _private_owner(dotted) if dotted.startswith("edd_gateway") else None
                    # Siblings only: a subpackage of the owner is outside it too.
                    if owner is not None and owner != package:
                        yield f"{path.relative_to(ROOT)}:{node.lineno}: {dotted} (private to {owner})"


class PrivateModuleTests(SynchronousTestCase):
    def test_no_private_module_is_imported_from_outside_its_package(self) -> None:
        self.assertEqual(list(private_imports_from_outside()), [])

    def test_the_check_sees_an_outside_import(self) -> None:
        """The check is not vacuous: this very module, were it to import a private one, would be listed."""
        node = ast.parse("from edd_gateway.ssh import _logging").body[0]
        self.assertEqual(_imported(node, "tests"), ["edd_gateway.ssh", "edd_gateway.ssh._logging"])
        self.assertEqual(_private_owner("edd_gateway.ssh._logging"), "edd_gateway.ssh")


#: Issue 15's bounds: a module a reader takes in at one sitting, a function seen whole on one screen.
MODULE_LINES = 400
FUNCTION_LINES = 60


def long_modules() -> Iterator[str]:
    """C{path: N lines} for every module of the gateway over L{MODULE_LINES}."""
    for path in sorted((ROOT / "edd_gateway").glob("**/*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MODULE_LINES:
            yield f"{path.relative_to(ROOT)}: {lines} lines"


def long_functions_in(source: str, name: str) -> Iterator[str]:
    """C{name:line: function, N lines} for every function of C{source} over L{FUNCTION_LINES}, decorators and docstring included."""
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > FUNCTION_LINES:
                yield f"{name}:{first}: {node.name}, {lines} lines"


def long_functions() -> Iterator[str]:
    for path in sorted((ROOT / "edd_gateway").glob("**/*.py")):
        yield from long_functions_in(path.read_text(), str(path.relative_to(ROOT)))


class SizeTests(SynchronousTestCase):
    def test_no_module_is_over_the_bound(self) -> None:
        self.assertEqual(list(long_modules()), [])

    def test_no_function_is_over_the_bound(self) -> None:
        self.assertEqual(list(long_functions()), [])

    def test_the_function_check_counts_decorators_and_body(self) -> None:
        """Not vacuous: a decorated function one line over the bound is listed, one at the bound is not."""
        body = "\n".join(["    pass"] * (FUNCTION_LINES - 2))
        at_bound = f"@decorated\ndef f():\n{body}\n"
        self.assertEqual(list(long_functions_in(at_bound, "m.py")), [])
        self.assertEqual(list(long_functions_in(at_bound + "    pass\n", "m.py")),
                         [f"m.py:1: f, {FUNCTION_LINES + 1} lines"])
