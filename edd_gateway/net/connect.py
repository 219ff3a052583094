"""
Opening connections to backends: the endpoint for a route's target, and a
quiet factory that connects one protocol prepared in advance.

Shared by the HTTP backend pool and TLS passthrough, which both know the
protocol they want before the connection exists.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from edd_gateway.routes.model import Target


def backend_endpoint(reactor: Any, target: Target, timeout: float) -> IStreamClientEndpoint:
    """An endpoint for C{target}: TCP straight to an IP address, else by name."""
    try:
        version = ip_address(target.host).version
    except ValueError:
        return HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    if version == 4:
        return TCP4ClientEndpoint(reactor, target.host, target.port, timeout=timeout)
    return TCP6ClientEndpoint(reactor, target.host, target.port, timeout=timeout)


class OneProtocolFactory(Factory[Protocol]):
    """Hands out one prepared protocol; quiet, unlike connectProtocol's factory."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class HeldConnection(Protocol):
    """Holds a fresh backend connection, reading nothing, until a relay takes it over."""
