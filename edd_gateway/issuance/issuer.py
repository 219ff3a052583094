"""
One issuance, from the reactor's side: the account (loaded from storage,
or made, registered and saved: the first replica's is every replica's),
a new key for the domain, the order run in a worker thread
(L{edd_gateway.issuance.client.BlockingAcme}: the C{acme} library blocks),
its challenges placed on the L{ChallengeBoard} from the reactor thread and
in the challenges table for the other replicas, and
the result as a L{StoredCertificate} ready for storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool

from edd_gateway.issuance.challenges import ChallengeBoard, PendingChallenge, validation_certificate
from edd_gateway.issuance.client import AcmeSettings, BlockingAcme, new_account_key
from edd_gateway.issuance.storage import CertificateStorage, StoredAccount, StoredCertificate

__all__ = ["BoardPublisher", "Issuer", "RunInThread", "certificate_from_chain", "thread_runner"]

#: C{run(function, *args)}: C{function(*args)} in a worker thread, its result as a Deferred.
RunInThread = Callable[..., Deferred[Any]]


def thread_runner(reactor: Any) -> RunInThread:
    """The reactor's thread pool (C{deferToThread}, with the reactor named rather than imported)."""
    return lambda function, *args: deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


#: Seconds between a challenge written to the table and the CA told to validate it: the other
#: replicas' notification and read (milliseconds on one network), with room to spare.
SHARE_DELAY = 0.5


class BoardPublisher:
    """
    The worker thread's way to the board and the challenges table: every
    change made on the reactor thread (C{call}, which waits for a Deferred's
    result), the table written before the CA is told to validate.
    """

    def __init__(self, board: ChallengeBoard, call: Callable[..., Any], storage: CertificateStorage, holder: str,
                 clock: Any, share_delay: float = SHARE_DELAY) -> None:
        self._board = board
        self._call = call
        self._storage = storage
        self._holder = holder
        self._clock = clock
        self._share_delay = share_delay

    def publish(self, domain: str, kind: str, token: str, key_authorization: str) -> None:
        if kind == "http-01":
            self._call(self._board.put_http01, domain, token, key_authorization)
        else:
            # Made in the worker thread: an EC key and a signature are the slow part.
            self._call(self._board.put_tls_alpn01, domain, validation_certificate(domain, key_authorization))
        self._call(self._share, PendingChallenge(domain, kind, token, key_authorization))

    def _share(self, challenge: PendingChallenge) -> Deferred[None]:
        shared = self._storage.put_challenge(challenge, self._holder)
        return shared.addCallback(lambda _: deferLater(self._clock, self._share_delay, lambda: None))

    def withdraw(self, domain: str) -> None:
        self._call(self._board.clear, domain)
        self._call(self._storage.delete_challenges, domain, self._holder)


def certificate_from_chain(domain: str, chain_pem: str, key_pem: bytes) -> StoredCertificate:
    """The stored form of a chain (leaf first) and its key."""
    leaf = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))[0]
    return StoredCertificate(domain, chain_pem, key_pem, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def _domain_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Issuer:
    """
    @param run: runs blocking calls off the reactor thread (L{thread_runner}).
    @param call_in_reactor: what the worker thread calls the board through
        (C{blockingCallFromThread} on C{reactor} by default).
    @param make_acme: the blocking client's constructor (a fake in tests).
    @param holder: this replica's name on the challenges it shares.
    """

    def __init__(self, settings: AcmeSettings, storage: CertificateStorage, board: ChallengeBoard, reactor: Any, *,
                 holder: str, run: RunInThread | None = None, call_in_reactor: Callable[..., Any] | None = None,
                 make_acme: Callable[[AcmeSettings, bytes, str | None], Any] = BlockingAcme) -> None:
        self.settings = settings
        self.storage = storage
        self._run = run if run is not None else thread_runner(reactor)
        call = call_in_reactor or (lambda function, *args: blockingCallFromThread(reactor, function, *args))
        self._publisher = BoardPublisher(board, call, storage, holder, reactor)
        self._make_acme = make_acme
        self._acme: Any = None

    async def issue(self, domain: str) -> StoredCertificate:
        """
        A new certificate for C{domain}.

        @raise edd_gateway.issuance.client.AcmeProblem: the order failed.
        """
        acme = await self._account()
        key_pem = await self._run(_domain_key)
        chain = await self._run(acme.issue, domain, key_pem, self._publisher)
        return certificate_from_chain(domain, chain, key_pem)

    async def _account(self) -> Any:
        if self._acme is not None:
            return self._acme
        directory = self.settings.directory
        stored = await self.storage.load_account(directory)
        if stored is None:
            # Saved before registering: a replica racing this one keeps
            # whichever key was saved first, and registers that one.
            stored = await self.storage.save_account(directory, StoredAccount(await self._run(new_account_key),
                                                                              None))
        acme = self._make_acme(self.settings, stored.key_pem, stored.uri)
        uri = await self._run(acme.register)
        if uri != stored.uri:
            await self.storage.save_account(directory, StoredAccount(stored.key_pem, uri))
        self._acme = acme
        return acme
