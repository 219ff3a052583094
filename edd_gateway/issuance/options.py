"""
The C{--acme-*} options (custom domains' certificates), one
L{edd_gateway.options.OptionGroup}, and L{issuance_settings}, which turns
them into the client's settings and the policy.  Issuance is on when
C{--acme-directory} is given; it needs C{--database} (the certificates are
shared through it) and C{--acme-storage-key} (their keys are sealed with it).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from twisted.python.usage import UsageError

from edd_gateway.issuance.client import CHALLENGE_TYPES, AcmeSettings
from edd_gateway.issuance.policy import IssuancePolicy
from edd_gateway.issuance.sealing import load_storage_key

__all__ = ["ACME", "check_acme", "issuance_settings"]


def check_acme(config: Any) -> None:
    directory = config["acme-directory"]
    if directory is None:
        for name in ("acme-storage-key", "acme-email", "acme-ca-bundle"):
            if config[name] is not None:
                raise UsageError(f"--{name} needs --acme-directory")
        return
    parts = urlsplit(directory)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError(f"--acme-directory must be an https:// URL, not {directory!r}")
    if config["database"] is None:
        raise UsageError("--acme-directory needs --database (the replicas share certificates through it)")
    if config["acme-storage-key"] is None:
        raise UsageError("--acme-directory needs --acme-storage-key FILE (certificate keys are sealed with it)")
    try:
        load_storage_key(config["acme-storage-key"])
    except ValueError as problem:
        raise UsageError(f"--acme-storage-key: {problem}") from None
    bundle = config["acme-ca-bundle"]
    if bundle is not None and not os.access(bundle, os.R_OK):
        raise UsageError(f"--acme-ca-bundle: cannot read {bundle}")
    kinds = tuple(kind.strip() for kind in config["acme-challenges"].split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in CHALLENGE_TYPES]
    if not kinds or unknown:
        raise UsageError(f"--acme-challenges must name some of {', '.join(CHALLENGE_TYPES)}")
    config["acme-challenges"] = kinds
    for name in ("acme-first-wait", "acme-check-interval"):
        if config[name] <= 0:
            raise UsageError(f"--{name} must be positive")
    if config["acme-max-per-domain"] < 0 or config["acme-max-per-hour"] < 0:
        raise UsageError("--acme-max-per-domain and --acme-max-per-hour must not be negative")
    if not 0 < config["acme-renew-fraction"] < 1:
        raise UsageError("--acme-renew-fraction must be between 0 and 1")


_DEFAULT = IssuancePolicy()

ACME: list[list[Any]] = [
    ["acme-directory", None, None, "An ACME directory URL: custom domains get certificates from it on their "
     "first TLS connection (e.g. https://acme-v02.api.letsencrypt.org/directory)."],
    ["acme-email", None, None, "The contact address of the ACME account."],
    ["acme-ca-bundle", None, None, "CA certificates (PEM) the ACME directory's TLS is checked against, for a "
     "test CA (default: the system's)."],
    ["acme-storage-key", None, None, "A file holding a 32-byte key (base64 or hex) that seals the certificate "
     "and account keys kept in PostgreSQL; every replica needs the same one."],
    ["acme-challenges", None, ",".join(CHALLENGE_TYPES), "The ACME challenges answered, preferred first "
     "(tls-alpn-01 on the TLS listeners, http-01 on the plain ones)."],
    ["acme-first-wait", None, _DEFAULT.first_wait, "Seconds the first TLS connection for a domain without a "
     "certificate is held while one is obtained (then a TLS alert).", float],
    ["acme-max-per-domain", None, _DEFAULT.per_domain_hour, "Issuance attempts per domain per hour, all "
     "replicas together.", int],
    ["acme-max-per-hour", None, _DEFAULT.per_hour, "Issuance attempts per hour overall, all replicas "
     "together.", int],
    ["acme-check-interval", None, _DEFAULT.check_interval, "Seconds between reads of the stored certificates "
     "(other replicas' issuances) and renewal checks.", float],
    ["acme-renew-fraction", None, _DEFAULT.renew_fraction, "Renew once this fraction of a certificate's "
     "lifetime has passed.", float],
]


def issuance_settings(config: Any) -> tuple[AcmeSettings, IssuancePolicy]:
    """The ACME client's settings and the issuance policy, from checked options."""
    settings = AcmeSettings(config["acme-directory"], email=config["acme-email"], ca_bundle=config["acme-ca-bundle"],
                            challenges=config["acme-challenges"])
    policy = IssuancePolicy(first_wait=config["acme-first-wait"], per_domain_hour=config["acme-max-per-domain"],
                            per_hour=config["acme-max-per-hour"], renew_fraction=config["acme-renew-fraction"],
                            check_interval=config["acme-check-interval"])
    return settings, policy
