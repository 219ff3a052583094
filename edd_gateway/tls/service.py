"""
TLS in the service tree: building the certificate store from the command
line (or the development certificate of the embedded default), the factory
that sniffing listeners hand TLS connections to, and the service that keeps
the store in step with its secret directories.

Renewal is polled, like the routes file (see L{edd_gateway.files.watch} for why
not inotify): every C{interval} seconds the store compares the cheap
fingerprints of its pairs, and only re-reads when one changed.  A reload
swaps the store's index whole, so new handshakes see the new pair while open
connections keep the context they hold.  Expiry is reported when a pair is
loaded and again twice a day for every pair close to it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger

from edd_gateway.front.admission import NO_ADMISSION
from edd_gateway.tls.clienthello import DEFAULT_MAX_BYTES
from edd_gateway.routes.containers import ContainerRouter
from edd_gateway.routes.table import LiveRouteTable
from edd_gateway.tls import openssl as _openssl
from edd_gateway.tls.context import ALPN_PROTOCOL, server_connection_creator
from edd_gateway.tls.devcert import ensure_dev_certificate
from edd_gateway.tls.listener import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HELLO_TIMEOUT, TLSListenerFactory
from edd_gateway.tls.ondemand import OnDemandTLSListenerFactory, SNIHook
from edd_gateway.tls.store import DEFAULT_WARN_DAYS, CertificateStore
from edd_gateway.tls.tickets import DEFAULT_ROTATION, RotatingTicketKeys, TicketKeyRing, TicketKeysError
from edd_gateway.tls.tickets import TicketKeysFile

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_DEV_CERT_DIR",
    "CertificateRenewalService",
    "TLSSetup",
    "TicketSetup",
    "build_tickets",
    "build_tls",
]

#: Seconds between checks of the secret directories for a new pair.
DEFAULT_CHECK_INTERVAL = 5.0
#: Where the embedded default keeps its development certificate, relative to
#: the working directory (a daemonised twistd's --rundir).
DEFAULT_DEV_CERT_DIR = os.path.join("edd-gateway-state", "dev-tls")
#: Seconds between two expiry reports of the same pair.
EXPIRY_REPORT_INTERVAL = 12 * 3600.0


class CertificateRenewalService(TimerService):
    """
    Re-reads the store's secret directories when they change, and warns
    about certificates that expire within C{warn_days}.
    """

    _log = Logger()

    def __init__(
        self,
        store: CertificateStore,
        clock: IReactorTime,
        interval: float = DEFAULT_CHECK_INTERVAL,
        warn_days: float = DEFAULT_WARN_DAYS,
        expiry_interval: float = EXPIRY_REPORT_INTERVAL,
    ) -> None:
        super().__init__(interval, self.check)
        self.clock = clock
        self._clock = clock
        self.store = store
        self._warn_days = warn_days
        self._expiry_interval = expiry_interval
        self._next_expiry_report = 0.0
        #: Certificate pairs (re)loaded or dropped ("ok") and refused ("failed") since start.
        self.reloads: collections.Counter[str] = collections.Counter()

    def startService(self) -> None:
        # The store reported every pair as it loaded them: the first expiry
        # report is one interval away (check runs at once, finding nothing
        # changed; it never raises).
        self._next_expiry_report = self._clock.seconds() + self._expiry_interval
        super().startService()

    def check(self) -> None:
        """Reload what changed, then report expiry when it is due; never raises."""
        try:
            if self.store.changed():
                report = self.store.reload()
                self.reloads["ok"] += len(report.loaded) + len(report.removed)
                self.reloads["failed"] += len(report.failed)
                if report.changed or report.failed:
                    self._log.info(
                        "tls: certificates reloaded ({loaded} new, {failed} refused, {removed} removed); "
                        "new connections get them",
                        loaded=len(report.loaded),
                        failed=len(report.failed),
                        removed=len(report.removed),
                    )
        except Exception:
            self._log.failure("tls: checking the certificate directories failed")
        if self._clock.seconds() >= self._next_expiry_report:
            self._next_expiry_report = self._clock.seconds() + self._expiry_interval
            self.report_expiry()

    def report_expiry(self) -> None:
        """One warning (an error once expired) per certificate close to its end."""
        now = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        for certificate in self.store.expiring_within(self._warn_days):
            days = certificate.days_left(now)
            fields = dict(
                directory=certificate.directory,
                names=", ".join(certificate.display_names()),
                not_after=certificate.not_after.isoformat(),
                days=f"{days:.1f}",
            )
            if days < 0:
                self._log.error("tls: the certificate from {directory} for {names} EXPIRED on {not_after}", **fields)
            else:
                self._log.warn(
                    "tls: the certificate from {directory} for {names} expires on {not_after} "
                    "({days} days left)",
                    **fields,
                )


@dataclass
class TicketSetup:
    """
    How session tickets are made: C{ring} holds the keys OpenSSL asks for
    (None: OpenSSL's own key, or no tickets), C{service} keeps them (rotation
    or the key file's watcher; parent it), C{enabled} is false with
    C{--no-tls-tickets}.
    """

    enabled: bool
    ring: TicketKeyRing | None = None
    service: RotatingTicketKeys | TicketKeysFile | None = None


def build_tickets(
    reactor: IReactorTime,
    *,
    enabled: bool = True,
    keys_file: str | None = None,
    rotation: float = DEFAULT_ROTATION,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
) -> TicketSetup:
    """
    Session tickets as the command line asks, logged in one line.  Keys come
    from C{keys_file} when given (re-read every C{check_interval} seconds
    when it changed), else are drawn in memory every C{rotation} seconds.

    @raise SystemExit: when C{keys_file} is bad, or cannot be used because
        OpenSSL's ticket callback is out of reach.
    """
    log = Logger()
    if not enabled:
        log.info("tls: session tickets off (--no-tls-tickets): TLS 1.2 resumes by session id, TLS 1.3 by "
                 "stateful tickets, both only on this replica")
        return TicketSetup(False)
    problem = _openssl.ticket_keys_unavailable()
    if problem is not None:
        if keys_file is not None:
            raise SystemExit(f"edd-gateway: --tls-ticket-keys: this pyOpenSSL/cryptography build gives no way to "
                             f"set TLS ticket keys ({problem})")
        log.warn("tls: session tickets use OpenSSL's own key, drawn once for the process and never rotated: "
                 "ticket keys cannot be set here ({problem}); --no-tls-tickets turns tickets off",
                 problem=problem)
        return TicketSetup(True)
    ring = TicketKeyRing()
    service: RotatingTicketKeys | TicketKeysFile
    if keys_file is not None:
        try:
            service = TicketKeysFile(keys_file, ring, reactor, check_interval)
        except TicketKeysError as error:
            raise SystemExit(f"edd-gateway: --tls-ticket-keys: {error}") from None
    else:
        service = RotatingTicketKeys(ring, reactor, rotation)
    log.info("tls: session tickets: {description}", description=service.describe())
    return TicketSetup(True, ring, service)


@dataclass
class TLSSetup:
    """What L{build_tls} made: the listeners' TLS handler and its keepers."""

    store: CertificateStore
    factory: TLSListenerFactory
    service: CertificateRenewalService
    tickets: TicketSetup


def load_store(
    tls_dirs: Sequence[str],
    default_cert: str | None,
    dev_cert_dir: str,
    clock: IReactorTime,
) -> CertificateStore:
    """
    The certificate store for C{--tls-dir} directories, or, when there are
    none, for the development certificate (made in C{dev_cert_dir} on first
    start).

    @raise SystemExit: when a C{--tls-dir} is not a directory.
    """
    log = Logger()
    store = CertificateStore(default_name=default_cert, clock=clock)
    if not tls_dirs:
        directory = os.path.abspath(dev_cert_dir)
        _, created = ensure_dev_certificate(directory, clock=clock)
        log.info(
            "tls: no --tls-dir given: HTTPS uses the {kind} self-signed development certificate in {directory}",
            kind="new" if created else "existing",
            directory=directory,
        )
        store.add_directory(directory, default=True)
        return store
    for directory in tls_dirs:
        try:
            store.add_directory(directory)
        except NotADirectoryError as problem:
            raise SystemExit(f"edd-gateway: --tls-dir: {problem}") from None
    if store.default is None:
        log.warn(
            "tls: no default certificate: TLS for a name no certificate covers is closed"
            + (f" (--default-cert {default_cert} matches none)" if default_cert else "")
        )
    return store


def build_tls(
    routes: LiveRouteTable,
    https: IProtocolFactory,
    reactor: Any,
    *,
    tls_dirs: Sequence[str] = (),
    default_cert: str | None = None,
    dev_cert_dir: str = DEFAULT_DEV_CERT_DIR,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
    hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
    max_hello_bytes: int = DEFAULT_MAX_BYTES,
    connect_timeout: float = 5.0,
    idle_timeout: float | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    containers: ContainerRouter | None = None,
    container_proxy_protocol: str | None = None,
    tickets: TicketSetup | None = None,
    observer: Any = None,
    admission: Any = NO_ADMISSION,
    alpn: Sequence[bytes] = (ALPN_PROTOCOL,),
    sni_hook: SNIHook | None = None,
) -> TLSSetup:
    """
    Everything TLS needs for the service tree: give C{setup.factory} to
    every sniffing listener as its TLS handler, and parent C{setup.service}.
    C{containers} passes container names no certificate covers through to
    their containers, with a PROXY protocol header of
    C{container_proxy_protocol}'s version first when it is given.
    C{tickets} (L{build_tickets}; OpenSSL's own key when not given): parent
    its C{service} too.  C{observer} and C{admission}: the factory's
    (L{TLSListenerFactory}).  C{sni_hook}: asked first about every name
    (custom domains' on-demand certificates, L{edd_gateway.tls.ondemand}).
    """
    store = load_store(tls_dirs, default_cert, dev_cert_dir, reactor)
    if tickets is None:
        tickets = TicketSetup(True)
    creator = server_connection_creator(store, ticket_keys=tickets.ring, tickets=tickets.enabled, alpn=alpn,
                                        extra=sni_hook)
    hooked = {} if sni_hook is None else {"hook": sni_hook}
    factory = (TLSListenerFactory if sni_hook is None else OnDemandTLSListenerFactory)(
        routes,
        store,
        https,
        reactor,
        hello_timeout=hello_timeout,
        max_hello_bytes=max_hello_bytes,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        handshake_timeout=handshake_timeout,
        containers=containers,
        container_proxy_protocol=container_proxy_protocol,
        creator=creator,
        observer=observer,
        admission=admission,
        **hooked,
    )
    service = CertificateRenewalService(store, reactor, check_interval)
    return TLSSetup(store, factory, service, tickets)
