"""
Who may log in to which container: public keys only, and a key only when it
is one of the keys the container's owner uploaded (compared as key blobs,
never by fingerprint), signed with an algorithm the gateway verifies
(L{edd_gateway.ssh.signatures}), and only while the container runs with SSH
enabled.

L{ContainerKeyChecker} is the cred checker: it reads the container directory
(no I/O) and answers with a L{GatewayLogin} avatar id.  Until a key of the
container's owner has verified, every refusal looks the same to the client:
a query ("would this key do?") is answered yes for any key of a type the
gateway verifies, whatever the container, and a signed request that is
refused gets "Permission denied" whether the container does not exist, is
not running or belongs to someone else; only the gateway's log says which.
So the user name cannot be used to find out which containers exist, even by
someone holding an owner's public key.

L{GatewayUserAuthServer} is Conch's ssh-userauth service with three
additions: a bad user name (or a gateway still loading its containers) is
refused at the first request, whatever the method; a L{LoginRefused} once
the owner's key verified (a stopped container, an unreachable one)
disconnects with its message, which OpenSSH prints (C{Received disconnect
...: container abc123 is stopped}) instead of a bare "Permission denied";
and every login attempt is logged with the client's address, the user name,
the container, the key's fingerprint and the outcome.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass
from typing import Any, cast

from twisted.conch.error import IgnoreAuthentication, ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key
from twisted.conch.ssh.userauth import MSG_USERAUTH_PK_OK, SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edd_gateway.routes.containers import ContainerAddressing
from edd_gateway.net.addresses import describe_peer
from edd_gateway.ssh._logging import conch_logger
from edd_gateway.ssh.signatures import SignaturePolicy
from edd_gateway.ssh.username import InvalidUsername, RequestedName, SSHTarget, parse_requested, shown, target_of
from edd_gateway.state.model import Container, ContainerDirectory

_log = Logger()
# What Conch's key parser raises on malformed input, besides BadKeyError.
_KEY_PARSE_ERRORS = (BadKeyError, ValueError, UnicodeError, IndexError, TypeError, struct.error)
UNREADABLE_KEY = "(unreadable key)"
_STATUS_WORD = re.compile(r"[a-z][a-z -]{0,30}")


class LoginRefused(Exception):
    """
    A login that ends the connection with a message for the user (the SSH
    disconnect reason), rather than a silent "try another key".
    """

    def __init__(self, message: str, code: int = ssh_transport.DISCONNECT_SERVICE_NOT_AVAILABLE) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class GatewayLogin:
    """The avatar id of an accepted key: where it goes and which key it was."""

    target: SSHTarget
    container: Container
    fingerprint: str


@functools.lru_cache(maxsize=4096)
def key_blob(text: str) -> bytes | None:
    """The wire form (blob) of an OpenSSH public key line, or None when it is not one."""
    try:
        return Key.fromString(text.strip().encode("utf-8")).public().blob()
    except _KEY_PARSE_ERRORS:
        return None


def fingerprint(blob: bytes) -> str:
    """C{SHA256:...}, as C{ssh-keygen -l} and sshd's logs write it."""
    try:
        text = Key.fromString(blob).fingerprint(FingerprintFormats.SHA256_BASE64)
    except _KEY_PARSE_ERRORS:
        return UNREADABLE_KEY
    return "SHA256:" + text.rstrip("=")


def is_owner_key(container: Container, blob: bytes) -> bool:
    """Whether C{blob} is one of the keys the container's owner uploaded."""
    return any(key_blob(text) == blob for text in container.ssh_keys)


def unavailable_reason(container: Container, addressing: ContainerAddressing = ContainerAddressing()) -> str | None:
    """Why a login to C{container} cannot proceed now (for the user), or None."""
    if not container.running:
        status = container.status.strip().lower()
        state = status if _STATUS_WORD.fullmatch(status) else "not running"
        return f"container {container.id} is {state}"
    if not container.ssh_enabled:
        return f"SSH access is disabled for container {container.id}"
    if addressing.host(container) is None:
        return f"container {container.id} has no address yet; try again in a moment"
    return None


def loading_refusal(directory: ContainerDirectory) -> LoginRefused | None:
    """The refusal for every login while the directory is not loaded yet, or None."""
    if not directory.current.ready:
        return LoginRefused("the gateway is still loading the containers; try again in a moment")
    return None


class KeyOffered(ValidPublicKey):
    """
    The answer to a query (a key offered without a signature): sign with it.
    Given for every key the gateway can verify, so that the answer says
    nothing about the container.

    @ivar refusal: why a signature with this key will be refused (for the
        log), or None when it is one of the container owner's keys.
    """

    def __init__(self, refusal: str | None) -> None:
        super().__init__(refusal)
        self.refusal = refusal


@implementer(ICredentialsChecker)
class ContainerKeyChecker:
    """
    Accepts a signed public key for C{<user>.<container-id>} when it is one of
    the container owner's keys and the container can be reached.

    In order: the key and the signature algorithm (the same answer for every
    container), then for a query L{KeyOffered}, else the signature, then
    whether the container exists and the key is its owner's (refused as
    L{UnauthorizedLogin}, "Permission denied"), and only then the
    container's state (L{LoginRefused}, with its message).
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, directory: ContainerDirectory, addressing: ContainerAddressing = ContainerAddressing(),
                 signatures: SignaturePolicy = SignaturePolicy()) -> None:
        self.directory = directory
        self.addressing = addressing
        self.signatures = signatures

    def requestAvatarId(self, credentials: Any) -> Deferred[GatewayLogin]:  # type: ignore[override]  # our avatar id
        return maybeDeferred(self._check, credentials)

    def _check(self, credentials: Any) -> GatewayLogin:
        try:
            target = target_of(credentials.username)  # parsed already when the userauth service asks
        except InvalidUsername as problem:
            raise LoginRefused(str(problem), ssh_transport.DISCONNECT_ILLEGAL_USER_NAME) from None
        refusal = loading_refusal(self.directory)
        if refusal is not None:
            raise refusal
        try:
            key = Key.fromString(credentials.blob)
        except _KEY_PARSE_ERRORS:
            raise UnauthorizedLogin("the key could not be read") from None
        unverifiable = self.signatures.refusal(key, credentials.algName, credentials.signature)
        if unverifiable is not None:
            raise UnauthorizedLogin(unverifiable)
        if credentials.signature is None:
            raise KeyOffered(self._denial(target, credentials.blob))
        if not self._verifies(key, credentials.signature, credentials.sigData):
            raise UnauthorizedLogin("the signature does not verify")
        denial = self._denial(target, credentials.blob)
        if denial is not None:
            raise UnauthorizedLogin(denial)
        container = self.directory.get(target.container_id)
        assert container is not None
        reason = unavailable_reason(container, self.addressing)
        if reason is not None:
            raise LoginRefused(reason)
        return GatewayLogin(target, container, fingerprint(credentials.blob))

    def _denial(self, target: SSHTarget, blob: bytes) -> str | None:
        """Why C{blob} may not log in to the target's container, whatever its state (for the log), or None."""
        container = self.directory.get(target.container_id)
        if container is None:
            return f"container {target.container_id} not found"
        if not is_owner_key(container, blob):
            state = unavailable_reason(container, self.addressing)
            return "the key is not one of the container owner's keys" + (f" ({state})" if state else "")
        return None

    @staticmethod
    def _verifies(key: Key, signature: bytes, data: bytes) -> bool:
        try:
            return bool(key.verify(signature, data))
        except _KEY_PARSE_ERRORS:
            return False


@dataclass(frozen=True, slots=True)
class _Attempt:
    client: str
    username: str
    #: The container the name asks for, "-" for a name that names none.
    container: str
    fingerprint: str
    signed: bool
    #: The signature algorithm the request names (shown, "" when none).
    algorithm: str = ""


class GatewayUserAuthServer(SSHUserAuthServer):
    """
    ssh-userauth for the gateway: publickey only, refusals with a message,
    one log line per login attempt.  Its transport's factory provides
    C{clock}, C{directory} and C{settings.login_grace_time}.  Each request's
    user name is parsed once, as the request comes in; the parsed name
    (L{RequestedName}) is what Conch's C{self.user}, the checker's
    credentials and the log line get.
    """

    _log = conch_logger()
    # Failed key offers and signatures before "too many": OpenSSH's
    # MaxAuthTries is 6, but agents holding many keys offer them all.
    attemptsBeforeDisconnect = 10
    _pending: Deferred[Any] | None = None
    #: The current request's user name, parsed as the request came in.
    _requested: RequestedName

    def serviceStarted(self) -> None:
        factory = self.transport.factory  # type: ignore[union-attr]  # Conch's
        self.clock = factory.clock
        self.loginTimeout = factory.settings.login_grace_time
        super().serviceStarted()

    def serviceStopped(self) -> None:
        super().serviceStopped()
        pending, self._pending = self._pending, None
        if pending is not None:
            # The client left while its upstream was being set up.
            pending.cancel()

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Deferred[Any] | None:
        try:
            username = getNS(packet, 3)[0]
        except (IndexError, ValueError, struct.error):
            self.transport.sendDisconnect(  # type: ignore[union-attr]  # Conch's
                ssh_transport.DISCONNECT_PROTOCOL_ERROR, b"malformed authentication request")
            return None
        try:
            self._requested = parse_requested(username)
        except InvalidUsername as problem:
            self._refuse(LoginRefused(str(problem), ssh_transport.DISCONNECT_ILLEGAL_USER_NAME),
                         self._attempt(username, None, None, False))
            return None
        # Whether the container exists is not told here: see KeyOffered.
        refusal = loading_refusal(self.transport.factory.directory)  # type: ignore[union-attr]  # Conch's
        if refusal is not None:
            self._refuse(refusal, self._attempt(username, self._requested.target, None, False))
            return None
        return super().ssh_USERAUTH_REQUEST(packet)

    def auth_publickey(self, packet: bytes) -> Deferred[Any]:
        # Conch has just set self.user to the request's name: the same name,
        # parsed, goes into the credentials (Conch's or _query's) instead.
        self.user = requested = self._requested
        signed = packet[:1] != b"\x00"
        try:
            algorithm, blob = getNS(packet[1:], 2)[:2]
        except (IndexError, ValueError, TypeError, struct.error):
            algorithm, blob = b"", b""
        attempt = self._attempt(requested, requested.target, blob, signed, algorithm)
        if attempt.fingerprint == UNREADABLE_KEY:
            # Conch's own parsing lets malformed blobs raise out of the
            # packet handler; refuse them here instead.
            outcome: Deferred[Any] = fail(UnauthorizedLogin("the key could not be read"))
        elif signed:
            # Conch builds the signed data (session id, security-key wrapping).
            outcome = self._pending = super().auth_publickey(packet)
        else:
            outcome = self._query(algorithm, blob, attempt)
        return outcome.addCallbacks(self._accepted, self._notAccepted, callbackArgs=(attempt,),
                                    errbackArgs=(attempt,))

    def _query(self, algorithm: bytes, blob: bytes, attempt: _Attempt) -> Deferred[Any]:
        """
        A key offered without a signature (RFC 4252, section 7).  Conch's
        SSHUserAuthServer answers it with the checker's verdict; here the
        answer is "sign with it" (USERAUTH_PK_OK) for any key the gateway
        can verify, whatever the container (L{KeyOffered}), and the refusal
        the signature will get is logged now.
        """
        credentials = SSHPrivateKey(self.user, algorithm, blob, None, None)
        return self.portal.login(credentials, None, IConchUser).addErrback(
            self._answerQuery, algorithm, blob, attempt)

    def _answerQuery(self, reason: Failure, algorithm: bytes, blob: bytes, attempt: _Attempt) -> Failure:
        reason.trap(KeyOffered)
        offered = cast(KeyOffered, reason.value)  # trap let only a KeyOffered through
        if offered.refusal is not None:
            # Counted (metrics) when the signature is refused, as one attempt.
            self._logAttempt(attempt, "refused", offered.refusal, count=False)
        else:
            # So that a ban strike does not tell an owner's key from another:
            # a connection that asked and never logged in counts as refused.
            self._markRefused()
        self.transport.sendPacket(MSG_USERAUTH_PK_OK, NS(algorithm) + NS(blob))  # type: ignore[union-attr]  # Conch's
        return Failure(IgnoreAuthentication())

    def _accepted(self, result: Any, attempt: _Attempt) -> Any:
        self._pending = None
        self._logAttempt(attempt, "accepted")
        return result

    def _notAccepted(self, reason: Failure, attempt: _Attempt) -> Failure:
        self._pending = None
        if reason.check(IgnoreAuthentication):
            # A query, answered (and logged) by _answerQuery.
            return reason
        if reason.check(LoginRefused):
            self._refuse(cast(LoginRefused, reason.value), attempt)
        elif reason.check(UnauthorizedLogin):
            self._logAttempt(attempt, "refused", reason.getErrorMessage())
            return reason
        elif reason.check(CancelledError):
            self._logAttempt(attempt, "abandoned", "the client left during the login")
        else:
            _log.failure("ssh: login of {username} from {client} failed unexpectedly", reason,
                         username=shown(attempt.username), client=attempt.client)
            self.transport.sendDisconnect(  # type: ignore[union-attr]  # Conch's
                ssh_transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"internal error in the gateway; try again")
        return Failure(IgnoreAuthentication())

    def _refuse(self, refusal: LoginRefused, attempt: _Attempt) -> None:
        self._logAttempt(attempt, "refused", refusal.message)
        self.transport.sendDisconnect(refusal.code, refusal.message.encode("utf-8", "replace"))  # type: ignore[union-attr]  # Conch's

    def _markRefused(self) -> None:
        """The connection's outcome is "refused" (a ban strike) unless a login succeeds after all."""
        if self.transport is not None:
            self.transport.outcome = "refused"  # type: ignore[attr-defined]  # GatewayServerTransport's

    def _attempt(self, username: bytes, target: SSHTarget | None, blob: bytes | None, signed: bool,
                 algorithm: bytes = b"") -> _Attempt:
        peer = self.transport.transport.getPeer()  # type: ignore[union-attr]  # Conch's
        return _Attempt(
            client=describe_peer(peer),
            username=username.decode("ascii", "backslashreplace"),
            container="-" if target is None else target.container_id,
            fingerprint="-" if blob is None else fingerprint(blob),
            signed=signed,
            # Escaped (a client's bytes), without quotes: names are plain ASCII.
            algorithm=repr(algorithm[:64].decode("ascii", "backslashreplace"))[1:-1],
        )

    def _logAttempt(self, attempt: _Attempt, outcome: str, why: str = "", count: bool = True) -> None:
        transport = self.transport
        if outcome == "refused":
            self._markRefused()
        observer = getattr(getattr(transport, "factory", None), "observer", None)
        if observer is not None and count:
            observer.ssh_login(outcome)
        _log.info(
            "ssh: login {outcome} from {client} user {username} container {container} key {algorithm}{fingerprint}"
            "{offered}{why}",
            outcome=outcome, client=attempt.client, username=shown(attempt.username), container=attempt.container,
            algorithm=f"{attempt.algorithm} " if attempt.algorithm else "",
            fingerprint=attempt.fingerprint, offered="" if attempt.signed else " (offered)",
            why=f": {why}" if why else "",
        )


__all__ = [
    "ContainerKeyChecker", "GatewayLogin", "GatewayUserAuthServer", "KeyOffered", "LoginRefused", "fingerprint",
    "is_owner_key", "key_blob", "loading_refusal", "unavailable_reason",
]
