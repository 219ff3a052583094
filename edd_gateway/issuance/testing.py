"""Fakes for issuance tests: the storage in memory (an injected clock for leases and attempts)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from edd_gateway.issuance.challenges import PendingChallenge
from edd_gateway.issuance.storage import Attempts, StoredAccount, StoredCertificate

__all__ = ["FakeIssuer", "MemoryCertificateStorage", "stored_certificate"]


class MemoryCertificateStorage:
    """L{edd_gateway.issuance.storage.CertificateStorage} in dictionaries."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.accounts: dict[str, StoredAccount] = {}
        self.certificates: dict[str, StoredCertificate] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.attempt_times: list[tuple[str, float]] = []
        self.challenges: dict[tuple[str, str], tuple[PendingChallenge, str]] = {}

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

    def put_challenge(self, challenge: PendingChallenge, holder: str) -> Deferred[None]:
        self.challenges[(challenge.domain, challenge.token)] = (challenge, holder)
        return succeed(None)

    def delete_challenges(self, domain: str, holder: str) -> Deferred[None]:
        for key in [key for key, (_, by) in self.challenges.items() if key[0] == domain and by == holder]:
            del self.challenges[key]
        return succeed(None)

    def load_challenges(self, other_than: str) -> Deferred[list[PendingChallenge]]:
        return succeed([challenge for challenge, by in self.challenges.values() if by != other_than])


def stored_certificate(domain: str, clock: IReactorTime, lifetime: float = 90 * 86400.0,
                       age: float = 0.0) -> StoredCertificate:
    """A self-signed certificate for C{domain}, issued C{age} seconds before C{clock}'s now, as storage holds it."""
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import serialization

    from edd_gateway.tls.devcert import self_signed_certificate

    start = datetime.fromtimestamp(clock.seconds() - age, timezone.utc)
    certificate, key = self_signed_certificate((domain,), start, start + timedelta(seconds=lifetime))
    chain = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return StoredCertificate(domain, chain, key_pem, certificate.not_valid_before_utc,
                             certificate.not_valid_after_utc)


class FakeIssuer:
    """An issuer that answers from C{results} (a certificate, an exception, or a Deferred) and counts its calls."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.calls: list[str] = []
        self.next: object = None

    async def issue(self, domain: str) -> StoredCertificate:
        self.calls.append(domain)
        result, self.next = self.next, None
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, Deferred):
            return await result
        return stored_certificate(domain, self._clock)
