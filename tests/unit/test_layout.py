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
