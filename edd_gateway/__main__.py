"""
The operator's command line, C{python -m edd_gateway}: C{check} validates
routes files (or ConfigMap manifests) and C{explain} shows which route a URL
goes to and why; C{forget-host-key} drops a container's pinned SSH host key.
Exit codes: 0 success, 1 invalid routes file (or a database or state file
that cannot be reached, read or written), 2 bad usage or input, 3 no route
matches (C{explain}).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import TextIO

try:
    import twisted.logger  # noqa: F401
except ImportError:
    # Outside the gateway's venv, from a checkout, the repository's own
    # twisted/plugins directory is found as "twisted" and hides the real
    # one (or there is no Twisted at all): say what to run instead.
    sys.exit("edd-gateway: Twisted is not importable here (outside the venv, the checkout's twisted/plugins "
             "directory hides it); run .venv/bin/python -m edd_gateway, after the README's install command")

from edd_gateway import __version__
from urllib.parse import urlsplit

from edd_gateway.routes.explain import ExplainInputError, explain_request, explain_url
from edd_gateway.routes.normalize import normalize_host
from edd_gateway.routes.loader import RoutesFileError, load_default_routes, load_routes_file
from edd_gateway.routes.table import RouteTable
from edd_gateway.state.localfile import DEFAULT_STATE_FILE

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_NO_ROUTE = 3


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    for filename in args.files:
        try:
            routes = load_routes_file(filename)
        except RoutesFileError as error:
            print(error, file=err)
            status = EXIT_INVALID
        else:
            print(f"{filename}: OK ({len(routes)} routes)", file=out)
    return status


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        routes = load_routes_file(args.routes) if args.routes else load_default_routes()
    except RoutesFileError as error:
        print(error, file=err)
        return EXIT_INVALID
    table = RouteTable(routes)
    print(f"routes: {args.routes or 'built-in defaults'} ({len(table)} routes)", file=out)
    try:
        if args.host is not None:
            lines, matched = explain_request(table, args.host, args.url_or_path)
        else:
            lines, matched = explain_url(table, args.url_or_path)
    except ExplainInputError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    dsn = args.database or os.environ.get("DATABASE_URL")
    if not matched and dsn:
        from edd_gateway.domains.explain import explain_domain

        try:
            more, matched = explain_domain(dsn, _explained_host(args))
        except Exception as error:
            print(f"error: --database: {str(error).strip().splitlines()[0] if str(error).strip() else error}",
                  file=err)
            return EXIT_INVALID
        lines = [*lines, *more]
    for line in lines:
        print(line, file=out)
    return EXIT_OK if matched else EXIT_NO_ROUTE


def _explained_host(args: argparse.Namespace) -> str:
    """The normalised host an explain asks about (already checked by explain_request)."""
    if args.host is not None:
        host = args.host
    else:
        url = args.url_or_path if "://" in args.url_or_path else "http://" + args.url_or_path
        host = urlsplit(url).netloc.rpartition("@")[2]
    return normalize_host(host) or ""


def _install_change_feed(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from edd_gateway.state.triggers import ChangeFeedError, install

    dsn = args.dsn or os.environ.get("DATABASE_URL")
    if not dsn:
        print("error: give the compute database's DSN (or set DATABASE_URL)", file=err)
        return EXIT_USAGE
    try:
        print(install(dsn, remove=args.remove), file=out)
    except ChangeFeedError as error:
        print(f"error: {error}", file=err)
        return EXIT_INVALID
    return EXIT_OK


def _forget_host_key(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from edd_gateway.state.forget import ForgetError, fingerprint_of, forget_in_database, forget_in_file
    from edd_gateway.state.forget import normalize_container_id

    try:
        container_id = normalize_container_id(args.container_id)
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    dsn = None if args.state_file is not None else args.database or os.environ.get("DATABASE_URL")
    try:
        if dsn:
            host_key = forget_in_database(dsn, container_id)
        else:
            host_key = forget_in_file(args.state_file or DEFAULT_STATE_FILE, container_id)
    except ValueError as error:
        print(f"error: --database is {error}", file=err)
        return EXIT_USAGE
    except ForgetError as error:
        print(f"error: {error}", file=err)
        return EXIT_INVALID
    if host_key is None:
        print(f"no pin for container {container_id}", file=out)
    else:
        print(f"forgot the pinned host key {fingerprint_of(host_key)} of container {container_id}", file=out)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edd_gateway", description="edd-gateway operator tools.")
    parser.add_argument("--version", action="version", version=f"edd-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check", help="validate routes files or ConfigMap manifests",
        description="Validate routes files; print FILE: OK (N routes), or each file:line: reason "
                    "on stderr and exit 1.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check)
    explain = commands.add_parser(
        "explain", help="show which route a request goes to, and why",
        description="Explain the routing of URL (http://host/path?query), or of PATH with --host. "
                    "Exit 0 when a route matches, 3 when none does.")
    explain.add_argument("--routes", metavar="FILE", help="routes file (default: the built-in routes)")
    explain.add_argument("--host", metavar="HOST", help="the Host header; the argument is then a PATH")
    explain.add_argument("--database", metavar="DSN", help="the gateway's database: a host no route matches is "
                         "looked up in custom_domains (default: $DATABASE_URL)")
    explain.add_argument("url_or_path", metavar="URL|PATH")
    explain.set_defaults(run=_explain)
    feed = commands.add_parser(
        "install-change-feed", help="install the triggers that announce the compute service's changes",
        description="Create, in the compute database, the trigger function and the triggers on containers, "
                    "ingress_rules and ssh_keys that notify the gateway of every committed change (idempotent). "
                    "Run it once with the credentials of the tables' owner; the gateway itself only reads.")
    feed.add_argument("dsn", nargs="?", metavar="DSN", help="the compute database (default: $DATABASE_URL)")
    feed.add_argument("--remove", action="store_true", help="take the triggers and the function away")
    feed.set_defaults(run=_install_change_feed)
    forget = commands.add_parser(
        "forget-host-key", help="drop a container's pinned SSH host key",
        description="Forget the SSH host key pinned for CONTAINER_ID, so that its next login pins the key it "
                    "presents then (after a change of its key while it runs, which the gateway refuses). The "
                    "pins are in PostgreSQL with --database (default: $DATABASE_URL), else in the state file.")
    forget.add_argument("container_id", metavar="CONTAINER_ID")
    where = forget.add_mutually_exclusive_group()
    where.add_argument("--database", metavar="DSN", help="the gateway's database (default: $DATABASE_URL)")
    where.add_argument("--state-file", metavar="FILE",
                       help=f"the gateway's --state-file, without a database (default: {DEFAULT_STATE_FILE})")
    forget.set_defaults(run=_forget_host_key)
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        with redirect_stdout(out), redirect_stderr(err):
            args = _parser().parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        status: int = args.run(args, out, err)
        out.flush()
    except BrokenPipeError:
        # The reader went away (``explain ... | head``): nothing more to say.
        # stdout is pointed at /dev/null so that the interpreter's own
        # flush at exit does not fail on it once more.
        if stdout is None:
            _quiet_stdout()
        return EXIT_OK
    return status


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
