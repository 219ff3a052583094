"""
Raw TCP on the container ports: a connection to one of the 8000-8999
listeners that speaks neither TLS, HTTP nor SSH (a database client, a game
protocol, a server that speaks first) names no container, so it goes to the
one container with an ingress rule for that port
(L{edd_gateway.routes.containers.ContainerRouter.port_owner}) and is relayed byte
for byte, with the bytes the sniffer read replayed first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.connect import Splice, backend_endpoint, connect_and_splice
from edd_gateway.routes.containers import ContainerBackend, ContainerRouter
from edd_gateway.ops.observe import GatewayObserver, tunnel_reporter
from edd_gateway.net.addresses import describe_peer

__all__ = ["RawTCPFactory", "RawTCPProtocol"]

log = Logger()


class RawTCPProtocol(Protocol):
    """One raw connection: find the port's container, connect, then relay."""

    def __init__(self, factory: RawTCPFactory) -> None:
        self.factory = factory
        self.buffered: list[bytes] = []
        self.lost = False
        self.connecting: Any = None

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.client = describe_peer(transport.getPeer())
        containers = self.factory.containers
        port = containers.external_port(transport)
        decision = containers.port_owner(port)
        if not isinstance(decision, ContainerBackend):
            log.info("tcp: {client} on port {port}: {reason}; closing", client=self.client, port=port,
                     reason=decision.reason)
            transport.loseConnection()
            return
        factory = self.factory
        self.connecting = connect_and_splice(
            backend_endpoint(factory.reactor, decision.target, factory.connect_timeout), transport,
            lambda backend: self._connected(backend, decision))
        self.connecting.addErrback(self._failed, decision)

    def dataReceived(self, data: bytes) -> None:
        # The sniffer's replay, and whatever a read in flight still brings
        # while the backend is being connected.
        self.buffered.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self.connecting is not None:
            self.connecting.cancel()

    def _connected(self, backend: ITransport, decision: ContainerBackend) -> Splice | None:
        """The relay to the container, or L{None} if the client left meanwhile."""
        self.connecting = None
        if self.lost:
            return None
        log.info("tcp: {client} port {port} relayed to container {container} at {backend}", client=self.client,
                 port=decision.external_port, container=decision.container.id, backend=str(decision.target))
        initial, self.buffered = b"".join(self.buffered), []
        return Splice(initial, self.factory.idle_timeout, self.factory.reactor, self._report(decision))

    def _report(self, decision: ContainerBackend) -> Any:
        """The relay's C{on_close}: one tunnel record for metrics and the access log."""
        client_ip = getattr(self.transport.getPeer(), "host", "-")  # type: ignore[union-attr]  # set by makeConnection
        return tunnel_reporter(self.factory.observer, self.factory.reactor, "tcp", client_ip, "container",
                               str(decision.target))

    def _failed(self, failure: Failure, decision: ContainerBackend) -> None:
        self.connecting = None
        if self.lost:
            return
        log.info("tcp: {client} port {port}: container {container} at {backend} cannot be reached ({problem}); "
                 "closing", client=self.client, port=decision.external_port, container=decision.container.id,
                 backend=str(decision.target), problem=failure.getErrorMessage())
        self.transport.loseConnection()  # type: ignore[union-attr]  # set by makeConnection


class RawTCPFactory(Factory):
    """
    The sniffer's handler for raw TCP on container ports.

    @param idle_timeout: seconds a relay may move nothing before both sides
        are closed (C{--tcp-idle-timeout}); L{None} for never.
    """

    noisy = False

    def __init__(self, containers: ContainerRouter, reactor: IReactorTime, *, connect_timeout: float,
                 idle_timeout: float | None, observer: GatewayObserver | None = None) -> None:
        self.containers = containers
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.observer = observer

    def buildProtocol(self, addr: object) -> RawTCPProtocol:
        return RawTCPProtocol(self)
