"""
The tables the gateway reads and owns, as SQL.

C{GATEWAY_SCHEMA} is what the gateway creates, idempotently, in its own
database at every connect: C{static_routes} (the original gateway's table,
unchanged), C{gateway_file_routes} (which of those rows came from the routes
file) and C{gateway_ssh_host_keys} (SSH host-key pins).  C{COMPUTE_SCHEMA} is
the compute service's tables, which the gateway only reads: it is here for
tests and documentation, never run by the gateway.
"""

from __future__ import annotations

__all__ = ["COMPUTE_SCHEMA", "GATEWAY_SCHEMA"]

GATEWAY_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS static_routes (
        id SERIAL PRIMARY KEY,
        host TEXT NOT NULL,
        path_prefix TEXT NOT NULL,
        target TEXT NOT NULL,
        strip_prefix BOOLEAN NOT NULL DEFAULT false,
        priority INT NOT NULL DEFAULT 0,
        UNIQUE (host, path_prefix)
    )
    """,
    # A separate table rather than a column on static_routes: other tools
    # (and the original gateway) insert into static_routes by column list,
    # and its shape stays exactly theirs.
    """
    CREATE TABLE IF NOT EXISTS gateway_file_routes (
        host TEXT NOT NULL,
        path_prefix TEXT NOT NULL,
        PRIMARY KEY (host, path_prefix)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_ssh_host_keys (
        container_id TEXT PRIMARY KEY,
        host_key TEXT NOT NULL,
        container_created TEXT,
        pinned_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
)

COMPUTE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS containers (
        id TEXT PRIMARY KEY,
        user_id TEXT,
        name TEXT,
        namespace TEXT,
        status TEXT DEFAULT 'pending',
        external_ip TEXT,
        ssh_enabled BOOLEAN DEFAULT false,
        https_enabled BOOLEAN DEFAULT false,
        created_at TIMESTAMPTZ DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS ingress_rules (
        id SERIAL PRIMARY KEY,
        container_id TEXT REFERENCES containers ON DELETE CASCADE,
        port INT,
        target_port INT DEFAULT 80,
        UNIQUE (container_id, port)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS ssh_keys (
        id SERIAL PRIMARY KEY,
        user_id TEXT,
        name TEXT,
        public_key TEXT,
        fingerprint TEXT
    )
    """,
)
