"""
How a peer's address reads in log lines, on every path (sniffing, relays,
TLS, raw TCP, SSH): here, below all of them, so that the byte relay does not
import the sniffer that hands connections to it.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress


def describe_peer(address: IAddress) -> str:
    """C{203.0.113.7:51234} or C{[2001:db8::1]:51234}; anything else as repr."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    return repr(address)


__all__ = ["describe_peer"]
