"""
The operator command line where it leaves the process: C{python -m
edd_gateway} run as a program, and C{forget-host-key --database} against a
server that is down and against a throwaway PostgreSQL.  The rest, in
process, is C{tests/unit/test_cli.py}'s.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

import edd_gateway
from edd_gateway.__main__ import EXIT_INVALID, EXIT_OK
from tests._support.cli import KEY_FINGERPRINT, KEY_TEXT, ROUTES, CommandLineMixin


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


class ForgetHostKeyDatabaseErrorTests(CommandLineMixin, SynchronousTestCase):
    """C{forget-host-key --database DSN} that cannot work: one line, no traceback, no password."""

    def test_server_down(self) -> None:
        status, out, err = self.runCommand("forget-host-key", "abc123", "--database",
                                           "host=127.0.0.1 port=1 password=hunter2")
        self.assertEqual((status, out), (EXIT_INVALID, ""))
        self.assertTrue(err.startswith("error: cannot connect to the database: "), err)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertNotIn("hunter2", err)


    def test_DATABASE_URL(self) -> None:
        self.patch(os, "environ", dict(os.environ, DATABASE_URL="host=127.0.0.1 port=1"))
        status, _, err = self.runCommand("forget-host-key", "abc123")
        self.assertEqual(status, EXIT_INVALID)
        self.assertIn("cannot connect to the database", err)


class ForgetHostKeyPostgresTests(CommandLineMixin, TestCase):
    """C{forget-host-key --database DSN} on a throwaway PostgreSQL, with the gateway's own pin store."""

    async def test_forgets_the_row(self) -> None:
        from twisted.internet import reactor

        from edd_gateway.state.postgres import PostgresDatabase
        from edd_gateway.testing.postgres import start_postgres

        server = await start_postgres(self)
        await server.create_compute_tables()
        database = PostgresDatabase(server.dsn(), reactor)
        self.addCleanup(database.close)
        await database.connect()
        await database.set_pin("abc123", KEY_TEXT + " root@abc123")
        await database.set_pin("other1", KEY_TEXT)
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--database", server.dsn()),
                         (EXIT_OK, f"forgot the pinned host key {KEY_FINGERPRINT} of container abc123\n", ""))
        self.assertIsNone(await database.get_pin("abc123"), "the gateway reads the pin at every login")
        self.assertIsNotNone(await database.get_pin("other1"))
        self.patch(os, "environ", dict(os.environ, DATABASE_URL=server.dsn()))
        self.assertEqual(self.runCommand("forget-host-key", "abc123"), (EXIT_OK, "no pin for container abc123\n", ""))

    async def test_a_database_no_gateway_used(self) -> None:
        from edd_gateway.testing.postgres import start_postgres

        server = await start_postgres(self)
        self.assertEqual(self.runCommand("forget-host-key", "abc123", "--database", server.dsn()),
                         (EXIT_OK, "no pin for container abc123\n", ""))


class ForgetHostKeySubprocessTests(SynchronousTestCase):
    def test_as_program(self) -> None:
        from edd_gateway.state.localfile import LocalPinStore

        checkout = os.path.dirname(os.path.dirname(os.path.abspath(edd_gateway.__file__)))
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])))
        environment.pop("DATABASE_URL", None)
        path = self.mktemp()
        self.successResultOf(LocalPinStore(path).set_pin("abc123", KEY_TEXT))
        result = subprocess.run([sys.executable, "-m", "edd_gateway", "forget-host-key", "abc123", "--state-file", path],
                                capture_output=True, text=True, env=environment, timeout=60)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, f"forgot the pinned host key {KEY_FINGERPRINT} of container abc123\n", ""))
