"""Fakes for issuance tests: the storage in memory (an injected clock for leases and attempts)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from edd_gateway.issuance.storage import Attempts, StoredAccount, StoredCertificate

__all__ = ["MemoryCertificateStorage"]


class MemoryCertificateStorage:
    """L{edd_gateway.issuance.storage.CertificateStorage} in dictionaries."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.accounts: dict[str, StoredAccount] = {}
        self.certificates: dict[str, StoredCertificate] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.attempt_times: list[tuple[str, float]] = []

    def load_account(self, directory: str) -> Deferred[StoredAccount | None]:
        return succeed(self.accounts.get(directory))

    def save_account(self, directory: str, account: StoredAccount) -> Deferred[StoredAccount]:
        kept = self.accounts.setdefault(directory, account)
        if kept.key_pem == account.key_pem and kept.uri is None:
            kept = self.accounts[directory] = account
        return succeed(kept)

    def load_certificates(self) -> Deferred[dict[str, StoredCertificate]]:
        return succeed(dict(self.certificates))

    def save_certificate(self, certificate: StoredCertificate) -> Deferred[None]:
        self.certificates[certificate.domain] = certificate
        return succeed(None)

    def take_lease(self, domain: str, holder: str, seconds: float) -> Deferred[bool]:
        now = self._clock.seconds()
        held = self.leases.get(domain)
        if held is not None and held[1] >= now and held[0] != holder:
            return succeed(False)
        self.leases[domain] = (holder, now + seconds)
        return succeed(True)

    def release_lease(self, domain: str, holder: str) -> Deferred[None]:
        if self.leases.get(domain, ("", 0.0))[0] == holder:
            del self.leases[domain]
        return succeed(None)

    def attempts(self, domain: str) -> Deferred[Attempts]:
        since = self._clock.seconds() - 3600
        recent = [name for name, at in self.attempt_times if at > since]
        return succeed(Attempts(recent.count(domain), len(recent)))

    def record_attempt(self, domain: str) -> Deferred[None]:
        self.attempt_times.append((domain, self._clock.seconds()))
        return succeed(None)
