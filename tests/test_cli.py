"""
Tests for the operator command line, C{python -m edd_gateway check|explain}.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import edd_gateway
from edd_gateway.__main__ import EXIT_INVALID, EXIT_NO_ROUTE, EXIT_OK, EXIT_USAGE, main

ORIGINALS = os.path.join(os.path.dirname(__file__), "fixtures", "original")
ROUTES = os.path.join(ORIGINALS, "routes.yaml")
CONFIGMAP = os.path.join(ORIGINALS, "gateway-routes.configmap.yaml")


class CommandLineMixin:
    def runCommand(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def writeRoutes(self, text: str) -> str:
        path: str = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "w") as file:
            file.write(text)
        return path


class CheckTests(CommandLineMixin, SynchronousTestCase):
    """C{check FILE...}."""

    def test_originals(self) -> None:
        self.assertEqual(self.runCommand("check", ROUTES, CONFIGMAP),
                         (EXIT_OK, f"{ROUTES}: OK (20 routes)\n{CONFIGMAP}: OK (28 routes)\n", ""))

    def test_invalid(self) -> None:
        bad = self.writeRoutes("routes:\n  - host: a.com:80\n    path: x\n    target: a:80\n")
        status, out, err = self.runCommand("check", ROUTES, bad)
        self.assertEqual(status, EXIT_INVALID)
        self.assertEqual(out, f"{ROUTES}: OK (20 routes)\n")
        self.assertEqual(err, f"{bad}:2: host 'a.com:80' must not include a port\n"
                              f"{bad}:3: path 'x' must start with '/'\n")

    def test_missingFile(self) -> None:
        missing = self.mktemp()
        status, _, err = self.runCommand("check", missing)
        self.assertEqual(status, EXIT_INVALID)
        self.assertTrue(err.startswith(f"{missing}:0: cannot read"), err)

    def test_noFiles(self) -> None:
        status, _, err = self.runCommand("check")
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("FILE", err)

    def test_noCommand(self) -> None:
        self.assertEqual(self.runCommand()[0], EXIT_USAGE)


class ExplainTests(CommandLineMixin, SynchronousTestCase):
    """C{explain [--routes FILE] URL} and C{explain --host HOST PATH}."""

    def test_url(self) -> None:
        status, out, err = self.runCommand("explain", "--routes", CONFIGMAP,
                                    "http://Cloud-API.eddisonso.com:443/compute/../compute/x?y=1")
        self.assertEqual((status, err), (EXIT_OK, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"routes: {CONFIGMAP} (28 routes)")
        self.assertIn("host: cloud-api.eddisonso.com", lines)
        self.assertIn("path: /compute/x", lines)
        self.assertIn("result: gateway-routes.configmap.yaml:16: cloud-api.eddisonso.com prefix /compute"
                      " -> edd-compute:80", lines)
        self.assertEqual(lines[-2:], ["upstream path: /compute/x", "query: ?y=1 (appended to the upstream path)"])

    def test_hostAndPath(self) -> None:
        status, out, _ = self.runCommand("explain", "--routes", ROUTES, "--host", "health.cloud.eddisonso.com",
                                  "/ws/logs/x")
        self.assertEqual(status, EXIT_OK)
        self.assertIn("result: routes.yaml:111: health.cloud.eddisonso.com prefix /ws/logs -> log-service:80", out)

    def test_urlWithoutScheme(self) -> None:
        status, out, _ = self.runCommand("explain", "--routes", ROUTES, "cloud.eddisonso.com/app")
        self.assertEqual(status, EXIT_OK)
        self.assertIn("upstream path: /app", out)

    def test_noRoute(self) -> None:
        status, out, _ = self.runCommand("explain", "--routes", ROUTES, "http://unknown.example.com/")
        self.assertEqual(status, EXIT_NO_ROUTE)
        self.assertIn("result: no route (the gateway answers 404)", out)

    def test_builtInDefaults(self) -> None:
        status, out, _ = self.runCommand("explain", "http://localhost:8080/")
        self.assertEqual(status, EXIT_OK)
        self.assertIn("routes: built-in defaults (2 routes)", out)
        self.assertIn("-> internal:welcome", out)

    def test_invalidRoutes(self) -> None:
        bad = self.writeRoutes("routes: 3\n")
        status, out, err = self.runCommand("explain", "--routes", bad, "http://a.com/")
        self.assertEqual((status, out), (EXIT_INVALID, ""))
        self.assertEqual(err, f"{bad}:1: 'routes' must be a list, got '3'\n")

    def test_badRequest(self) -> None:
        for argv in (["http://a.com/%zz"], ["ftp://a.com/"], ["--host", "bad_host", "/"]):
            status, _, err = self.runCommand("explain", "--routes", ROUTES, *argv)
            self.assertEqual(status, EXIT_USAGE, argv)
            self.assertTrue(err.startswith("error: "), err)


class SubprocessTests(SynchronousTestCase):
    """C{python -m edd_gateway} runs as a program."""

    def test_checkAsProgram(self) -> None:
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(edd_gateway.__file__)))
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])))
        bad = self.mktemp()
        with open(bad, "w") as file:
            file.write("routes:\n  - nope\n")
        result = subprocess.run([sys.executable, "-m", "edd_gateway", "check", ROUTES, bad],
                                capture_output=True, text=True, env=environment, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, f"{ROUTES}: OK (20 routes)\n")
        self.assertIn(f"{bad}:2: each route must be a mapping", result.stderr)
