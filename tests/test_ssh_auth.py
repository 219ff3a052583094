"""
Who may log in: the checker accepts a key only when it is one of the
container owner's (compared as blobs) and the container runs with SSH on;
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
    LoginRefused,
    fingerprint,
    is_owner_key,
    key_blob,
    unavailable_reason,
)
from edd_gateway.ssh.username import SSHTarget
from edd_gateway.state.model import ContainerSnapshot

from ._ssh_fakes import FakeFactory, RecordingSSH, attach, container, directory, key, kinds, public_line

SERVICE = b"ssh-connection"


def signed_credentials(username: bytes, name: str, session: bytes = b"session-id",
                       signer: str | None = None) -> SSHPrivateKey:
    blob = key(name).public().blob()
    algorithm = key(name).sshType()
    data = _signed_data(session, username, algorithm, blob)
    return SSHPrivateKey(username, algorithm, blob, data, key(signer or name).sign(data))


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

    def test_owner_key_signed_is_accepted(self) -> None:
        login = self.successResultOf(self.check(signed_credentials(b"www.abc123", "alice")))
        self.assertEqual(login, GatewayLogin(SSHTarget("abc123", "www"), self.containers.get("abc123"),
                                             fingerprint(key("alice").public().blob())))

    def test_owner_key_offered_asks_for_signature(self) -> None:
        offered = SSHPrivateKey(b"abc123", b"ssh-ed25519", key("alice").public().blob(), None, None)
        self.failureResultOf(self.check(offered), ValidPublicKey)

    def test_another_users_key_is_refused_even_signed(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"abc123", "bob")), UnauthorizedLogin)
        self.assertIn("not one of the container owner's keys", failure.getErrorMessage())

    def test_bad_signature_is_refused(self) -> None:
        forged = signed_credentials(b"abc123", "alice", signer="mallory")
        failure = self.failureResultOf(self.check(forged), UnauthorizedLogin)
        self.assertIn("signature", failure.getErrorMessage())

    def test_stopped_container_told_to_the_owner(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"stop1", "alice")), LoginRefused)
        self.assertEqual(str(failure.value), "container stop1 is stopped")

    def test_stopped_container_not_told_to_others(self) -> None:
        self.failureResultOf(self.check(signed_credentials(b"stop1", "bob")), UnauthorizedLogin)

    def test_ssh_disabled(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"nossh1", "alice")), LoginRefused)
        self.assertIn("disabled", str(failure.value))

    def test_unknown_container(self) -> None:
        failure = self.failureResultOf(self.check(signed_credentials(b"nope", "alice")), LoginRefused)
        self.assertEqual(str(failure.value), "container nope not found")
        self.assertEqual(failure.value.code, ssh_transport.DISCONNECT_ILLEGAL_USER_NAME)

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
                                    container("stop1", owner_keys=("alice",), status="stopped"))
        self.realm = FakeRealm()
        factory = FakeFactory(self.containers, Portal(self.realm, [ContainerKeyChecker(self.containers)]))
        factory.services[SERVICE] = StartedService
        self.ssh = RecordingSSH(factory)
        self.ssh.setService = lambda service: setattr(self, "started", service)  # type: ignore[attr-defined]
        self.server = attach(GatewayUserAuthServer(), self.ssh)
        self.addCleanup(self.server.serviceStopped)

    def request(self, user: bytes, method: bytes, rest: bytes = b"") -> None:
        self.server.ssh_USERAUTH_REQUEST(NS(user) + NS(SERVICE) + NS(method) + rest)

    def offer(self, user: bytes, name: str) -> None:
        public = key(name).public()
        self.request(user, b"publickey", b"\x00" + NS(public.sshType()) + NS(public.blob()))

    def sign(self, user: bytes, name: str) -> None:
        public = key(name).public()
        data = _signed_data(self.ssh.sessionID, user, public.sshType(), public.blob())
        self.request(user, b"publickey",
                     b"\x01" + NS(public.sshType()) + NS(public.blob()) + NS(key(name).sign(data)))

    def test_unknown_container_is_told_at_once(self) -> None:
        with capturedLogs() as events:
            self.request(b"nope", b"none")
        self.assertEqual(self.ssh.disconnected, (ssh_transport.DISCONNECT_ILLEGAL_USER_NAME,
                                                 b"container nope not found"))
        self.assertTrue(any("refused" in str(e.get("outcome")) and e.get("client") == "203.0.113.7:50123"
                            for e in events))

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

    def test_other_key_offer_fails_and_is_logged(self) -> None:
        with capturedLogs() as events:
            self.offer(b"abc123", "mallory")
        self.assertEqual(kinds(self.ssh.take()), [userauth.MSG_USERAUTH_FAILURE])
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
