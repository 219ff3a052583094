"""
Who may log in: the checker accepts a key only when it is one of the
container owner's (compared as blobs), signed with an algorithm the gateway
verifies, and the container runs with SSH on; until an owner's key verified,
an unknown container, a stopped one and another's key get the same answer;
the userauth service refuses with messages the client prints, and logs
every attempt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.auth import (
    ContainerKeyChecker,
    GatewayLogin,
    GatewayUserAuthServer,
    KeyOffered,
    LoginRefused,
    fingerprint,
    is_owner_key,
    key_blob,
    unavailable_reason,
)
from edd_gateway.ssh import username
from edd_gateway.ssh.signatures import SignaturePolicy
from edd_gateway.ssh.username import SSHTarget
from edd_gateway.state.model import ContainerSnapshot

from edd_gateway.ssh.testing import (
    USER_KEYS,
    FakeFactory,
    RecordingSSH,
    attach,
    container,
    directory,
    key,
    kinds,
    line_of,
    public_line,
    typed_key,
)

SERVICE = b"ssh-connection"

def signed_credentials(username: bytes, name: str, session: bytes = b"session-id",
                       signer: str | None = None) -> SSHPrivateKey:
    return signed_with(username, key(name), key(signer or name), session=session)


def signed_with(username: bytes, private: Key, signer: Key | None = None, algorithm: bytes | None = None,
                signature_type: bytes | None = None, session: bytes = b"session-id") -> SSHPrivateKey:
    """Credentials as Conch's userauth server makes them from a signed request."""
    algorithm = algorithm or private.sshType()
    blob = private.public().blob()
    data = _signed_data(session, username, algorithm, blob)
    signature = (signer or private).sign(data, signatureType=signature_type or algorithm)
    return SSHPrivateKey(username, algorithm, blob, data, signature)


def _signed_data(session: bytes, username: bytes, algorithm: bytes, blob: bytes) -> bytes:
    return (NS(session) + bytes((userauth.MSG_USERAUTH_REQUEST,)) + NS(username) + NS(SERVICE)
            + NS(b"publickey") + b"\x01" + NS(algorithm) + NS(blob))


class KeyTests(SynchronousTestCase):
    def test_blob_of_an_openssh_line(self) -> None:
        self.assertEqual(key_blob(public_line("alice")), key("alice").public().blob())

    def test_comment_and_whitespace_do_not_matter(self) -> None:
        self.assertEqual(key_blob("  " + public_line("alice", "another comment") + "\n"),
                         key("alice").public().blob())

    def test_garbage_is_no_key(self) -> None:
        for text in ("", "ssh-ed25519", "ssh-ed25519 !!!", "not a key at all", "ssh-rsa AAAA"):
            self.assertIsNone(key_blob(text), text)

    def test_owner_key_compares_blobs(self) -> None:
        owned = container(owner_keys=("alice", "alice-laptop"))
        self.assertTrue(is_owner_key(owned, key("alice-laptop").public().blob()))
        self.assertFalse(is_owner_key(owned, key("mallory").public().blob()))

    def test_same_type_different_key_is_refused(self) -> None:
        owned = container(owner_keys=("alice",))
        forged = key("mallory").public().blob()
        # Same algorithm and blob length: only the key material differs.
        self.assertEqual(len(forged), len(key("alice").public().blob()))
        self.assertFalse(is_owner_key(owned, forged))

    def test_unreadable_uploaded_key_is_skipped(self) -> None:
        owned = dataclasses.replace(container(), ssh_keys=("garbage", public_line("alice")))
        self.assertTrue(is_owner_key(owned, key("alice").public().blob()))

    def test_fingerprint_like_ssh_keygen(self) -> None:
        printed = fingerprint(key("alice").public().blob())
        self.assertTrue(printed.startswith("SHA256:"))
        self.assertFalse(printed.endswith("="))
        self.assertEqual(fingerprint(b"junk"), "(unreadable key)")


class AvailabilityTests(SynchronousTestCase):
    def test_running_with_ssh(self) -> None:
        self.assertIsNone(unavailable_reason(container()))

    def test_stopped(self) -> None:
        self.assertEqual(unavailable_reason(container(status="stopped")), "container abc123 is stopped")

    def test_odd_status_is_not_echoed(self) -> None:
        self.assertEqual(unavailable_reason(container(status="\x1b[2J!!")), "container abc123 is not running")

    def test_ssh_disabled(self) -> None:
        self.assertEqual(unavailable_reason(container(ssh_enabled=False)),
                         "SSH access is disabled for container abc123")

    def test_no_address_yet(self) -> None:
        self.assertIn("has no address yet", unavailable_reason(container(external_ip=None)) or "")


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.containers = directory(container("abc123", owner_keys=("alice",)),
                                    container("bob1", owner_keys=("bob",)),
                                    container("stop1", owner_keys=("alice",), status="stopped"),
                                    container("nossh1", owner_keys=("alice",), ssh_enabled=False))
        self.checker = ContainerKeyChecker(self.containers)

    def check(self, credentials: Any) -> Deferred[Any]:
        return self.checker.requestAvatarId(credentials)

    def offered(self, username: bytes, name: str) -> SSHPrivateKey:
        return SSHPrivateKey(username, b"ssh-ed25519", key(name).public().blob(), None, None)

    def test_owner_key_signed_is_accepted(self) -> None:
        login = self.successResultOf(self.check(signed_credentials(b"www.abc123", "alice")))
        self.assertEqual(login, GatewayLogin(SSHTarget("abc123", "www"), self.containers.get("abc123"),
                                             fingerprint(key("alice").public().blob())))

    def test_owner_key_offered_asks_for_signature(self) -> None:
        failure = self.failureResultOf(self.check(self.offered(b"abc123", "alice")), KeyOffered)
        self.assertIsNone(failure.value.refusal)
        self.assertIsInstance(failure.value, ValidPublicKey)

    def test_any_key_offered_asks_for_signature(self) -> None:
        # The same answer to a query whatever the container: the refusal
        # comes after the signature, and only the log says why.
        cases = {
            b"abc123": "the key is not one of the container owner's keys",
            b"stop1": "the key is not one of the container owner's keys (container stop1 is stopped)",
            b"nossh1": ("the key is not one of the container owner's keys "
                        "(SSH access is disabled for container nossh1)"),
            b"nope": "container nope not found",
        }
        for username, refusal in cases.items():
            failure = self.failureResultOf(self.check(self.offered(username, "mallory")), KeyOffered)
            self.assertEqual(failure.value.refusal, refusal)

    def test_another_users_key_is_refused_even_signed(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"abc123", "bob")), UnauthorizedLogin)
        self.assertIn("not one of the container owner's keys", failure.getErrorMessage())

    def test_bad_signature_is_refused(self) -> None:
        forged = signed_credentials(b"abc123", "alice", signer="mallory")
        failure = self.failureResultOf(self.check(forged), UnauthorizedLogin)
        self.assertIn("signature", failure.getErrorMessage())

    def test_garbage_signature_is_refused(self) -> None:
        good = signed_credentials(b"abc123", "alice")
        garbage = SSHPrivateKey(good.username, good.algName, good.blob, good.sigData, NS(b"ssh-ed25519") + b"\x00")
        self.failureResultOf(self.check(garbage), UnauthorizedLogin)

    def test_stopped_container_told_to_the_owner(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"stop1", "alice")), LoginRefused)
        self.assertEqual(str(failure.value), "container stop1 is stopped")

    def test_stopped_container_not_told_to_others(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"stop1", "bob")), UnauthorizedLogin)
        self.assertNotIsInstance(failure.value, LoginRefused)
        self.assertIn("container stop1 is stopped", failure.getErrorMessage(), "the log says why")

    def test_stopped_container_not_told_for_a_bad_signature(self) -> None:
        forged = signed_credentials(b"stop1", "alice", signer="mallory")
        failure = self.failureResultOf(self.check(forged), UnauthorizedLogin)
        self.assertNotIsInstance(failure.value, LoginRefused)

    def test_ssh_disabled(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"nossh1", "alice")), LoginRefused)
        self.assertIn("disabled", str(failure.value))

    def test_unknown_container_is_permission_denied(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"nope", "alice")), UnauthorizedLogin)
        self.assertNotIsInstance(failure.value, LoginRefused)
        self.assertEqual(failure.getErrorMessage(), "container nope not found")

    def test_invalid_username(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"bad!", "alice")), LoginRefused)
        self.assertIn("invalid SSH user name", str(failure.value))

    def test_directory_not_loaded_yet(self) -> None:
        self.containers.swap(ContainerSnapshot(self.containers.current.containers, ready=False))
        failure = self.failureResultOf(self.check(signed_credentials(b"abc123", "alice")), LoginRefused)
        self.assertIn("still loading", str(failure.value))

    def test_key_removed_takes_effect_at_once(self) -> None:
        self.containers.replace("abc123", container("abc123", owner_keys=("alice-new",)))
        self.failureResultOf(self.check(signed_credentials(b"abc123", "alice")), UnauthorizedLogin)
        self.successResultOf(self.check(signed_credentials(b"abc123", "alice-new")))


class KeyTypeTests(SynchronousTestCase):
    """Every key type the compute service accepts, with the default configuration."""

    def setUp(self) -> None:
        lines = tuple(line_of(typed_key(kind)) for kind in (*USER_KEYS, "dsa"))
        self.containers = directory(dataclasses.replace(container("abc123"), ssh_keys=lines))
        self.checker = ContainerKeyChecker(self.containers)

    def check(self, credentials: Any, checker: ContainerKeyChecker | None = None) -> Deferred[Any]:
        return (checker or self.checker).requestAvatarId(credentials)

    def test_each_key_type_and_algorithm_verifies(self) -> None:
        for kind, algorithms in USER_KEYS.items():
            for algorithm in algorithms:
                login = self.successResultOf(self.check(signed_with(b"abc123", typed_key(kind),
                                                                    algorithm=algorithm)))
                self.assertEqual(login.fingerprint, fingerprint(typed_key(kind).public().blob()), kind)

    def test_each_key_type_offered_asks_for_signature(self) -> None:
        for kind, algorithms in USER_KEYS.items():
            for algorithm in algorithms:
                offered = SSHPrivateKey(b"abc123", algorithm, typed_key(kind).public().blob(), None, None)
                self.assertIsNone(self.failureResultOf(self.check(offered), KeyOffered).value.refusal)

    def test_sha1_rsa_signature_is_refused_by_default(self) -> None:
        credentials = signed_with(b"abc123", typed_key("rsa"), algorithm=b"ssh-rsa")
        failure = self.failureResultOf(self.check(credentials), UnauthorizedLogin)
        self.assertIn("SHA-1 ssh-rsa", failure.getErrorMessage())
        self.assertIn("--ssh-allow-sha1-rsa", failure.getErrorMessage())
        offered = SSHPrivateKey(b"abc123", b"ssh-rsa", typed_key("rsa").public().blob(), None, None)
        query = self.failureResultOf(self.check(offered), UnauthorizedLogin)
        self.assertNotIsInstance(query.value, KeyOffered)  # the client is not asked to sign with SHA-1

    def test_sha1_rsa_signature_when_allowed(self) -> None:
        allowing = ContainerKeyChecker(self.containers, signatures=SignaturePolicy(allow_sha1_rsa=True))
        self.successResultOf(self.check(signed_with(b"abc123", typed_key("rsa"), algorithm=b"ssh-rsa"), allowing))

    def test_sha1_signature_under_a_sha2_name_is_refused(self) -> None:
        # Conch's Key.verify hashes as the signature's own name says; the
        # request's name must match it.
        sneaky = signed_with(b"abc123", typed_key("rsa"), algorithm=b"rsa-sha2-256", signature_type=b"ssh-rsa")
        failure = self.failureResultOf(self.check(sneaky), UnauthorizedLogin)
        self.assertEqual(failure.getErrorMessage(), "the signature is ssh-rsa but the request names rsa-sha2-256")

    def test_sha512_signature_under_the_sha256_name_is_refused(self) -> None:
        mixed = signed_with(b"abc123", typed_key("rsa"), algorithm=b"rsa-sha2-256", signature_type=b"rsa-sha2-512")
        self.failureResultOf(self.check(mixed), UnauthorizedLogin)

    def test_algorithm_of_another_key_type_is_refused(self) -> None:
        offered = SSHPrivateKey(b"abc123", b"ecdsa-sha2-nistp256", typed_key("ed25519").public().blob(), None, None)
        failure = self.failureResultOf(self.check(offered), UnauthorizedLogin)
        self.assertIn("not the signature algorithm of ssh-ed25519 keys", failure.getErrorMessage())
        offered = SSHPrivateKey(b"abc123", b"ssh-ed25519", typed_key("rsa").public().blob(), None, None)
        self.failureResultOf(self.check(offered), UnauthorizedLogin)

    def test_dsa_is_refused(self) -> None:
        failure = self.failureResultOf(self.check(signed_with(b"abc123", typed_key("dsa"))), UnauthorizedLogin)
        self.assertEqual(failure.getErrorMessage(), "ssh-dss keys are not accepted")

    def test_refusal_for_a_key_type_is_the_same_for_every_container(self) -> None:
        answers = set()
        for username in (b"abc123", b"nope"):
            offered = SSHPrivateKey(username, b"ssh-dss", typed_key("dsa").public().blob(), None, None)
            answers.add(self.failureResultOf(self.check(offered), UnauthorizedLogin).getErrorMessage())
        self.assertEqual(answers, {"ssh-dss keys are not accepted"})


class FakeRealm:
    """Records the logins it is asked for; answers with C{answer} (a Deferred or an exception)."""

    def __init__(self) -> None:
        self.logins: list[GatewayLogin] = []
        self.answer: Any = None
        self.cancelled = False

    def requestAvatar(self, login: GatewayLogin, mind: object, *interfaces: Any) -> Any:
        self.logins.append(login)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is None:
            return succeed((IConchUser, object(), lambda: None))
        return self.answer


class StartedService:
    name = SERVICE

    def serviceStarted(self) -> None:
        pass


class UserAuthServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.containers = directory(container("abc123", owner_keys=("alice",)),
                                    container("stop1", owner_keys=("alice",), status="stopped"),
                                    dataclasses.replace(container("rsa1"), ssh_keys=(line_of(typed_key("rsa")),)))
        self.realm = FakeRealm()
        self.connect()

    def connect(self) -> None:
        """A new connection: C{self.ssh} and its userauth service C{self.server}."""
        factory = FakeFactory(self.containers, Portal(self.realm, [ContainerKeyChecker(self.containers)]))
        factory.services[SERVICE] = StartedService
        self.ssh = RecordingSSH(factory)
        self.ssh.setService = lambda service: setattr(self, "started", service)  # type: ignore[attr-defined]
        self.server = attach(GatewayUserAuthServer(), self.ssh)
        self.addCleanup(self.server.serviceStopped)

    def request(self, user: bytes, method: bytes, rest: bytes = b"") -> None:
        self.server.ssh_USERAUTH_REQUEST(NS(user) + NS(SERVICE) + NS(method) + rest)

    def offer(self, user: bytes, name: str, algorithm: bytes | None = None, private: Key | None = None) -> None:
        public = (private or key(name)).public()
        self.request(user, b"publickey", b"\x00" + NS(algorithm or public.sshType()) + NS(public.blob()))

    def sign(self, user: bytes, name: str, algorithm: bytes | None = None, private: Key | None = None) -> None:
        private = private or key(name)
        public = private.public()
        algorithm = algorithm or public.sshType()
        data = _signed_data(self.ssh.sessionID, user, algorithm, public.blob())
        self.request(user, b"publickey", b"\x01" + NS(algorithm) + NS(public.blob())
                     + NS(private.sign(data, signatureType=algorithm)))

    def test_unknown_container_is_permission_denied(self) -> None:
        with capturedLogs() as events:
            self.request(b"nope", b"none")
            self.offer(b"nope", "alice")
            self.sign(b"nope", "alice")
        self.assertIsNone(self.ssh.disconnected)
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_PK_OK,
                                                  userauth.MSG_USERAUTH_FAILURE])
        refused = [e for e in events if e.get("outcome") == "refused"]
        self.assertEqual([(e["client"], e["why"], e["offered"]) for e in refused],
                         [("203.0.113.7:50123", ": container nope not found", " (offered)"),
                          ("203.0.113.7:50123", ": container nope not found", "")])

    def refusal_seen_by_the_client(self, user: bytes) -> list[tuple[int, bytes]]:
        """What a client offering, then signing with, mallory's key to C{user} receives on a new connection."""
        self.connect()
        self.request(user, b"none")
        self.offer(user, "mallory")
        self.sign(user, "mallory")
        self.assertIsNone(self.ssh.disconnected)
        return self.ssh.take()

    def test_unknown_stopped_and_another_key_look_the_same(self) -> None:
        with capturedLogs() as events:
            seen = {user: self.refusal_seen_by_the_client(user) for user in (b"nope", b"stop1", b"abc123")}
        self.assertEqual(seen[b"nope"], seen[b"stop1"])
        self.assertEqual(seen[b"nope"], seen[b"abc123"])
        self.assertEqual(kinds(seen[b"nope"]), [userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_PK_OK,
                                                userauth.MSG_USERAUTH_FAILURE])
        why = {(e["container"], e["why"]) for e in events if e.get("outcome") == "refused"}
        self.assertEqual(why, {
            ("nope", ": container nope not found"),
            ("stop1", ": the key is not one of the container owner's keys (container stop1 is stopped)"),
            ("abc123", ": the key is not one of the container owner's keys"),
        })
        self.assertEqual(self.realm.logins, [])

    def test_the_owner_is_told_the_container_is_stopped_after_signing(self) -> None:
        self.offer(b"stop1", "alice")
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_PK_OK])
        self.assertIsNone(self.ssh.disconnected)
        self.sign(b"stop1", "alice")
        self.assertEqual(self.ssh.disconnected, (ssh_transport.DISCONNECT_SERVICE_NOT_AVAILABLE,
                                                 b"container stop1 is stopped"))

    def test_every_refusal_is_a_strike(self) -> None:
        # The transport's outcome "refused" is what strikes when the
        # connection ends (GatewayServerTransport.connectionLost).
        for user, name in ((b"nope", "alice"), (b"stop1", "mallory"), (b"abc123", "mallory"),
                           (b"stop1", "alice")):
            self.connect()
            self.offer(user, name)
            self.assertEqual(getattr(self.ssh, "outcome", None), "refused", (user, name))

    def test_a_refused_key_is_one_attempt_in_the_metrics(self) -> None:
        counted: list[str] = []
        self.ssh.factory.observer = type("Observer", (), {"ssh_login": lambda _, outcome: counted.append(outcome)})()
        self.offer(b"abc123", "mallory")
        self.sign(b"abc123", "mallory")
        self.assertEqual(counted, ["refused"])

    def test_an_owner_query_left_unsigned_is_a_strike_too(self) -> None:
        # Otherwise ban strikes would tell an owner's key from another's.
        self.offer(b"abc123", "alice")
        self.assertEqual(getattr(self.ssh, "outcome", None), "refused")

    def test_rsa_sha2_signatures_log_in(self) -> None:
        for algorithm in (b"rsa-sha2-256", b"rsa-sha2-512"):
            self.connect()
            with capturedLogs() as events:
                self.offer(b"rsa1", "", algorithm, typed_key("rsa"))
                self.sign(b"rsa1", "", algorithm, typed_key("rsa"))
            self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_PK_OK, userauth.MSG_USERAUTH_SUCCESS])
            [accepted] = [e for e in events if e.get("outcome") == "accepted"]
            self.assertEqual(accepted["algorithm"], algorithm.decode() + " ")

    def test_sha1_rsa_signature_is_refused_and_logged(self) -> None:
        with capturedLogs() as events:
            self.sign(b"rsa1", "", b"ssh-rsa", typed_key("rsa"))
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE])
        self.assertEqual(self.realm.logins, [])
        [event] = [e for e in events if e.get("outcome") == "refused"]
        self.assertEqual((event["client"], event["algorithm"]), ("203.0.113.7:50123", "ssh-rsa "))
        self.assertIn("SHA-1 ssh-rsa signature algorithm is refused", event["why"])

    def test_sha1_rsa_query_is_refused(self) -> None:
        self.offer(b"rsa1", "", b"ssh-rsa", typed_key("rsa"))
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE])

    def test_the_name_is_parsed_once_per_request(self) -> None:
        parsed: list[bytes] = []
        parse = username.parse_ssh_username
        self.patch(username, "parse_ssh_username", lambda name: (parsed.append(name), parse(name))[1])
        with capturedLogs() as events:
            self.offer(b"alice.abc123", "alice")
            self.sign(b"alice.abc123", "alice")
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_PK_OK, userauth.MSG_USERAUTH_SUCCESS])
        self.assertEqual(parsed, [b"alice.abc123", b"alice.abc123"])
        self.assertEqual(self.realm.logins[0].target, SSHTarget("abc123", "alice"))
        self.assertEqual([e["container"] for e in events if e.get("outcome") == "accepted"], ["abc123"])

    def test_invalid_name_is_told_at_once(self) -> None:
        self.request(b"a b", b"none")
        assert self.ssh.disconnected is not None
        self.assertIn(b"invalid SSH user name", self.ssh.disconnected[1])

    def test_none_method_lists_publickey_only(self) -> None:
        self.request(b"abc123", b"none")
        [(kind, payload)] = self.ssh.take()
        self.assertEqual(kind, userauth.MSG_USERAUTH_FAILURE)
        self.assertEqual(getNS(payload)[0], b"publickey")

    def test_password_is_not_offered(self) -> None:
        self.request(b"abc123", b"password", b"\x00" + NS(b"hunter2"))
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE])
        self.assertIsNone(self.ssh.disconnected)

    def test_owner_key_offer_gets_pk_ok(self) -> None:
        self.offer(b"abc123", "alice")
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_PK_OK])

    def test_other_key_offer_is_logged_as_refused(self) -> None:
        with capturedLogs() as events:
            self.offer(b"abc123", "mallory")
        public = key("mallory").public()
        self.assertEqual(self.ssh.take(), [(userauth.MSG_USERAUTH_PK_OK, NS(b"ssh-ed25519") + NS(public.blob()))])
        [event] = [e for e in events if e.get("outcome") == "refused"]
        self.assertEqual(event["container"], "abc123")
        self.assertEqual(event["fingerprint"], fingerprint(key("mallory").public().blob()))
        self.assertEqual(event["offered"], " (offered)")

    def test_malformed_key_blob_is_refused(self) -> None:
        with capturedLogs() as events:
            self.request(b"abc123", b"publickey", b"\x01" + NS(b"ssh-ed25519") + NS(b"\x00\x00") + NS(b"sig"))
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE])
        self.assertTrue(any(e.get("fingerprint") == "(unreadable key)" for e in events))

    def test_malformed_request_disconnects(self) -> None:
        self.server.ssh_USERAUTH_REQUEST(b"\x00\x00\x00\x09abc")
        self.assertEqual(self.ssh.disconnected[0], ssh_transport.DISCONNECT_PROTOCOL_ERROR)

    def test_signed_owner_key_logs_in_after_the_realm(self) -> None:
        answer: Deferred[Any] = Deferred()
        self.realm.answer = answer
        with capturedLogs() as events:
            self.sign(b"alice.abc123", "alice")
            self.assertEqual(self.ssh.take(), [])
            answer.callback((IConchUser, object(), lambda: None))
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_SUCCESS])
        self.assertEqual(self.realm.logins[0].target, SSHTarget("abc123", "alice"))
        self.assertIsInstance(self.started, StartedService)
        [event] = [e for e in events if e.get("outcome") == "accepted"]
        self.assertEqual((event["client"], event["username"], event["container"]),
                         ("203.0.113.7:50123", "'alice.abc123'", "abc123"))

    def test_stopped_container_message(self) -> None:
        self.sign(b"stop1", "alice")
        self.assertEqual(self.ssh.disconnected, (ssh_transport.DISCONNECT_SERVICE_NOT_AVAILABLE,
                                                 b"container stop1 is stopped"))
        self.assertEqual(self.realm.logins, [])

    def test_upstream_refusal_message(self) -> None:
        self.realm.answer = LoginRefused("container abc123 is not accepting SSH connections (connection refused)")
        self.sign(b"abc123", "alice")
        assert self.ssh.disconnected is not None
        self.assertIn(b"not accepting SSH connections", self.ssh.disconnected[1])
        self.assertNotIn(userauth.MSG_USERAUTH_FAILURE, kinds(self.ssh.packets))

    def test_client_leaving_cancels_the_upstream_login(self) -> None:
        cancelled: list[bool] = []
        self.realm.answer = Deferred(lambda _: cancelled.append(True))
        with capturedLogs() as events:
            self.sign(b"abc123", "alice")
            self.server.serviceStopped()
        self.assertEqual(cancelled, [True])
        self.assertTrue(any(e.get("outcome") == "abandoned" for e in events))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpected_error_disconnects(self) -> None:
        self.realm.answer = RuntimeError("boom")
        self.sign(b"abc123", "alice")
        assert self.ssh.disconnected is not None
        self.assertIn(b"internal error", self.ssh.disconnected[1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_login_grace_from_settings(self) -> None:
        self.assertEqual(self.server.loginTimeout, self.ssh.factory.settings.login_grace_time)
        self.ssh.factory.clock.advance(self.server.loginTimeout)
        self.assertEqual(self.ssh.disconnected[0], ssh_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
