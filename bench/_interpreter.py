"""
What the gateway's interpreter is made of, recorded with every benchmark.

The same Python version runs the gateway 25-30% faster or slower depending
on how it was built (measured on keep-alive HTTPS, docs/performance.md):
distribution and official container-image interpreters are built with
profile-guided and link-time optimisation and link the interpreter into the
executable; a default pyenv or source build has neither and calls through a
shared libpython.  So the figures carry the build they were measured on.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

_PROBE = r"""
import json, platform, sys, sysconfig
cfg = lambda key: sysconfig.get_config_var(key) or ""
maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
args = cfg("CONFIG_ARGS")
print(json.dumps({
    "executable": sys.executable,
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "compiler": platform.python_compiler(),
    "libpython_shared": "libpython" in maps,
    "configured_optimizations": "--enable-optimizations" in args,
    "configured_lto": "--with-lto" in args,
}))
"""


def describe(python: str) -> dict[str, Any]:
    """The build of C{python}: version, and whether it runs from a shared libpython."""
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


def summary(build: dict[str, Any]) -> str:
    """One line for the report."""
    linked = "shared libpython" if build["libpython_shared"] else "libpython linked in"
    flags = [name for name, on in (("PGO", build["configured_optimizations"]), ("LTO", build["configured_lto"])) if on]
    configured = f", configured with {'+'.join(flags)}" if flags else ""
    return f"{build['implementation']} {build['version']} at {build['executable']} ({linked}{configured})"
