"""
Pure: the SQL that reads the custom domains and the rows it returns, checked
into L{CustomDomain}s.  A row the gateway cannot serve (a name that is no
DNS name, a port out of range) is skipped with its reason, never served
half-read: the rest of the table still loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edd_gateway.domains.model import CustomDomain
from edd_gateway.routes.normalize import normalize_hostname

__all__ = ["SELECT_DOMAINS", "domains_from_rows", "normalize_domain"]

SELECT_DOMAINS = (
    "SELECT d.id, d.user_id, d.container_id, d.domain, d.target_port, d.status, COALESCE(s.redirect_https, true)"
    " FROM custom_domains d LEFT JOIN gateway_domain_settings s ON s.domain = d.domain ORDER BY d.id"
)


def normalize_domain(text: str) -> str | None:
    """A custom domain's name as the gateway matches it, or None when it is no DNS name of two labels or more."""
    name = normalize_hostname(text.strip()) if isinstance(text, str) else None
    if name is None or "." not in name or ":" in name or name.rpartition(".")[2].isdigit() or "*" in name:
        return None
    return name


def domains_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[dict[str, CustomDomain], list[str]]:
    """The domains by name, and one problem per skipped row (C{custom_domains id X: reason})."""
    domains: dict[str, CustomDomain] = {}
    problems: list[str] = []
    for row_id, user_id, container_id, domain, target_port, status, redirect in rows:
        name = normalize_domain(domain)
        if name is None:
            problems.append(f"custom_domains id {row_id}: {domain!r} is not a DNS name")
            continue
        if not isinstance(target_port, int) or not 1 <= target_port <= 65535:
            problems.append(f"custom_domains id {row_id}: target_port {target_port!r} is not a port")
            continue
        if name in domains:
            problems.append(f"custom_domains id {row_id}: {name} is already id {domains[name].id}")
            continue
        domains[name] = CustomDomain(str(row_id), str(user_id), str(container_id), name, target_port,
                                     str(status).strip().lower(), redirect is None or bool(redirect))
    return domains, problems
