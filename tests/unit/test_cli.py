"""
Tests for the operator command line, C{python -m edd_gateway
check|explain|forget-host-key} (the last on a state file), in process.  As a
program and against PostgreSQL: C{tests/integration/test_cli.py}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.__main__ import EXIT_INVALID, EXIT_NO_ROUTE, EXIT_OK, EXIT_USAGE
from tests._support.cli import CONFIGMAP, KEY_FINGERPRINT, KEY_TEXT, ROUTES, CommandLineMixin

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


class ForgetHostKeyFileTests(CommandLineMixin, SynchronousTestCase):
    """C{forget-host-key CONTAINER_ID --state-file FILE} (without a database)."""

    def setUp(self) -> None:
        from edd_gateway.state.localfile import LocalPinStore

        environment = dict(os.environ)
        environment.pop("DATABASE_URL", None)
        self.patch(os, "environ", environment)
        self.path = self.mktemp()
        self.gateway = LocalPinStore(self.path)
        self.successResultOf(self.gateway.set_pin("abc123", KEY_TEXT + " root@abc123"))
        self.successResultOf(self.gateway.set_pin("other1", KEY_TEXT))

    def test_forgets(self) -> None:
        from edd_gateway.ssh.auth import fingerprint, key_blob

        self.assertEqual(fingerprint(key_blob(KEY_TEXT)), KEY_FINGERPRINT)  # type: ignore[arg-type]
        self.assertIsNotNone(self.successResultOf(self.gateway.get_pin("abc123")))
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--state-file", self.path),
                         (EXIT_OK, f"forgot the pinned host key {KEY_FINGERPRINT} of container abc123\n", ""))
        self.assertIsNone(self.successResultOf(self.gateway.get_pin("abc123")), "a running gateway sees it at once")
        self.assertIsNotNone(self.successResultOf(self.gateway.get_pin("other1")))
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--state-file", self.path),
                         (EXIT_OK, "no pin for container abc123\n", ""))

    def test_ids_are_case_insensitive(self) -> None:
        status, out, _ = self.runCommand("forget-host-key", "ABC123", "--state-file", self.path)
        self.assertEqual((status, out), (EXIT_OK, f"forgot the pinned host key {KEY_FINGERPRINT} of container abc123\n"))

    def test_missing_file(self) -> None:
        missing = os.path.join(self.mktemp(), "pins.json")
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--state-file", missing),
                         (EXIT_OK, "no pin for container abc123\n", ""))
        self.assertFalse(os.path.exists(os.path.dirname(missing)))

    def test_default_state_file(self) -> None:
        from edd_gateway.state.localfile import DEFAULT_STATE_FILE, LocalPinStore

        work = self.mktemp()
        os.makedirs(os.path.join(work, os.path.dirname(DEFAULT_STATE_FILE)))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(work)
        self.successResultOf(LocalPinStore(DEFAULT_STATE_FILE).set_pin("abc123", KEY_TEXT))
        self.assertEqual(self.runCommand("forget-host-key", "abc123")[:2],
                         (EXIT_OK, f"forgot the pinned host key {KEY_FINGERPRINT} of container abc123\n"))

    def test_unreadable_file(self) -> None:
        with open(self.path, "w") as file:
            file.write("{not json")
        status, out, err = self.runCommand("forget-host-key", "abc123", "--state-file", self.path)
        self.assertEqual((status, out), (EXIT_INVALID, ""))
        self.assertTrue(err.startswith(f"error: cannot read the SSH pin file {self.path}: "), err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_usage(self) -> None:
        for argv in (["Bad_Id", "--state-file", self.path], ["abc123", "--state-file", self.path, "--database", "x"],
                     []):
            status, out, err = self.runCommand("forget-host-key", *argv)
            self.assertEqual((status, out), (EXIT_USAGE, ""), argv)
        self.assertEqual(self.runCommand("forget-host-key", "a_b")[2],
                         "error: 'a_b' is not a container id (letters, digits and inner hyphens, at most 63)\n")

    def test_state_file_wins_over_DATABASE_URL(self) -> None:
        os.environ["DATABASE_URL"] = "host=127.0.0.1 port=1"
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--state-file", self.path)[0], EXIT_OK)


class ForgetHostKeyDatabaseErrorTests(CommandLineMixin, SynchronousTestCase):
    """C{forget-host-key --database DSN} that cannot work: one line, no traceback, no password."""

    def test_malformed_dsn(self) -> None:
        for dsn in ("postgresql://gw:hunter2@[::1", "host=db password=hunter2 nonsense"):
            status, out, err = self.runCommand("forget-host-key", "abc123", "--database", dsn)
            self.assertEqual((status, out, err), (EXIT_USAGE, "", "error: --database is not a PostgreSQL DSN "
                                                                 "(key=value ...) or postgresql:// URL\n"), dsn)
