"""
C{python -m edd_gateway explain --database DSN URL} for custom domains: what
the gateway would do with a host that no static route matched, read from
the database without a reactor (L{explain_domain}) and worded by the pure
L{describe_domain}: the row, whether it is served and why not, where its
requests go, its certificate, and what plain HTTP gets.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from edd_gateway.domains.model import SERVED_STATUSES, CustomDomain
from edd_gateway.domains.rows import SELECT_DOMAINS, domains_from_rows

__all__ = ["describe_domain", "explain_domain"]


def describe_domain(host: str, domain: CustomDomain | None, container: tuple[str, str | None] | None,
                    certificate_until: datetime | None) -> tuple[list[str], bool]:
    """
    The lines for C{host}, and whether it is served.

    @param container: the domain's container's status and external IP, if the row exists.
    @param certificate_until: when its stored ACME certificate expires, if it has one.
    """
    if domain is None:
        return [f"custom domain: no row for {host} in custom_domains (a name sent only in SNI gets no "
                "certificate and no issuance)"], False
    lines = [f"custom domain: {host} (custom_domains id {domain.id}, user {domain.user_id}), status "
             f"{domain.status!r}, container {domain.container_id}, target port {domain.target_port}"]
    reasons = []
    if not domain.listed:
        reasons.append(f"its status is not {' or '.join(sorted(SERVED_STATUSES))} (the control plane has not "
                       "seen its _edd-verify TXT record yet)")
    if container is None:
        reasons.append(f"container {domain.container_id} does not exist")
    elif container[0] != "running":
        reasons.append(f"container {domain.container_id} is {container[0]}")
    if reasons:
        lines.append("  not served: " + "; ".join(reasons) + "; no certificate is issued for it")
        return lines, False
    address = container[1] if container is not None and container[1] else "(no external_ip yet: 503)"
    lines.append(f"  served: requests go to {address}:{domain.target_port}, over plain HTTP and inside TLS")
    if certificate_until is None:
        lines.append("  certificate: none yet; the first TLS connection obtains one (ACME, when enabled)")
        lines.append("  plain HTTP: proxied (no redirect before a certificate exists)")
    else:
        lines.append(f"  certificate: stored, valid until {certificate_until.isoformat()}")
        lines.append("  plain HTTP: " + ("redirected to https (but /.well-known/acme-challenge/)"
                                         if domain.redirect_https else "proxied (redirect_https off)"))
    return lines, True


def explain_domain(dsn: str, host: str, connect: Callable[[str], Any] | None = None) -> tuple[list[str], bool]:
    """L{describe_domain}'s lines for C{host}, read from the gateway's database at C{dsn}."""
    if connect is None:
        from psycopg2 import connect as psycopg2_connect

        connect = psycopg2_connect
    connection = connect(dsn)
    try:
        cursor: Any
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('custom_domains'), to_regclass('gateway_acme_certificates')")
            tables = cursor.fetchone()
            if tables[0] is None:
                return ["custom domain: the database has no custom_domains table (the gateway creates it)"], False
            cursor.execute(SELECT_DOMAINS)
            domains, _ = domains_from_rows(cursor.fetchall())
            domain = domains.get(host)
            container = None
            if domain is not None:
                cursor.execute("SELECT COALESCE(status, 'pending'), external_ip FROM containers WHERE id = %s",
                               (domain.container_id,))
                row = cursor.fetchone()
                container = (row[0], row[1]) if row else None
            until = None
            if domain is not None and tables[1] is not None:
                cursor.execute("SELECT not_after FROM gateway_acme_certificates WHERE domain = %s", (host,))
                row = cursor.fetchone()
                until = row[0] if row else None
    finally:
        connection.close()
    return describe_domain(host, domain, container, until)
