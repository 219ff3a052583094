"""
The tables the gateway reads and owns, as SQL.

C{GATEWAY_SCHEMA} is what the gateway creates, idempotently, in its own
database at every connect: C{static_routes} (the original gateway's table,
unchanged), C{gateway_file_routes} (which of those rows came from the routes
file), C{gateway_ssh_host_keys} (SSH host-key pins), and the custom domains'
tables (L{edd_gateway.domains.schema}: the cloud's C{custom_domains}, its change
trigger, the ACME account, certificates and leases).  C{COMPUTE_SCHEMA} is
the compute service's tables, which the gateway only reads: it is here for
tests and documentation, never run by the gateway.
"""

from __future__ import annotations

from edd_gateway.domains.schema import DOMAIN_SCHEMA

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
    *DOMAIN_SCHEMA,
)

#: The compute service's own migrations, column for column (ids are 8 hex
#: characters, namespaces C{compute-<user_id>-<id>}, C{public_key} a whole
#: authorized_keys line, C{fingerprint} MD5 in colon hex).
COMPUTE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS containers (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        namespace TEXT NOT NULL,
        status TEXT DEFAULT 'pending',
        external_ip TEXT,
        memory_mb INTEGER DEFAULT 512,
        storage_gb INTEGER DEFAULT 5,
        image TEXT,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        stopped_at TIMESTAMP,
        ssh_enabled BOOLEAN DEFAULT false,
        https_enabled BOOLEAN DEFAULT false,
        owner_username TEXT NOT NULL DEFAULT '',
        instance_type TEXT NOT NULL DEFAULT 'nano',
        mount_paths TEXT NOT NULL DEFAULT '["/root"]',
        pull_policy TEXT DEFAULT 'IfNotPresent'
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS ssh_keys (
        id SERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        public_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS ingress_rules (
        id SERIAL PRIMARY KEY,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        port INTEGER NOT NULL,
        target_port INTEGER NOT NULL DEFAULT 80,
        created_at TIMESTAMP,
        UNIQUE (container_id, port)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS user_cache (
        user_id TEXT PRIMARY KEY,
        username TEXT
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS identity_permissions (
        id SERIAL PRIMARY KEY,
        user_id TEXT,
        permission TEXT
    )
    """,
)
