"""
Tests for L{edd_gateway.issuance.manager} and L{edd_gateway.issuance.sni}
over the memory storage, a fake issuer and a L{Clock}: issuance only for
served domains, one at a time, another replica's result loaded, failures
backed off, caps, renewal at two thirds of the lifetime, and what the TLS
hook answers.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.domains.model import DomainDirectory, DomainLookup, DomainSnapshot
from edd_gateway.domains.testing import domain
from edd_gateway.issuance.challenge_sync import ChallengeSync
from edd_gateway.issuance.challenges import ChallengeBoard, PendingChallenge, validation_certificate
from edd_gateway.issuance.issuer import BoardPublisher
from edd_gateway.issuance.client import AcmeProblem
from edd_gateway.issuance.manager import IssuanceManager
from edd_gateway.issuance.policy import IssuancePolicy
from edd_gateway.issuance.sni import OnDemandSNI
from edd_gateway.issuance.testing import FakeIssuer, MemoryCertificateStorage, stored_certificate
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot
from edd_gateway.tls.ondemand import Refuse, Terminate, Validate, Wait

NAME = "app.example.test"


class ManagerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.containers = ContainerDirectory(ContainerSnapshot(
            {"web1": Container("web1", "u1", "running", "10.0.0.5"),
             "off": Container("off", "u1", "stopped", "10.0.0.6")}, ready=True))
        self.domains = DomainDirectory(DomainSnapshot(
            {NAME: domain(NAME), "off.example.test": domain("off.example.test", "off"),
             "wait.example.test": domain("wait.example.test", status="pending")}, ready=True))
        self.lookup = DomainLookup(self.domains, self.containers)
        self.storage = MemoryCertificateStorage(self.clock)
        self.issuer = FakeIssuer(self.clock)
        self.board = ChallengeBoard()
        self.policy = IssuancePolicy(per_domain_hour=3, per_hour=10, check_interval=60, lease=30,
                                     backoff_base=60)
        self.manager = IssuanceManager(self.lookup, self.storage, self.issuer, self.board, self.clock,
                                       policy=self.policy, holder="me")


class ManagerTests(ManagerCase):
    def test_not_served_never_issued(self) -> None:
        for name in ("off.example.test", "wait.example.test", "unknown.example.test"):
            self.assertIsNone(self.successResultOf(self.manager.obtain(name)))
        self.assertEqual(self.issuer.calls, [])
        self.assertEqual(self.storage.attempt_times, [])

    def test_issued_once_for_concurrent_callers(self) -> None:
        pending: Deferred[object] = Deferred()
        self.issuer.next = pending
        first, second = self.manager.obtain(NAME), self.manager.obtain(NAME)
        self.assertNoResult(first)
        pending.callback(stored_certificate(NAME, self.clock))
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.issuer.calls, [NAME])
        self.assertTrue(self.manager.has_certificate(NAME))
        self.assertIn(NAME, self.storage.certificates)
        self.assertEqual(self.storage.leases, {})
        self.assertEqual(self.manager.counts.issued, 1)
        self.assertIn(NAME, self.manager.expiry())

    def test_another_replica_issues(self) -> None:
        self.storage.leases[NAME] = ("other", self.clock.seconds() + 30)
        obtained = self.manager.obtain(NAME)
        self.clock.advance(1)
        self.assertNoResult(obtained)
        self.storage.certificates[NAME] = stored_certificate(NAME, self.clock)
        self.clock.advance(1)
        self.assertIsNotNone(self.successResultOf(obtained))
        self.assertEqual(self.issuer.calls, [])
        self.assertEqual(self.manager.counts.loaded_from_peers, 1)

    def test_failure_backs_off(self) -> None:
        self.issuer.next = AcmeProblem("rejected", '{"type": "urn:ietf:params:acme:error:rejectedIdentifier"}')
        self.assertIsNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual(self.manager.counts.failed, 1)
        self.assertIsNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual(len(self.issuer.calls), 1)
        self.clock.advance(61)
        self.assertIsNotNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual(len(self.issuer.calls), 2)

    def test_caps(self) -> None:
        for _ in range(3):
            self.storage.attempt_times.append((NAME, self.clock.seconds()))
        self.assertIsNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual((self.issuer.calls, self.manager.counts.capped), ([], 1))

    def test_renewal_at_two_thirds(self) -> None:
        self.storage.certificates[NAME] = stored_certificate(NAME, self.clock, lifetime=90, age=50)
        self.successResultOf(self.manager.check())
        self.assertEqual(self.issuer.calls, [])
        self.clock.advance(11)
        self.successResultOf(self.manager.check())
        self.assertEqual(self.issuer.calls, [NAME])
        self.assertEqual(self.manager.counts.renewed, 1)

    def test_renewal_failure_keeps_old_certificate(self) -> None:
        old = stored_certificate(NAME, self.clock, lifetime=90, age=80)
        self.storage.certificates[NAME] = old
        self.issuer.next = AcmeProblem("down")
        self.successResultOf(self.manager.check())
        served = self.manager.certificate_for(NAME)
        assert served is not None
        self.assertEqual(served.not_after, old.not_after)
        self.successResultOf(self.manager.check())
        self.assertEqual(len(self.issuer.calls), 1, "backed off")

    def test_stopped_container_not_renewed(self) -> None:
        self.storage.certificates["off.example.test"] = stored_certificate("off.example.test", self.clock,
                                                                           lifetime=90, age=80)
        self.successResultOf(self.manager.check())
        self.assertEqual(self.issuer.calls, [])


class SNITests(ManagerCase):
    def setUp(self) -> None:
        super().setUp()
        self.sni = OnDemandSNI(self.manager, self.lookup, self.board, self.clock, first_wait=5)

    def test_unknown_and_unserved_names_are_not_the_hooks(self) -> None:
        for name in ("unknown.example.test", "off.example.test", "wait.example.test"):
            self.assertIsNone(self.sni.answer(name, ("h2", "http/1.1")))
        self.assertEqual(self.issuer.calls, [])

    def test_validation(self) -> None:
        self.assertIsInstance(self.sni.answer(NAME, ("acme-tls/1",)), Refuse)
        self.assertIsInstance(self.sni.answer("unknown.example.test", ("acme-tls/1",)), Refuse)
        self.board.put_tls_alpn01(NAME, validation_certificate(NAME, "token.thumb"))
        self.assertIsInstance(self.sni.answer(NAME, ("acme-tls/1",)), Validate)
        self.assertEqual(self.issuer.calls, [])

    def test_first_connection_waits_bounded(self) -> None:
        self.issuer.next = Deferred()
        answer = self.sni.answer(NAME, ())
        assert isinstance(answer, Wait)
        self.assertNoResult(answer.certificate)
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(answer.certificate))

    def test_first_connection_gets_the_certificate(self) -> None:
        answer = self.sni.answer(NAME, ())
        assert isinstance(answer, Wait)
        self.assertIsNotNone(self.successResultOf(answer.certificate))
        self.assertIsInstance(self.sni.answer(NAME, ()), Terminate)
        self.clock.advance(5)


class UnreachableCATests(ManagerCase):
    def test_any_error_is_a_failure_backed_off(self) -> None:
        self.issuer.next = ConnectionRefusedError("connection refused")
        self.assertIsNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual(self.manager.counts.failed, 1)
        self.assertIsNone(self.successResultOf(self.manager.obtain(NAME)))
        self.assertEqual(len(self.issuer.calls), 1)


class SharedChallengeTests(ManagerCase):
    def test_other_replicas_challenges_answered_here(self) -> None:
        self.storage.put_challenge(PendingChallenge(NAME, "http-01", "tok", "tok.thumb"), "other")
        self.storage.put_challenge(PendingChallenge(NAME, "tls-alpn-01", "tok2", "tok2.thumb"), "other")
        self.storage.put_challenge(PendingChallenge("mine.test", "http-01", "t", "t.thumb"), "me")
        sync = ChallengeSync(self.storage, self.board, "me")
        sync.read()
        self.assertEqual(self.board.http01(NAME, "tok"), "tok.thumb")
        self.assertIsNone(self.board.http01("mine.test", "t"), "its own are on the board already")
        validation = self.board.tls_alpn01(NAME)
        assert validation is not None
        self.assertIs(self.board.tls_alpn01(NAME), validation, "made once")
        self.storage.delete_challenges(NAME, "other")
        sync.read()
        self.assertIsNone(self.board.http01(NAME, "tok"))
        self.assertIsNone(self.board.tls_alpn01(NAME))

    def test_publisher_shares_before_validation(self) -> None:
        publisher = BoardPublisher(self.board, lambda function, *args: function(*args), self.storage, "me",
                                   self.clock)
        publisher.publish(NAME, "http-01", "tok", "tok.thumb")
        self.assertEqual(self.board.http01(NAME, "tok"), "tok.thumb")
        self.assertEqual(list(self.storage.challenges), [(NAME, "tok")])
        publisher.withdraw(NAME)
        self.assertIsNone(self.board.http01(NAME, "tok"))
        self.assertEqual(self.storage.challenges, {})
        self.clock.advance(1)
