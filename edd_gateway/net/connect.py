"""
Opening connections to backends, the same way for every protocol: the
endpoint for a host (L{endpoint_to}), what a failed attempt was
(L{ConnectFailure}), and, for the byte relays (TLS passthrough, raw TCP),
L{connect_and_splice} in the shape of twisted's C{portforward}: the client
paused, a backend connected and held, then both spliced.

Each protocol words a failure its own way (an HTTP status, a TLS log line,
an SSH refusal), but they all classify it here, so a timeout is a timeout
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_address
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from edd_gateway.net.relay import OnClose, splice
from edd_gateway.net.transport import set_no_delay
from edd_gateway.routes.model import Target


def endpoint_to(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An endpoint for C{host}:C{port}: TCP straight to an IP address, else by name."""
    try:
        version = ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if version == 4:
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)


def backend_endpoint(reactor: Any, target: Target, timeout: float) -> IStreamClientEndpoint:
    """An endpoint for a route's C{target}."""
    return endpoint_to(reactor, target.host, target.port, timeout)


class ConnectProblem(Enum):
    """Why a backend connection attempt failed, as the gateway's answers tell it apart."""

    TIMED_OUT = "timed out"
    REFUSED = "refused"
    UNRESOLVED = "unresolved"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ConnectFailure:
    """A failed connection attempt: its L{ConnectProblem} and the error's own words."""

    problem: ConnectProblem
    detail: str

    @classmethod
    def of(cls, failure: Failure) -> ConnectFailure:
        # An attempt given up on by its deadline (the endpoint's timeout, or
        # a Deferred timeout that cancels it) is a timeout too.
        if failure.check(error.TimeoutError, defer.TimeoutError, defer.CancelledError):
            problem = ConnectProblem.TIMED_OUT
        elif failure.check(error.ConnectionRefusedError):
            problem = ConnectProblem.REFUSED
        elif failure.check(error.DNSLookupError):
            problem = ConnectProblem.UNRESOLVED
        else:
            problem = ConnectProblem.UNREACHABLE
        return cls(problem, failure.getErrorMessage())

    def describe(self, timeout: float) -> str:
        """What the backend did, to follow its name in a log line: C{"refused the connection"}."""
        if self.problem is ConnectProblem.TIMED_OUT:
            return f"did not accept a connection within {timeout:g}s"
        if self.problem is ConnectProblem.REFUSED:
            return "refused the connection"
        if self.problem is ConnectProblem.UNRESOLVED:
            return "does not resolve"
        return f"could not be reached ({self.detail})"


@dataclass(frozen=True)
class Splice:
    """
    The relay to start once a backend is connected: the bytes the client
    sent that the backend must get first, and how the relay is bounded and
    reported (L{edd_gateway.net.relay.splice}'s options).
    """

    initial: bytes
    idle_timeout: float | None
    clock: IReactorTime | None
    on_close: OnClose | None = None
    on_idle: Callable[[], object] | None = None


def connect_and_splice(endpoint: IStreamClientEndpoint, client: ITransport,
                       ready: Callable[[ITransport], Splice | None]) -> defer.Deferred[None]:
    """
    Pause C{client}, connect to C{endpoint}, and relay bytes between the two.

    Once the backend is connected, C{ready(backend)} gives the L{Splice}
    (and may write a preamble of its own to C{backend}: a PROXY protocol
    header), or L{None} when the client is gone by then: the backend is
    closed instead.  The result fires once the relay has started, and fails
    with the attempt's failure (cancel it when the client leaves first).
    """
    client.pauseProducing()  # type: ignore[attr-defined]  # TCP and TLS transports are producers
    held = HeldConnection()

    def connected(_: object) -> None:
        backend = held.transport
        assert backend is not None
        relay = ready(backend)
        if relay is None:
            backend.loseConnection()
            return
        set_no_delay(client)
        set_no_delay(backend)
        splice(client, backend, a_to_b_initial=relay.initial, idle_timeout=relay.idle_timeout,
               clock=relay.clock if relay.idle_timeout is not None else None,
               on_close=relay.on_close, on_idle=relay.on_idle)

    attempt: defer.Deferred[Any] = endpoint.connect(OneProtocolFactory(held))
    return attempt.addCallback(connected)


class OneProtocolFactory(Factory[Protocol]):
    """Hands out one prepared protocol; quiet, unlike connectProtocol's factory."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class HeldConnection(Protocol):
    """Holds a fresh backend connection, reading nothing, until a relay takes it over."""
