"""
The TLS side of a sniffing listener: what happens to a connection whose
first byte said TLS.

L{ClientHelloProtocol} reads the ClientHello with the pure
L{ClientHelloParser} (bounded in size and time), keeping every byte, then
decides by SNI alone: a host whose route passes TLS through, or a
container name (C{<container-id>.<container-domain>}) that no loaded
certificate covers, gets the raw stream relayed to its backend, ClientHello
first, without ever being decrypted; any other name is handed to a
C{TLSMemoryBIOProtocol} that terminates TLS with the certificate chosen
here, once for the connection, and speaks HTTP inside, the buffered bytes
replayed into it.  A malformed, oversized or late
ClientHello, or a name no certificate covers when there is no default, is
closed with a log line naming the client and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.net.connect import ConnectFailure, ConnectProblem, Splice, backend_endpoint, connect_and_splice
from edd_gateway.net.transport import set_no_delay, swap_protocol
from edd_gateway.front.admission import NO_ADMISSION
from edd_gateway.tls.clienthello import DEFAULT_MAX_BYTES, ClientHelloParser
from edd_gateway.tls.clienthello_body import ClientHello, ClientHelloError
from edd_gateway.routes.containers import ContainerDecision, ContainerRefused, ContainerRouter
from edd_gateway.ops.observe import GatewayObserver, route_label, tunnel_reporter
from edd_gateway.net.proxyprotocol import header as proxy_header
from edd_gateway.routes.model import Route
from edd_gateway.routes.table import LiveRouteTable
from edd_gateway.net.addresses import describe_peer
from edd_gateway.tls.context import server_connection_creator
from edd_gateway.tls.store import CertificateStore, LoadedCertificate
from edd_gateway.tls.terminated import TerminatedTLS, TerminatorFactory

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HELLO_TIMEOUT",
    "ClientHelloProtocol",
    "TLSListenerFactory",
    "TLSStats",
    "TerminatedTLS",
    "backend_endpoint",
]

#: Seconds a client has, from the first TLS byte, to finish its ClientHello.
DEFAULT_HELLO_TIMEOUT = 10.0
#: Seconds a terminated client has, from its ClientHello, to finish the handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds to connect a passthrough backend when its route names none.
DEFAULT_CONNECT_TIMEOUT = 5.0

# A fatal TLS alert record (RFC 8446 section 6): the client gets a reason it
# can show instead of a bare reset.  Version 3.3 is what every TLS version
# puts in records after the first flight.
_ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
_ALERT_DECODE_ERROR = b"\x15\x03\x03\x00\x02\x02\x32"
_ALERT_INTERNAL_ERROR = b"\x15\x03\x03\x00\x02\x02\x50"

@dataclass
class TLSStats:
    """What became of the TLS connections of the listeners sharing a factory."""

    terminated: int = 0
    handshakes: int = 0
    handshake_failures: int = 0
    passed_through: int = 0
    malformed: int = 0
    hello_timeouts: int = 0
    no_certificate: int = 0
    backend_failures: int = 0
    closed_early: int = 0
    container_refusals: int = 0


class ClientHelloProtocol(Protocol):
    """
    One TLS connection until its ClientHello is read and it is either handed
    to the terminating TLS protocol or spliced to a passthrough backend.
    """

    _log = Logger()

    def __init__(self, factory: TLSListenerFactory, peer: IAddress | None = None) -> None:
        self._factory = factory
        #: The client's address, as the sniffer read it at its decision
        #: (behind a PROXY-protocol wrapper, the one the header named).
        self._peer = peer
        self._parser = ClientHelloParser(factory.max_hello_bytes)
        self._timer: IDelayedCall | None = None
        self._decided = False
        self._lost = False
        self._late_bytes: list[bytes] = []
        self._connecting: defer.Deferred[Any] | None = None
        self.client = ""
        self.client_ip = "-"

    def connectionMade(self) -> None:
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()  # type: ignore[union-attr]  # set by makeConnection
        self.client = describe_peer(peer)
        self.client_ip = getattr(peer, "host", "-")
        self._timer = self._factory.clock.callLater(self._factory.hello_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            # Only while a passthrough backend is being connected (reading is
            # paused, but a transport may already hold a read in flight).
            self._late_bytes.append(data)
            return
        try:
            hello = self._parser.feed(data)
        except ClientHelloError as problem:
            self._factory.stats.malformed += 1
            self._factory.admission.garbage(self.client_ip)
            self._refuse("sent a malformed ClientHello: {reason}", _ALERT_DECODE_ERROR, reason=problem.reason)
            return
        if hello is not None:
            self._decide(hello)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._stop_timer()
        if not self._decided:
            self._decided = True
            self._factory.stats.closed_early += 1
        if self._connecting is not None:
            self._connecting.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self._decided:
            return
        self._factory.stats.hello_timeouts += 1
        self._factory.admission.hit("tls-hello-timeout", self.client_ip)
        self._refuse(
            "sent no complete ClientHello within {timeout}s ({count} bytes)",
            None,
            timeout=self._factory.hello_timeout,
            count=len(self._parser.buffered),
        )

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _decide(self, hello: ClientHello) -> None:
        """Pass through, terminate with the certificate chosen here once for the connection, or refuse."""
        self._decided = True
        self._stop_timer()
        name = hello.server_name
        route = self._factory.routes.current.tls_passthrough(name) if name is not None else None
        if route is not None:
            self._pass_through(hello, route)
            return
        store = self._factory.store
        covering = store.covering(name) if name is not None else None
        if covering is None and name is not None:
            # A container name a loaded certificate covers is terminated here,
            # its requests routed inside; any other goes to the container as is.
            decision = self._container_decision(name)
            if isinstance(decision, ContainerRefused):
                self._factory.stats.container_refusals += 1
                alert = _ALERT_UNRECOGNIZED_NAME if decision.status == 503 else _ALERT_INTERNAL_ERROR
                self._refuse("SNI {sni}: {reason}", alert, sni=name, reason=decision.reason)
                return
            if decision is not None:
                route = decision.route(name, tls_passthrough=True)
                if self._factory.container_proxy_protocol is not None:
                    route = replace(route, proxy_protocol=self._factory.container_proxy_protocol)
                self._pass_through(hello, route)
                return
        certificate = covering or store.default
        if certificate is None:
            self._factory.stats.no_certificate += 1
            what = "sent no SNI" if name is None else "asked for {sni}, which no certificate covers,"
            self._refuse(what + " and there is no default certificate", _ALERT_UNRECOGNIZED_NAME, sni=name)
        else:
            self._terminate(hello, certificate)

    def _container_decision(self, name: str) -> ContainerDecision | None:
        containers = self._factory.containers
        if containers is None:
            return None
        return containers.route(name, self.transport)

    def _terminate(self, hello: ClientHello, certificate: LoadedCertificate) -> None:
        transport = self.transport
        assert transport is not None
        self._factory.stats.terminated += 1
        # The HTTP side sets TCP_NODELAY on TCP transports only, and it will
        # see the TLS wrapper: without it a response written in two records
        # waits for the client's delayed ACK.
        set_no_delay(transport)
        # Known here already: the HTTP side asks for both on every
        # connection (getPeer) or request (the 421 check).
        assert self._peer is not None  # set in connectionMade
        tls = self._factory.terminator.terminate(self._peer, hello.server_name, certificate)
        swap_protocol(transport, tls)
        tls.makeConnection(transport)
        self.transport = None
        if not _closing(transport):
            tls.dataReceived(self._parser.buffered)

    def _pass_through(self, hello: ClientHello, route: Route) -> None:
        transport = self.transport
        assert transport is not None
        timeout = route.connect_timeout or self._factory.connect_timeout
        self._connecting = connect_and_splice(
            backend_endpoint(self._factory.reactor, route.target, timeout), transport,
            lambda backend: self._backend_connected(backend, hello, route))
        self._connecting.addErrback(self._backend_failed, hello, route, timeout)

    def _backend_connected(self, backend: ITransport, hello: ClientHello, route: Route) -> Splice | None:
        """The relay to the passthrough backend (after a PROXY header), or L{None} if the client left."""
        self._connecting = None
        if self._lost:
            return None
        client = self.transport
        assert client is not None
        self._factory.stats.passed_through += 1
        self._log.info(
            "tls: {client} SNI {sni} passed through to {backend} ({source}){proxy}",
            client=self.client,
            sni=hello.server_name,
            backend=str(route.target),
            source=route.source or "?",
            proxy=f" with a PROXY protocol {route.proxy_protocol} header" if route.proxy_protocol else "",
        )
        if route.proxy_protocol is not None:
            # First on the wire, before the replayed ClientHello: the backend
            # (or what fronts it) reads the client's address from it.
            backend.write(proxy_header(route.proxy_protocol, client.getPeer(), client.getHost()))
        initial = self._parser.buffered + b"".join(self._late_bytes)
        self._late_bytes = []
        self.transport = None
        factory = self._factory
        return Splice(initial, factory.idle_timeout, factory.clock, self._tunnel_report(route),
                      self._limit_hit("tcp-idle"))

    def _limit_hit(self, limit: str) -> Callable[[], None]:
        admission = self._factory.admission
        client = self.client_ip
        return lambda: admission.hit(limit, client)

    def _tunnel_report(self, route: Route) -> Callable[[int, int], None] | None:
        """The relay's C{on_close}: one tunnel record for metrics and the access log."""
        return tunnel_reporter(self._factory.observer, self._factory.clock, "tls-passthrough", self.client_ip,
                               route_label(route), str(route.target))

    def _backend_failed(self, failure: Failure, hello: ClientHello, route: Route, timeout: float) -> None:
        self._connecting = None
        if self._lost:
            # The client left first and cancelled the attempt: nobody to tell.
            return
        self._factory.stats.backend_failures += 1
        problem = ConnectFailure.of(failure)
        if problem.problem is ConnectProblem.TIMED_OUT:
            self._factory.admission.hit("backend-connect-timeout", self.client_ip)
        self._refuse(
            "SNI {sni}: the passthrough backend {backend} ({source}) {problem}",
            _ALERT_INTERNAL_ERROR,
            sni=hello.server_name,
            backend=str(route.target),
            source=route.source or "?",
            problem=problem.describe(timeout),
        )

    def _refuse(self, what: str, alert: bytes | None, **fields: object) -> None:
        """Log C{tls: <client> <what>; closing}, send C{alert} and close."""
        self._decided = True
        self._stop_timer()
        self._log.info("tls: {client} " + what + "; closing", client=self.client, **fields)
        transport = self.transport
        if transport is None or self._lost:
            return
        if alert is not None:
            transport.write(alert)
        transport.loseConnection()


def _closing(transport: object) -> bool:
    return not getattr(transport, "connected", True) or bool(getattr(transport, "disconnecting", False))


class TLSListenerFactory(Factory):
    """
    The handler a L{SniffingFactory} gives TLS connections to.

    @param routes: decides passthrough by SNI (C{tls_passthrough(host)}).
    @param store: the certificates terminated connections choose from.
    @param https: the factory of the protocol speaking inside terminated
        TLS (the HTTP proxy with C{scheme="https"}).
    @param reactor: connects passthrough backends and schedules timeouts.
    @param creator: the server connection creator, given the certificate
        chosen here for each terminated connection; by default one over
        C{store}'s certificates.
    @param idle_timeout: seconds a passthrough relay may move nothing
        before both sides are closed; L{None} for never.
    @param handshake_timeout: seconds a terminated connection has, from its
        ClientHello, to finish the TLS handshake; L{None} for no bound.
    @param containers: passes TLS for C{<container-id>.<container-domain>}
        through to the container when no certificate covers the name.
    @param container_proxy_protocol: C{"v1"} or C{"v2"}: those container
        connections start with a PROXY protocol header naming the client.
    @param observer: told of every passthrough tunnel that ends.
    @param admission: hears of limit hits and garbage
        (L{edd_gateway.front.admission.Admission}); shared with the terminator.
    """

    noisy = False

    def __init__(
        self,
        routes: LiveRouteTable,
        store: CertificateStore,
        https: IProtocolFactory,
        reactor: Any,
        *,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_hello_bytes: int = DEFAULT_MAX_BYTES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        creator: IOpenSSLServerConnectionCreator | None = None,
        containers: ContainerRouter | None = None,
        container_proxy_protocol: str | None = None,
        observer: GatewayObserver | None = None,
        admission: Any = NO_ADMISSION,
    ) -> None:
        self.routes = routes
        self.containers = containers
        self.container_proxy_protocol = container_proxy_protocol
        self.store = store
        self.reactor = reactor
        self.clock = reactor
        self.hello_timeout = hello_timeout
        self.max_hello_bytes = max_hello_bytes
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.stats = TLSStats()
        self.observer = observer
        self.terminator = TerminatorFactory(
            creator if creator is not None else server_connection_creator(store),
            https,
            reactor,
            self.stats,
            handshake_timeout,
            admission=admission,
        )

    @property
    def admission(self) -> Any:
        """Hears of limit hits and garbage (L{edd_gateway.front.admission.Admission}); shared with the terminator."""
        return self.terminator.admission

    @admission.setter
    def admission(self, admission: Any) -> None:
        self.terminator.admission = admission

    def buildProtocol(self, addr: IAddress) -> ClientHelloProtocol:  # type: ignore[override]  # a port's peer
        return ClientHelloProtocol(self, addr)

    def startFactory(self) -> None:
        # The terminating factory never listens itself: it is started here,
        # and it starts the HTTP factory inside it.
        self.terminator.doStart()

    def stopFactory(self) -> None:
        self.terminator.doStop()
