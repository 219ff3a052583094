"""
The custom domains' metrics, read at scrape time: how many domains are
known, proven and served; issuance on this replica (certificates obtained,
renewed, loaded from other replicas, failed orders, attempts refused by the
caps); and when each domain's certificate expires, the number to alert on.
"""

from __future__ import annotations

from collections.abc import Iterable

from edd_gateway.domains.build import CustomDomains
from edd_gateway.ops.metrics import GatewayMetrics

__all__ = ["domain_metrics"]

Samples = Iterable[tuple[dict[str, str], float]]


def domain_metrics(metrics: GatewayMetrics, domains: CustomDomains) -> None:
    """Register the custom domains' metrics (and issuance's, when it is on)."""

    def counts() -> Samples:
        known = domains.directory.current.domains
        yield {"state": "known"}, float(len(known))
        yield {"state": "verified_or_active"}, float(sum(1 for domain in known.values() if domain.listed))
        yield {"state": "served"}, float(len(domains.lookup.served_names()))

    metrics.add_gauge("edd_gateway_custom_domains", "Custom domains: in the table, proven (verified or active), "
                      "and served (proven, their container running).", counts)
    manager = domains.issuance
    if manager is None:
        return

    def issuance() -> Samples:
        c = manager.counts
        for outcome, value in (("issued", c.issued), ("renewed", c.renewed), ("failed", c.failed),
                               ("capped", c.capped), ("loaded_from_peers", c.loaded_from_peers)):
            yield {"outcome": outcome}, float(value)

    metrics.add_counter("edd_gateway_acme_certificates", "ACME issuance on this replica, by outcome: obtained, "
                        "renewed, failed orders, attempts refused by the caps, certificates other replicas obtained.",
                        issuance)
    metrics.add_gauge("edd_gateway_acme_certificate_expiry_timestamp_seconds",
                      "When each custom domain's certificate expires (Unix time).",
                      lambda: [({"domain": name}, at) for name, at in sorted(manager.expiry().items())])
