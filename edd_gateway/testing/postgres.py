"""
Throwaway PostgreSQL for tests (L{start_postgres}): a server with its own
cluster in a temporary directory, listening on 127.0.0.1 on a random port
(never the machine's own server on 5432), removed at cleanup.

Most tests get a fresh database on one server shared by the test process
(creating a database costs a tenth of a second; a server, seconds).  A test
that stops or restarts the server asks for a dedicated one, copied from a
cluster initialised once per process.  initdb and pg_ctl refuse to run as
root, so as root they run as the C{postgres} user (C{runuser}).  Without the
binaries a test skips with the reason, or fails when integration is
required (C{EDD_GATEWAY_REQUIRE_INTEGRATION=1}).
"""

from __future__ import annotations

import atexit
import copy
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any
from unittest import SkipTest

from .tools import REQUIRE_INTEGRATION, free_port, integration_required, reactor_or_installed, run_process

__all__ = ["ThrowawayPostgres", "start_postgres"]

_BINDIR_VARIABLE = "EDD_GATEWAY_PG_BINDIR"
_template: str | None = None
_shared: ThrowawayPostgres | None = None
_database_numbers = itertools.count(1)


def _missing(what: str) -> Exception:
    hint = (f"install PostgreSQL (Debian: apt-get install postgresql) or point {_BINDIR_VARIABLE} at its "
            "bin directory")
    if integration_required():
        return AssertionError(f"{what}, and {REQUIRE_INTEGRATION} is set so this test may not skip; {hint}")
    return SkipTest(f"{what}; {hint}, or set {REQUIRE_INTEGRATION}=1 to make this a failure")


def _bindir() -> str:
    """Where initdb and pg_ctl are: Debian keeps them off PATH, under a versioned directory."""
    candidates = [os.environ.get(_BINDIR_VARIABLE, "")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(result.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0,
                         reverse=True)
    for directory in candidates:
        if directory and all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl")):
            return directory
    raise _missing("PostgreSQL's initdb and pg_ctl were not found")


def _server_user() -> str | None:
    """The user to run the server as: None means ourselves; root must hand over to postgres."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise _missing("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    if shutil.which("runuser") is None:
        raise _missing("running as root and runuser (util-linux) is missing")
    return "postgres"


def _hand_over(path: str, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, directories, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


class ThrowawayPostgres:
    """
    A PostgreSQL server (superuser C{postgres}, trust authentication), or,
    from L{on_database}, a view of it whose C{dbname} is one test's database.
    """

    dbname = "postgres"
    _view = False

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor_or_installed(reactor)
        self.bindir = _bindir()
        self.user = _server_user()
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="edd-gateway-pg-")
        os.chmod(self.directory, 0o755)
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.running = False

    def dsn(self, dbname: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname or self.dbname} connect_timeout=5"

    def on_database(self, dbname: str) -> ThrowawayPostgres:
        """This server, with C{dbname} as the default database (it cannot be stopped through the view)."""
        view = copy.copy(self)
        view.dbname, view._view = dbname, True
        return view

    async def start(self) -> None:
        self._owned()
        if not os.path.isdir(self.data):
            template = await self._template()
            _hand_over(self.directory, self.user)
            # cp -a keeps the owner and modes, and is several times faster than shutil.copytree.
            copy = await run_process(["cp", "-a", template, self.data], reactor=self._reactor).result()
            if copy.exit_code != 0:
                raise RuntimeError(f"copying the template cluster failed: {bytes(copy.err).decode(errors='replace')}")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        await self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")
        self.running = True

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server: C{fast} disconnects clients cleanly, C{immediate} is a crash."""
        self._owned()
        if self.running:
            self.running = False
            await self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    async def restart(self, mode: str = "fast") -> None:
        await self.stop(mode)
        await self.start()

    async def cleanup(self) -> None:
        if self._view:
            await self.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)', dbname="postgres")
            return
        try:
            await self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop_now(self) -> None:
        """Stop without the reactor (at interpreter exit)."""
        if self.running:
            self.running = False
            subprocess.run(self._argv("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"),
                           capture_output=True, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    async def execute(self, statement: str, params: Any = None, dbname: str | None = None) -> None:
        """Run one statement on a fresh connection (which survives nothing, so restarts do not matter)."""
        await self._with_connection(dbname, lambda connection: connection.runOperation(statement, params))

    async def query(self, statement: str, params: Any = None, dbname: str | None = None) -> list[tuple[Any, ...]]:
        return await self._with_connection(dbname, lambda connection: connection.runQuery(statement, params))

    async def create_database(self, dbname: str) -> None:
        await self.execute(f'CREATE DATABASE "{dbname}"', dbname="postgres")

    async def create_compute_tables(self, dbname: str | None = None) -> None:
        """The compute service's tables (containers, ingress_rules, ssh_keys), as the gateway expects them."""
        from edd_gateway.state.schema import COMPUTE_SCHEMA

        for statement in COMPUTE_SCHEMA:
            await self.execute(statement, dbname=dbname)

    def _owned(self) -> None:
        if self._view:
            raise RuntimeError("a shared server cannot be started or stopped: "
                               "use start_postgres(test, dedicated=True)")

    async def _with_connection(self, dbname: str | None, work: Any) -> Any:
        from txpostgres import txpostgres

        connection = txpostgres.Connection(self._reactor)
        await connection.connect(self.dsn(dbname))
        try:
            return await work(connection)
        finally:
            connection.close()

    async def _template(self) -> str:
        global _template
        if _template is None:
            parent = tempfile.mkdtemp(prefix="edd-gateway-pg-template-")
            os.chmod(parent, 0o755)
            cluster = os.path.join(parent, "data")
            _hand_over(parent, self.user)
            await self._run("initdb", "-D", cluster, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                            "--no-sync", "--locale=C")
            atexit.register(shutil.rmtree, parent, True)
            _template = cluster
        return _template

    def _argv(self, program: str, *arguments: str) -> list[str]:
        argv = [os.path.join(self.bindir, program), *arguments]
        if self.user is not None:
            argv = [shutil.which("runuser") or "runuser", "-u", self.user, "--", *argv]
        return argv

    async def _run(self, program: str, *arguments: str) -> None:
        run = await run_process(self._argv(program, *arguments), timeout=120, reactor=self._reactor).result()
        if run.exit_code != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as file:
                    log = file.read()[-3000:]
            raise RuntimeError(f"{program} {' '.join(arguments)} exited with {run.exit_code}: "
                               f"{bytes(run.out + run.err).decode(errors='replace')}\n{log}")


async def start_postgres(test: Any, reactor: Any = None, *, dedicated: bool = False) -> ThrowawayPostgres:
    """
    A fresh database for C{test}, dropped at its cleanup, on the process's
    shared server; or, C{dedicated}, a server of its own (to stop and
    restart), removed at its cleanup.
    """
    global _shared
    if dedicated:
        server = ThrowawayPostgres(reactor)
        test.addCleanup(server.cleanup)
        await server.start()
        return server
    if _shared is None or not _shared.running:
        shared = ThrowawayPostgres(reactor)
        atexit.register(shared.stop_now)
        await shared.start()
        _shared = shared
    database = _shared.on_database(f"edd_test_{os.getpid()}_{next(_database_numbers)}")
    await _shared.create_database(database.dbname)
    test.addCleanup(database.cleanup)
    return database
