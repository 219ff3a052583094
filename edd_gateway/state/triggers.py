"""
The change feed's side in the compute database: the compute service only
writes rows, so triggers on its tables announce every change with
C{pg_notify} on L{CHANNEL}, and L{edd_gateway.state.changefeed} LISTENs.

 - L{install_statements} / L{remove_statements} (and L{install}, the
   operator's C{python -m edd_gateway install-change-feed DSN}): the trigger
   function and the triggers, idempotent, run once with the compute
   database owner's credentials (C{CREATE TRIGGER} and C{DROP TRIGGER} need
   the tables' owner; the gateway keeps read-only access);
 - L{PRESENT_QUERY}: whether the triggers are there, which the gateway's
   read-only role can ask;
 - L{parse_change}: the payload the trigger function writes, pure.

A notification is a hint like a NATS event: it names what to re-read (a
container, or a user whose SSH keys changed), never what the row now says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from txpostgres.psycopg2_impl import psycopg2

__all__ = [
    "CHANNEL", "Change", "ChangeFeedError", "FEED_TABLES", "PRESENT_QUERY", "TRIGGER", "first_line", "install",
    "install_statements", "parse_change", "remove_statements",
]

#: The channel the triggers notify and the gateway listens on.
CHANNEL = "edd_gateway_changes"
FUNCTION = "edd_gateway_notify_change"
TRIGGER = "edd_gateway_change_feed"
TRUNCATE_TRIGGER = "edd_gateway_change_feed_truncate"

#: Each table of the compute service the feed watches, and the column that
#: names what to re-read: a container id, or the user whose keys changed.
FEED_TABLES: dict[str, str] = {"containers": "id", "ingress_rules": "container_id", "ssh_keys": "user_id"}
_USER_TABLES = frozenset({"ssh_keys"})

# One function for the three tables: the trigger's argument names the key
# column, read through to_jsonb so that the same body compiles for each
# table.  One notification per distinct key (OLD's and NEW's differ only
# when an update moves a row), and PostgreSQL folds identical payloads of
# one transaction into one.  TRUNCATE has no rows: it asks for everything.
_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_key text;
    new_key text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_key := to_jsonb(OLD) ->> TG_ARGV[0];
        PERFORM pg_notify('{CHANNEL}', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'key', old_key)::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_key := to_jsonb(NEW) ->> TG_ARGV[0];
        IF old_key IS DISTINCT FROM new_key THEN
            PERFORM pg_notify('{CHANNEL}',
                              json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'key', new_key)::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""


def install_statements() -> list[str]:
    """The SQL that installs the feed (or reinstalls it unchanged), for one transaction."""
    statements = [_FUNCTION_SQL]
    for table, column in FEED_TABLES.items():
        statements += [
            f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {FUNCTION}('{column}')",
            f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}",
            f"CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()",
        ]
    return statements


def remove_statements() -> list[str]:
    """The SQL that takes the feed away (nothing to do when it is not there)."""
    statements = []
    for table in FEED_TABLES:
        statements += [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
                       f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}"]
    return statements + [f"DROP FUNCTION IF EXISTS {FUNCTION}()"]


#: How many of the row triggers are present and enabled, on the tables the
#: search path finds (the ones the gateway reads).  Catalogs are readable by
#: every role, so the gateway's read-only role can ask.
def present_query(tables: Iterable[str]) -> str:
    """How many of a feed's triggers (the query's one parameter names them) are present and enabled on C{tables}."""
    return ("SELECT count(*) FROM pg_trigger WHERE tgname = %s AND tgenabled <> 'D' AND tgrelid IN ("
            + ", ".join(f"to_regclass('{table}')" for table in tables) + ")")


PRESENT_QUERY = present_query(FEED_TABLES)


class ChangeFeedError(Exception):
    """The feed cannot be installed or removed; the message is one line for the operator."""


def install(dsn: str, *, remove: bool = False, connect: Callable[[str], Any] | None = None) -> str:
    """
    Install (or with C{remove}, take away) the feed in the compute database
    at C{dsn}, in one transaction; what was done, as one line.

    @raise ChangeFeedError: the database refused (the message names why:
        most often that the role does not own the tables).
    """
    statements = remove_statements() if remove else install_statements()
    try:
        connection = (connect or psycopg2.connect)(dsn)
    except psycopg2.Error as error:
        raise ChangeFeedError(f"cannot connect to the compute database: {first_line(error)}") from None
    try:
        with connection, connection.cursor() as cursor:
            if not remove:
                cursor.execute("SELECT " + ", ".join(f"to_regclass('{table}')" for table in FEED_TABLES))
                missing = [table for table, oid in zip(FEED_TABLES, cursor.fetchone()) if oid is None]
                if missing:
                    raise ChangeFeedError(f"the compute database has no table {', '.join(missing)}: "
                                          "is this the compute service's database?")
            for statement in statements:
                cursor.execute(statement)
    except psycopg2.Error as error:
        hint = (" (run it as the owner of the compute service's tables)"
                if getattr(error, "pgcode", None) == "42501" else "")
        raise ChangeFeedError(f"{first_line(error)}{hint}") from None
    finally:
        connection.close()
    tables = ", ".join(FEED_TABLES)
    if remove:
        return f"change feed removed from {tables}"
    return f"change feed installed: triggers on {tables} notify channel {CHANNEL}"


def first_line(error: BaseException) -> str:
    """An error's first line, for the one-line messages the operator reads."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True, slots=True)
class Change:
    """
    What one notification asks to re-read.

    @ivar full_resync: nothing names a row (a TRUNCATE, or a payload this
        version cannot read): read everything.
    """

    table: str
    container_ids: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    full_resync: bool = False


def parse_change(payload: str) -> Change:
    """
    The change a notification on L{CHANNEL} announces.  Never raises: a
    payload it cannot read asks for a full resync, since a change was made.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        return Change("?", full_resync=True)
    if not isinstance(body, dict):
        return Change("?", full_resync=True)
    table, key = body.get("table"), body.get("key")
    if table not in FEED_TABLES or not isinstance(key, str) or not key:
        return Change(table if isinstance(table, str) else "?", full_resync=True)
    if table in _USER_TABLES:
        return Change(table, user_ids=(key,))
    return Change(table, container_ids=(key,))
