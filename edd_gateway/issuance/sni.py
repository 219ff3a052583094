"""
The TLS listener's hook for custom domains (L{OnDemandSNI}, an
L{edd_gateway.tls.ondemand.SNIHook}): what a ClientHello's name gets.

 - ALPN C{acme-tls/1}: the CA validating a TLS-ALPN-01 challenge; the
   validation certificate when this replica placed one for the name, else
   an alert.  Never an issuance.
 - a served custom domain with a certificate: that certificate.
 - a served custom domain without one: an issuance (or the one under way),
   the handshake held for at most C{first_wait} seconds, then the new
   certificate or an alert.  Why wait rather than fail at once: an order
   answered by this gateway takes a second or two on loopback and a few
   seconds against Let's Encrypt, well within a client's patience, so the
   first visitor is served instead of shown an error; the bound keeps a CA
   outage from holding connections open for long, and each domain has one
   issuance however many connections wait for it.
 - any other name: not the hook's (the listener's usual choice).  An
   unknown name costs two dictionary lookups and no ACME traffic.
"""

from __future__ import annotations


from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from edd_gateway.domains.model import DomainLookup
from edd_gateway.issuance.challenges import ACME_TLS_ALPN, ChallengeBoard
from edd_gateway.issuance.manager import IssuanceManager
from edd_gateway.tls.ondemand import Refuse, SNIAnswer, Terminate, Validate, Wait
from edd_gateway.tls.secret import LoadedCertificate

__all__ = ["OnDemandSNI"]


class OnDemandSNI:
    """Custom domains' certificates by SNI, obtained on the first connection."""

    def __init__(self, manager: IssuanceManager, lookup: DomainLookup, board: ChallengeBoard, clock: IReactorTime,
                 first_wait: float) -> None:
        self.manager = manager
        self.lookup = lookup
        self.board = board
        self._clock = clock
        self.first_wait = first_wait

    @property
    def generation(self) -> int:
        return self.manager.generation

    def certificates(self) -> tuple[LoadedCertificate, ...]:
        return self.manager.certificates()

    def answer(self, name: str, alpn: tuple[str, ...]) -> SNIAnswer:
        if ACME_TLS_ALPN in alpn:
            validation = self.board.tls_alpn01(name)
            if validation is None:
                return Refuse("an ACME TLS-ALPN-01 handshake, and no challenge is pending for the name here")
            return Validate(validation.certificate, validation.key)
        if self.lookup.served(name) is None:
            return None
        certificate = self.manager.certificate_for(name)
        if certificate is not None:
            return Terminate(certificate)
        return Wait(self._bounded(self.manager.obtain(name)),
                    f"no certificate within {self.first_wait:g} s (the issuance goes on; try again shortly)")

    def _bounded(self, obtaining: Deferred[LoadedCertificate | None]) -> Deferred[LoadedCertificate | None]:
        # The manager hands each caller its own Deferred (failures already
        # None): a timeout cancels this wait only, not the issuance.
        return obtaining.addTimeout(self.first_wait, self._clock, onTimeoutCancel=lambda result, timeout: None)
