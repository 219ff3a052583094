"""
The custom domains' tables, as SQL, created with the gateway's own
(L{edd_gateway.state.schema.GATEWAY_SCHEMA}) at every connect, idempotently.

 - C{custom_domains}: the cloud's table, column for column; the control plane
   writes it (a row turns C{verified}/C{active} once its TXT record proved
   ownership), the gateway only reads it;
 - C{gateway_domain_settings}: the gateway's per-domain choices the cloud's
   table has no column for (C{redirect_https}), a table of its own so that
   C{custom_domains} keeps the cloud's exact shape;
 - a trigger on both (and on the challenges table) announcing every change
   with C{pg_notify} on L{DOMAINS_CHANNEL}, its payload the table's name
   (created only when missing; a role that may not create it leaves the
   gateway polling, with a notice);
 - C{gateway_acme_account}, C{gateway_acme_certificates}: the ACME account
   key and every certificate with its key, keys encrypted (see
   L{edd_gateway.issuance.sealing}), shared by every replica;
 - C{gateway_acme_leases}: which replica issues for a domain now (a lease
   that expires, so a replica that died mid-issuance holds nothing for long);
 - C{gateway_acme_attempts}: every issuance attempt, for the caps that bound
   all replicas together (per domain, per hour overall);
 - C{gateway_acme_challenges}: the challenges placed for orders under way,
   so that every replica answers the CA's validation.
"""

from __future__ import annotations

__all__ = ["DOMAINS_CHANNEL", "DOMAIN_SCHEMA", "DOMAIN_TRIGGER"]

#: The channel the trigger notifies and the domains feed listens on.
DOMAINS_CHANNEL = "edd_gateway_domains"
# Not edd_gateway_*: that prefix is the compute tables' feed, which install-change-feed owns and removes.
DOMAIN_TRIGGER = "eddgw_domains_feed"
_FUNCTION = "eddgw_notify_domain"

_TRIGGER_SQL = f"""
DO $$
BEGIN
    CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
        PERFORM pg_notify('{DOMAINS_CHANNEL}', TG_TABLE_NAME);
        RETURN NULL;
    END
    $f$;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{DOMAIN_TRIGGER}'
                   AND tgrelid = 'custom_domains'::regclass) THEN
        CREATE TRIGGER {DOMAIN_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON custom_domains
            FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{DOMAIN_TRIGGER}'
                   AND tgrelid = 'gateway_domain_settings'::regclass) THEN
        CREATE TRIGGER {DOMAIN_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON gateway_domain_settings
            FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{DOMAIN_TRIGGER}'
                   AND tgrelid = 'gateway_acme_challenges'::regclass) THEN
        CREATE TRIGGER {DOMAIN_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON gateway_acme_challenges
            FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'edd-gateway: cannot create the custom domains trigger; polling custom_domains instead';
END
$$
"""

DOMAIN_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS custom_domains (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        container_id TEXT NOT NULL,
        domain TEXT NOT NULL UNIQUE,
        target_port INTEGER NOT NULL,
        verify_token TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        verified_at TIMESTAMPTZ
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_domain_settings (
        domain TEXT PRIMARY KEY,
        redirect_https BOOLEAN NOT NULL DEFAULT true
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_acme_account (
        directory TEXT PRIMARY KEY,
        sealed_key BYTEA NOT NULL,
        account_uri TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_acme_certificates (
        domain TEXT PRIMARY KEY,
        chain_pem TEXT NOT NULL,
        sealed_key BYTEA NOT NULL,
        not_before TIMESTAMPTZ NOT NULL,
        not_after TIMESTAMPTZ NOT NULL,
        issued_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_acme_leases (
        domain TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS gateway_acme_attempts (
        id SERIAL PRIMARY KEY,
        domain TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        outcome TEXT
    )
    """,
    # Not secret: a key authorization is what the CA reads over plain HTTP.
    """
    CREATE TABLE IF NOT EXISTS gateway_acme_challenges (
        domain TEXT NOT NULL,
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        key_authorization TEXT NOT NULL,
        holder TEXT NOT NULL,
        placed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (domain, token)
    )
    """,
    _TRIGGER_SQL,
)
