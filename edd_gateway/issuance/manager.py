"""
On-demand issuance and renewal for the served custom domains
(L{IssuanceManager}): the certificates every replica serves, read from the
shared storage; an issuance started by the first TLS connection for a served
domain without one, or by renewal once two thirds of a certificate's life
have passed; one replica at a time per domain (the lease), the others
waiting for its result in the storage; the caps, the backoff after failures
(the old certificate is served meanwhile), the counts for /metrics.

Nothing here is started for a name that is not served (L{DomainLookup}): a
name a client merely sends in SNI costs a dictionary lookup, no ACME
traffic, no database query.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.domains.model import DomainLookup
from edd_gateway.issuance.challenges import ChallengeBoard
from edd_gateway.issuance.client import AcmeProblem
from edd_gateway.issuance.loaded import loaded_certificate
from edd_gateway.issuance.policy import Backoff, IssuancePolicy
from edd_gateway.issuance.storage import CertificateStorage, StoredCertificate
from edd_gateway.state.postgres import DatabaseUnavailable
from edd_gateway.state.triggers import first_line
from edd_gateway.tls.secret import LoadedCertificate

__all__ = ["IssuanceCounts", "IssuanceManager", "replica_name"]

_log = Logger()


def replica_name() -> str:
    """Who holds a lease: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class IssuanceCounts:
    """What /metrics reports of issuance on this replica."""

    issued: int = 0
    renewed: int = 0
    failed: int = 0
    capped: int = 0
    loaded_from_peers: int = 0


class IssuanceManager(Service):
    """
    @param issuer: runs one issuance (L{edd_gateway.issuance.issuer.Issuer}).
    @param holder: this replica's name in leases.
    """

    def __init__(self, lookup: DomainLookup, storage: CertificateStorage, issuer: Any, board: ChallengeBoard,
                 clock: IReactorTime, *, policy: IssuancePolicy = IssuancePolicy(), holder: str | None = None) -> None:
        self.lookup = lookup
        self.storage = storage
        self.issuer = issuer
        self.board = board
        self.policy = policy
        self._clock = clock
        self.holder = holder or replica_name()
        self.counts = IssuanceCounts()
        self._stored: dict[str, StoredCertificate] = {}
        self._served: dict[str, LoadedCertificate] = {}
        self._in_flight: dict[str, Deferred[LoadedCertificate | None]] = {}
        self._backoff = Backoff(policy)
        self._checker: LoopingCall | None = None
        #: Incremented whenever a served certificate is added or replaced (the TLS contexts' cache follows it).
        self.generation = 0

    # What the HTTP side asks (CertificateView) and the TLS side reads.
    def has_certificate(self, name: str) -> bool:
        return name in self._served

    def http01_answer(self, name: str, token: str) -> str | None:
        return self.board.http01(name, token)

    def certificate_for(self, name: str) -> LoadedCertificate | None:
        return self._served.get(name)

    def certificates(self) -> tuple[LoadedCertificate, ...]:
        """Every certificate served now."""
        return tuple(self._served.values())

    def expiry(self) -> dict[str, float]:
        """Each served certificate's end of validity (POSIX seconds), by domain."""
        return {name: stored.not_after.timestamp() for name, stored in self._stored.items()}

    def startService(self) -> None:
        super().startService()
        checker = self._checker = LoopingCall(self.check)
        checker.clock = self._clock
        checker.start(self.policy.check_interval, now=True).addErrback(
            lambda reason: _log.failure("issuance: the renewal check stopped", reason))

    def stopService(self) -> None:
        super().stopService()
        if self._checker is not None and self._checker.running:
            self._checker.stop()

    def check(self) -> Deferred[None]:
        """Read the stored certificates (other replicas' work), then start the renewals due."""
        return ensureDeferred(self._check()).addErrback(self._check_failed)

    async def _check(self) -> None:
        await self.load()
        now = self._clock.seconds()
        for name in self.lookup.served_names():
            stored = self._stored.get(name)
            if stored is None or name in self._in_flight or not self._backoff.allowed(name, now):
                continue
            if now >= self.policy.renew_at(stored.not_before, stored.not_after):
                _log.info("issuance: renewing {domain} (valid until {until})", domain=name,
                          until=stored.not_after.isoformat())
                self.obtain(name)

    def _check_failed(self, reason: Failure) -> None:
        if reason.check(DatabaseUnavailable) and not self._stored:
            return  # before the first connect: nothing to say yet
        _log.warn("issuance: cannot read the stored certificates ({error})",
                  error=first_line(reason.value) if reason.value is not None else "?")

    async def load(self) -> None:
        """Serve every stored certificate that is new here (parsed once per chain)."""
        for stored in (await self.storage.load_certificates()).values():
            if self._install(stored):
                self.counts.loaded_from_peers += 1

    def _install(self, stored: StoredCertificate) -> bool:
        held = self._stored.get(stored.domain)
        if held is not None and held.chain_pem == stored.chain_pem:
            return False
        try:
            loaded = loaded_certificate(stored)
        except ValueError as problem:
            _log.error("issuance: the stored certificate of {domain} is unusable: {problem}",
                       domain=stored.domain, problem=str(problem))
            return False
        self._stored[stored.domain] = stored
        self._served[stored.domain] = loaded
        self.generation += 1
        return True

    def obtain(self, name: str) -> Deferred[LoadedCertificate | None]:
        """
        The certificate of C{name}, obtained now unless one is under way
        (the same result for every caller); None when C{name} is not served,
        capped, backed off, or the issuance failed.
        """
        running = self._in_flight.get(name)
        if running is None:
            running = self._in_flight[name] = ensureDeferred(self._obtain(name))
            running.addErrback(self._unexpected, name)
            running.addBoth(self._finished, name)
        return _copy(running)

    def _unexpected(self, reason: Failure, name: str) -> None:
        _log.failure("issuance: obtaining a certificate for {domain} failed", reason, domain=name)
        return None

    def _finished(self, result: Any, name: str) -> Any:
        self._in_flight.pop(name, None)
        return result

    async def _obtain(self, name: str) -> LoadedCertificate | None:
        if self.lookup.served(name) is None:
            return None
        if not self._backoff.allowed(name, self._clock.seconds()):
            return self._served.get(name)
        if not await self._within_caps(name):
            return self._served.get(name)
        before = self._stored.get(name)
        # Another replica's lease lasts at most one lease length; waiting two
        # covers a lease taken just before this one looked.
        deadline = self._clock.seconds() + 2 * self.policy.lease
        while self._clock.seconds() < deadline:
            if await self.storage.take_lease(name, self.holder, self.policy.lease):
                try:
                    return await self._issue(name, renewal=before is not None)
                finally:
                    await self.storage.release_lease(name, self.holder)
            # Another replica issues it: its result lands in the storage.
            await deferLater(self._clock, 1.0, lambda: None)
            await self.load()
            if self._stored.get(name) is not before:
                return self._served.get(name)
        return self._served.get(name)

    async def _within_caps(self, name: str) -> bool:
        attempts = await self.storage.attempts(name)
        policy = self.policy
        if attempts.domain < policy.per_domain_hour and attempts.overall < policy.per_hour:
            return True
        self.counts.capped += 1
        self._backoff.failed(name, self._clock.seconds())
        _log.warn("issuance: not issuing for {domain}: {domain_count} attempts for it and {overall} overall in the "
                  "last hour (caps {per_domain} and {per_hour})", domain=name, domain_count=attempts.domain,
                  overall=attempts.overall, per_domain=policy.per_domain_hour, per_hour=policy.per_hour)
        return False

    async def _issue(self, name: str, renewal: bool) -> LoadedCertificate | None:
        await self.load()
        stored = self._stored.get(name)
        if stored is not None and self._clock.seconds() < self.policy.renew_at(stored.not_before, stored.not_after):
            # Another replica finished it while this one waited for the lease.
            return self._served.get(name)
        await self.storage.record_attempt(name)
        started = self._clock.seconds()
        try:
            issued = await self.issuer.issue(name)
        except AcmeProblem as problem:
            self._failed(name, problem)
            return self._served.get(name)
        except Exception as error:
            # The CA unreachable, its TLS refused, a worker thread's surprise:
            # a failure like the CA's own, backed off the same way.
            self._failed(name, AcmeProblem(f"{type(error).__name__}: {first_line(error)}"))
            return self._served.get(name)
        await self.storage.save_certificate(issued)
        self._install(issued)
        self._backoff.succeeded(name)
        if renewal:
            self.counts.renewed += 1
        else:
            self.counts.issued += 1
        _log.info("issuance: {what} a certificate for {domain} in {seconds:.2f} s, valid until {until}",
                  what="renewed" if renewal else "obtained", domain=name, seconds=self._clock.seconds() - started,
                  until=issued.not_after.isoformat())
        return self._served.get(name)

    def _failed(self, name: str, problem: AcmeProblem) -> None:
        self.counts.failed += 1
        delay = self._backoff.failed(name, self._clock.seconds())
        kept = " (the current certificate is served meanwhile)" if name in self._served else ""
        _log.warn("issuance: the order for {domain} failed: {error}; problem document: {problem}; retrying in "
                  "{delay:.0f} s at the earliest{kept}", domain=name, error=str(problem),
                  problem=problem.problem or "none", delay=delay, kept=kept)


def _copy(deferred: Deferred[LoadedCertificate | None]) -> Deferred[LoadedCertificate | None]:
    """A new Deferred with C{deferred}'s result, so a caller's timeout cancels only its own wait."""
    copy: Deferred[LoadedCertificate | None] = Deferred()

    def forward(result: Any) -> Any:
        if not copy.called:
            copy.callback(None if isinstance(result, Failure) else result)
        return result

    deferred.addBoth(forward)
    return copy
