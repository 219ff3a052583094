"""
The ACME conversation (RFC 8555) through the C{acme} library, blocking: run
only in a worker thread (L{edd_gateway.issuance.issuer} does, with
C{deferToThread}); every call into the reactor's world goes through the
L{Publisher} it is given, which hops back to the reactor thread.

One L{BlockingAcme} per directory URL and account key: it registers the
account (or finds it, when the key is known to the CA), then per domain
places an order, answers one challenge of each authorization (the first
of the configured types the CA offers), finalizes with a CSR for the
domain's key and returns the chain in PEM.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from acme import client as acme_client
from acme import crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from josepy.jwk import JWKRSA

from edd_gateway.issuance.challenges import TLSALPN01  # noqa: F401  # registers tls-alpn-01 with acme

__all__ = ["AcmeProblem", "AcmeSettings", "BlockingAcme", "CHALLENGE_TYPES", "Publisher", "new_account_key"]

#: The challenge types the gateway can answer itself.
CHALLENGE_TYPES = ("tls-alpn-01", "http-01")


@dataclass(frozen=True)
class AcmeSettings:
    """
    @ivar directory: the ACME directory URL (C{--acme-directory}).
    @ivar email: the account's contact (C{--acme-email}), if any.
    @ivar ca_bundle: the CA certificates the directory's TLS is checked
        against (C{--acme-ca-bundle}, for a test CA); the system's when None.
    @ivar challenges: the types answered, preferred first.
    @ivar order_timeout: seconds an order may take, from placing it to its
        certificate.
    """

    directory: str
    email: str | None = None
    ca_bundle: str | None = None
    challenges: tuple[str, ...] = CHALLENGE_TYPES
    order_timeout: float = 90.0


class AcmeProblem(Exception):
    """
    An order failed; C{problem} is the CA's problem document (RFC 7807) as
    JSON text when it sent one, for the log line.
    """

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem


class Publisher(Protocol):
    """Places and takes down the answers to challenges; called from the worker thread."""

    def publish(self, domain: str, kind: str, token: str, key_authorization: str) -> None: ...
    def withdraw(self, domain: str) -> None: ...


def new_account_key() -> bytes:
    """A new ACME account key (RSA 2048, RS256: what every CA accepts), in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _problem_text(error: BaseException) -> str | None:
    """The problem document(s) in an acme exception, as JSON text."""
    if isinstance(error, messages.Error):
        return json.dumps(error.to_json(), sort_keys=True)
    if isinstance(error, errors.ValidationError):
        found = [challenge.error.to_json() for authz in error.failed_authzrs
                 for challenge in authz.body.challenges if challenge.error is not None]
        return json.dumps(found, sort_keys=True) if found else None
    return None


class BlockingAcme:
    """One directory and account; blocking calls, for a worker thread."""

    def __init__(self, settings: AcmeSettings, account_key_pem: bytes, account_uri: str | None = None) -> None:
        self.settings = settings
        key = serialization.load_pem_private_key(account_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the stored ACME account key is not an RSA key")
        self._key = JWKRSA(key=key)
        verify: Any = settings.ca_bundle if settings.ca_bundle is not None else True
        self._net = acme_client.ClientNetwork(self._key, user_agent="edd-gateway", verify_ssl=verify, timeout=30)
        self._client: acme_client.ClientV2 | None = None
        self.account_uri = account_uri

    def _connected(self) -> acme_client.ClientV2:
        if self._client is None:
            directory = acme_client.ClientV2.get_directory(self.settings.directory, self._net)
            self._client = acme_client.ClientV2(directory, self._net)
        return self._client

    def register(self) -> str:
        """The account's URI: registered now, or found (the CA knows the key)."""
        client = self._connected()
        if self.account_uri is not None:
            self._net.account = messages.RegistrationResource(uri=self.account_uri, body=messages.Registration())
            return self.account_uri
        try:
            registration = client.new_account(messages.NewRegistration.from_data(
                email=self.settings.email, terms_of_service_agreed=True))
            uri = registration.uri
        except errors.ConflictError as conflict:
            uri = conflict.location
            self._net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if not uri:
            raise AcmeProblem("the CA registered the account without saying where it is")
        self.account_uri = uri
        return uri

    def issue(self, domain: str, key_pem: bytes, publisher: Publisher) -> str:
        """
        The certificate chain for C{domain} (its key C{key_pem}), in PEM.

        @raise AcmeProblem: the order failed (the CA's problem document in it).
        """
        try:
            try:
                return self._issue(domain, key_pem, publisher)
            except messages.Error as error:
                if error.code != "accountDoesNotExist":
                    raise
                # The CA forgot the stored account (deactivated, or a test CA
                # restarted): register the key again, and order once more.
                self.account_uri = None
                self._net.account = None
                return self._issue(domain, key_pem, publisher)
        except AcmeProblem:
            raise
        except (errors.Error, messages.Error) as error:
            raise AcmeProblem(f"{type(error).__name__}: {str(error).strip()}", _problem_text(error)) from None
        finally:
            publisher.withdraw(domain)

    def _issue(self, domain: str, key_pem: bytes, publisher: Publisher) -> str:
        client = self._connected()
        if self._net.account is None:
            self.register()
        order = client.new_order(crypto_util.make_csr(key_pem, [domain]))
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = self._choose(authorization.body.challenges, domain)
            response, key_authorization = challenge.chall.response_and_validation(self._key)
            publisher.publish(domain, challenge.chall.typ, challenge.chall.encode("token"), key_authorization)
            client.answer_challenge(challenge, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.settings.order_timeout)
        finished = client.finalize_order(self._authorized(client, order, deadline), deadline)
        if not finished.fullchain_pem:
            raise AcmeProblem(f"the order for {domain} ended without a certificate")
        return finished.fullchain_pem

    @staticmethod
    def _authorized(client: acme_client.ClientV2, order: messages.OrderResource,
                    deadline: datetime.datetime) -> messages.OrderResource:
        """
        The order once every authorization is valid.  The library's own poll
        waits a whole second before looking again; a validation the gateway
        answers itself is usually done in a few milliseconds, so this looks
        after 0.1 s, doubling to 1 s (the first visitor waits for it).
        """
        done = []
        for authorization in order.authorizations:
            delay = 0.1
            while authorization.body.status not in (messages.STATUS_VALID, messages.STATUS_INVALID):
                if datetime.datetime.now() >= deadline:
                    raise errors.TimeoutError()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                authorization, _ = client.poll(authorization)
            if authorization.body.status != messages.STATUS_VALID:
                raise errors.ValidationError([authorization])
            done.append(authorization)
        return order.update(authorizations=done)

    def _choose(self, offered: Sequence[messages.ChallengeBody], domain: str) -> messages.ChallengeBody:
        for kind in self.settings.challenges:
            for challenge in offered:
                if challenge.chall.typ == kind:
                    return challenge
        names = ", ".join(str(challenge.chall.typ) for challenge in offered)
        raise AcmeProblem(f"the CA offers {domain} no challenge the gateway answers ({names})")
