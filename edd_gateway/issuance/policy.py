"""
The bounds of issuance, as one value (L{IssuancePolicy}), and the backoff
after failures (L{Backoff}): how long the first TLS connection waits, the
caps (per domain and overall, per hour, counted over every replica in the
attempts table), when a certificate is renewed, how long a lease lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Backoff", "IssuancePolicy"]


@dataclass(frozen=True)
class IssuancePolicy:
    """
    @ivar first_wait: seconds the first TLS connection for a domain without a
        certificate is held while one is obtained, before a TLS alert.
    @ivar per_domain_hour: issuance attempts per domain per hour, all replicas.
    @ivar per_hour: issuance attempts per hour overall, all replicas.
    @ivar renew_fraction: a certificate is renewed once this fraction of its
        lifetime has passed (2/3: a 90-day certificate at 60 days).
    @ivar check_interval: seconds between two looks at the stored
        certificates (other replicas' results, renewals due).
    @ivar lease: seconds one replica holds a domain's issuance (longer than
        an order may take).
    @ivar backoff_base, backoff_max: seconds before retrying a domain whose
        issuance failed, doubling per failure.
    """

    first_wait: float = 15.0
    per_domain_hour: int = 5
    per_hour: int = 60
    renew_fraction: float = 2 / 3
    check_interval: float = 60.0
    lease: float = 180.0
    backoff_base: float = 60.0
    backoff_max: float = 6 * 3600.0

    def renew_at(self, not_before: datetime, not_after: datetime) -> float:
        """When (POSIX seconds) a certificate valid from C{not_before} to C{not_after} is due."""
        start, end = not_before.timestamp(), not_after.timestamp()
        return start + (end - start) * self.renew_fraction


class Backoff:
    """Per domain: consecutive failures, and when the next attempt may start."""

    def __init__(self, policy: IssuancePolicy) -> None:
        self._policy = policy
        self._failures: dict[str, tuple[int, float]] = {}

    def allowed(self, domain: str, now: float) -> bool:
        failures = self._failures.get(domain)
        return failures is None or now >= failures[1]

    def failed(self, domain: str, now: float) -> float:
        """Count a failure; the seconds until the next attempt."""
        count = self._failures.get(domain, (0, 0.0))[0] + 1
        delay = min(self._policy.backoff_base * 2 ** (count - 1), self._policy.backoff_max)
        self._failures[domain] = (count, now + delay)
        return delay

    def succeeded(self, domain: str) -> None:
        self._failures.pop(domain, None)
