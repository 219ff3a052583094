"""
What issuance keeps in PostgreSQL, shared by every replica
(L{PostgresCertificateStorage}; L{edd_gateway.issuance.testing} has the
memory stand-in): the ACME account key per directory URL, each domain's
certificate chain and key (keys sealed, L{edd_gateway.issuance.sealing}),
the issuance lease and the attempts the caps count.

The lease is a row, not an advisory lock: an advisory lock belongs to one
server session, and the pool's connections come and go (and a lock held
across an issuance would pin one of them for its whole length).  A lease
taken with one atomic upsert expires on its own, so a replica that died
mid-issuance blocks the others for at most the lease's length; the
database's clock decides, so replicas' clocks need not agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred

from edd_gateway.domains.source import SqlRunner
from edd_gateway.issuance.challenges import PendingChallenge
from edd_gateway.issuance.sealing import Sealer

__all__ = ["Attempts", "CertificateStorage", "PostgresCertificateStorage", "StoredAccount", "StoredCertificate"]


@dataclass(frozen=True)
class StoredCertificate:
    """One domain's certificate: the PEM chain (leaf first) and the key's PEM, opened."""

    domain: str
    chain_pem: str
    key_pem: bytes
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class StoredAccount:
    """The ACME account of one directory URL: its key's PEM (opened) and its URI, once registered."""

    key_pem: bytes
    uri: str | None


@dataclass(frozen=True)
class Attempts:
    """Issuance attempts within the last hour: for one domain, and overall."""

    domain: int
    overall: int


class CertificateStorage(Protocol):
    """What issuance needs of its storage (L{PostgresCertificateStorage}, or the memory fake)."""

    def load_account(self, directory: str) -> Deferred[StoredAccount | None]: ...
    def save_account(self, directory: str, account: StoredAccount) -> Deferred[StoredAccount]: ...
    def load_certificates(self) -> Deferred[dict[str, StoredCertificate]]: ...
    def save_certificate(self, certificate: StoredCertificate) -> Deferred[None]: ...
    def take_lease(self, domain: str, holder: str, seconds: float) -> Deferred[bool]: ...
    def release_lease(self, domain: str, holder: str) -> Deferred[None]: ...
    def attempts(self, domain: str) -> Deferred[Attempts]: ...
    def record_attempt(self, domain: str) -> Deferred[None]: ...
    def put_challenge(self, challenge: PendingChallenge, holder: str) -> Deferred[None]: ...
    def delete_challenges(self, domain: str, holder: str) -> Deferred[None]: ...
    def load_challenges(self, other_than: str) -> Deferred[list[PendingChallenge]]: ...


_TAKE_LEASE = (
    "INSERT INTO gateway_acme_leases (domain, holder, expires_at)"
    " VALUES (%s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (domain) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
    " WHERE gateway_acme_leases.expires_at < now() OR gateway_acme_leases.holder = EXCLUDED.holder"
    " RETURNING holder"
)
_SAVE_CERTIFICATE = (
    "INSERT INTO gateway_acme_certificates (domain, chain_pem, sealed_key, not_before, not_after)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain) DO UPDATE SET chain_pem = EXCLUDED.chain_pem,"
    " sealed_key = EXCLUDED.sealed_key, not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after,"
    " issued_at = now()"
)
_ATTEMPTS = (
    "SELECT count(*) FILTER (WHERE domain = %s), count(*) FROM gateway_acme_attempts"
    " WHERE started_at > now() - interval '1 hour'"
)


def _account_what(directory: str) -> str:
    return f"account:{directory}"


def _certificate_what(domain: str) -> str:
    return f"certificate:{domain}"


class PostgresCertificateStorage:
    """The gateway's ACME tables (L{edd_gateway.domains.schema}), keys sealed with C{sealer}."""

    def __init__(self, sql: SqlRunner, sealer: Sealer) -> None:
        self._sql = sql
        self._sealer = sealer

    def load_account(self, directory: str) -> Deferred[StoredAccount | None]:
        def account(rows: Sequence[Sequence[Any]]) -> StoredAccount | None:
            if not rows:
                return None
            return StoredAccount(self._sealer.open(rows[0][0], _account_what(directory)), rows[0][1])

        query = "SELECT sealed_key, account_uri FROM gateway_acme_account WHERE directory = %s"
        return self._sql.gateway_query(query, (directory,)).addCallback(account)

    def save_account(self, directory: str, account: StoredAccount) -> Deferred[StoredAccount]:
        """Keep C{account} unless another replica's is there already; the one kept, either way."""
        return ensureDeferred(self._save_account(directory, account))

    async def _save_account(self, directory: str, account: StoredAccount) -> StoredAccount:
        sealed = self._sealer.seal(account.key_pem, _account_what(directory))
        await self._sql.gateway_operation(
            "INSERT INTO gateway_acme_account (directory, sealed_key, account_uri) VALUES (%s, %s, %s)"
            " ON CONFLICT (directory) DO NOTHING", (directory, sealed, account.uri))
        kept = await self.load_account(directory)
        if kept is None:
            return account
        if kept.key_pem == account.key_pem and kept.uri is None and account.uri is not None:
            # The same key, registered since: its URI saves the next start a lookup.
            await self._sql.gateway_operation(
                "UPDATE gateway_acme_account SET account_uri = %s WHERE directory = %s", (account.uri, directory))
            return account
        return kept

    def load_certificates(self) -> Deferred[dict[str, StoredCertificate]]:
        def certificates(rows: Sequence[Sequence[Any]]) -> dict[str, StoredCertificate]:
            return {
                domain: StoredCertificate(domain, chain, self._sealer.open(sealed, _certificate_what(domain)),
                                          not_before, not_after)
                for domain, chain, sealed, not_before, not_after in rows
            }

        query = "SELECT domain, chain_pem, sealed_key, not_before, not_after FROM gateway_acme_certificates"
        return self._sql.gateway_query(query).addCallback(certificates)

    def save_certificate(self, certificate: StoredCertificate) -> Deferred[None]:
        sealed = self._sealer.seal(certificate.key_pem, _certificate_what(certificate.domain))
        return self._sql.gateway_operation(_SAVE_CERTIFICATE, (
            certificate.domain, certificate.chain_pem, sealed, certificate.not_before, certificate.not_after))

    def take_lease(self, domain: str, holder: str, seconds: float) -> Deferred[bool]:
        """Whether C{holder} now holds C{domain}'s lease for C{seconds} (taken, or renewed)."""
        return self._sql.gateway_query(_TAKE_LEASE, (domain, holder, float(seconds))).addCallback(bool)

    def release_lease(self, domain: str, holder: str) -> Deferred[None]:
        query = "DELETE FROM gateway_acme_leases WHERE domain = %s AND holder = %s"
        return self._sql.gateway_operation(query, (domain, holder))

    def attempts(self, domain: str) -> Deferred[Attempts]:
        return self._sql.gateway_query(_ATTEMPTS, (domain,)).addCallback(
            lambda rows: Attempts(int(rows[0][0]), int(rows[0][1])))

    def record_attempt(self, domain: str) -> Deferred[None]:
        return self._sql.gateway_operation("INSERT INTO gateway_acme_attempts (domain) VALUES (%s)", (domain,))

    def put_challenge(self, challenge: PendingChallenge, holder: str) -> Deferred[None]:
        query = ("INSERT INTO gateway_acme_challenges (domain, token, kind, key_authorization, holder)"
                 " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain, token) DO UPDATE SET kind = EXCLUDED.kind,"
                 " key_authorization = EXCLUDED.key_authorization, holder = EXCLUDED.holder, placed_at = now()")
        return self._sql.gateway_operation(query, (challenge.domain, challenge.token, challenge.kind,
                                                   challenge.key_authorization, holder))

    def delete_challenges(self, domain: str, holder: str) -> Deferred[None]:
        query = "DELETE FROM gateway_acme_challenges WHERE domain = %s AND holder = %s"
        return self._sql.gateway_operation(query, (domain, holder))

    def load_challenges(self, other_than: str) -> Deferred[list[PendingChallenge]]:
        """The challenges other replicas placed within the last hour (older ones are a dead replica's)."""
        query = ("SELECT domain, kind, token, key_authorization FROM gateway_acme_challenges WHERE holder <> %s"
                 " AND placed_at > now() - interval '1 hour'")
        return self._sql.gateway_query(query, (other_than,)).addCallback(
            lambda rows: [PendingChallenge(domain, kind, token, key) for domain, kind, token, key in rows])
