"""
Graceful drain: what the gateway does between SIGTERM and exit.

twistd turns SIGTERM into C{reactor.stop()}, which stops the service tree
and waits for the Deferred its top service returns.  L{GatewayService} is
that top service: it turns readiness false, stops accepting on every
listener, lets HTTP connections finish the requests in flight (and closes
them after, or at once when idle), waits up to the grace period for the
rest (tunnels, SSH sessions), closes what is left, and only then stops the
other services (backend pool, database, NATS) that in-flight work needs.

Open connections are known through L{ConnectionTracker}: each listener's
transports, held weakly so that a closed connection costs nothing to
forget.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import MultiService
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface

from edd_gateway.front.admission import NO_ADMISSION, Admission, NoAdmission
from edd_gateway.front.connections import innermost_protocol, is_open

__all__ = ["ConnectionTracker", "GatewayService", "IAdmittedOnFirstBytes", "TrackedFactory"]

log = Logger()

#: Seconds between two looks at the open connections while draining.
DRAIN_POLL_INTERVAL = 0.1
#: Seconds the SSH goodbyes and TLS close alerts get after the grace period.
FINAL_CLOSE_TIME = 1.0


class ConnectionTracker:
    """
    The connections one listener accepted, and those still open: known by
    their transport (L{add}), or by a protocol that stays theirs for life
    (L{add_protocol}, before it is connected).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, transport: Any) -> None:
        self.accepted += 1
        self._transports.add(transport)

    def add_protocol(self, protocol: Any) -> None:
        self.accepted += 1
        self._protocols.add(protocol)

    def open_transports(self) -> list[Any]:
        transports = [getattr(protocol, "transport", None) for protocol in list(self._protocols)]
        transports.extend(self._transports)
        return [transport for transport in transports if is_open(transport)]

    def __len__(self) -> int:
        return len(self.open_transports())


class IAdmittedOnFirstBytes(Interface):
    """
    A protocol that can be admitted on its first bytes rather than when it
    is built.  Behind a C{haproxy:} listener the address a factory is given
    is the balancer's; the client's is known once the PROXY header is read,
    which is before any byte reaches the protocol.
    """

    def admit_on_first_bytes(admit: Callable[[Any], bool]) -> None:
        """
        Call C{admit(transport)} before handling the first bytes received;
        when it answers false (admission has closed the connection), handle
        none of them.
        """


class TrackedFactory(Factory):
    """
    A listener's factory that records each protocol it builds in a
    tracker.  Not a WrappingFactory: that would put a wrapper in front of
    every read and write of the connection's life.

    Each connection is admitted first (C{admission}:
    L{edd_gateway.front.admission.Admission}; L{NoAdmission} by default); a
    refused one gets no protocol, so Twisted closes its socket at once.
    C{behind_proxy} (a C{haproxy:} listener): the address given here is the
    balancer's, so the protocol, an L{IAdmittedOnFirstBytes}, admits the
    connection on its first bytes instead.
    """

    noisy = False

    def __init__(self, wrapped: IProtocolFactory, tracker: ConnectionTracker,
                 admission: Admission | NoAdmission = NO_ADMISSION, behind_proxy: bool = False) -> None:
        self.wrapped = wrapped
        self.tracker = tracker
        self.admission = admission
        self.behind_proxy = behind_proxy

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]  # a port's peer
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        admission, name = self.admission, self.tracker.name
        if self.behind_proxy:
            IAdmittedOnFirstBytes(protocol).admit_on_first_bytes(
                lambda transport: admission.admit_transport(transport, name))
        elif admission.admit(str(getattr(addr, "host", "")), protocol, name) is not None:
            return None
        self.tracker.add_protocol(protocol)
        return protocol  # type: ignore[return-value]  # a Protocol

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()


class GatewayService(MultiService):
    """
    The top of the service tree.  C{listeners} are started after the other
    children and stopped first; C{trackers} and C{http_factories} are what
    the drain looks at (factories get C{draining = True}).

    @param grace: seconds connections get to finish after the listeners
        stop; what is still open then is closed.
    """

    def __init__(self, clock: IReactorTime, grace: float) -> None:
        super().__init__()
        self.clock = clock
        self.grace = grace
        self.listeners = MultiService()
        self.trackers: list[ConnectionTracker] = []
        self.http_factories: list[Any] = []
        self.draining = False

    def add_listener(self, listener: Any, tracker: ConnectionTracker) -> None:
        listener.setServiceParent(self.listeners)
        self.trackers.append(tracker)

    def open_connections(self) -> list[Any]:
        return [transport for tracker in self.trackers for transport in tracker.open_transports()]

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listeners.privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.listeners.startService()

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.draining = True
        for factory in self.http_factories:
            factory.draining = True
        log.info("drain: readiness off; listeners stop accepting; {count} connections have {grace:g} s to finish",
                 count=len(self.open_connections()), grace=self.grace)
        await self.listeners.stopService()
        for transport in self.open_connections():
            drain = getattr(innermost_protocol(transport), "drain", None)
            if drain is not None:
                drain()
        left = await self._wait(self.grace)
        if left:
            log.info("drain: grace period over; closing {count} connections", count=len(left))
            _close_all(left)
            left = await self._wait(FINAL_CLOSE_TIME)
            for transport in left:
                transport.abortConnection()
        else:
            log.info("drain: every connection finished")
        await super().stopService()

    async def _wait(self, seconds: float) -> list[Any]:
        """Wait until no connection is open or C{seconds} passed; the ones still open."""
        deadline = self.clock.seconds() + seconds
        while True:
            left = self.open_connections()
            if not left or self.clock.seconds() >= deadline:
                return left
            await deferLater(self.clock, min(DRAIN_POLL_INTERVAL, max(0.0, deadline - self.clock.seconds())),
                             lambda: None)


def _close_all(transports: Iterable[Any]) -> None:
    for transport in transports:
        protocol = innermost_protocol(transport)
        if isinstance(protocol, SSHServerTransport):
            protocol.sendDisconnect(DISCONNECT_BY_APPLICATION, b"the gateway is restarting; connect again")
        else:
            transport.abortConnection()
