"""
What the front door asks of any open connection, whatever wraps it (TLS,
the PROXY-protocol wrapper of a C{haproxy:} listener): whether it is still
open, and which protocol speaks on it.  Admission prunes the connections it
counts with the first, the drain asks the second to finish or say goodbye.
"""

from __future__ import annotations

from typing import Any

__all__ = ["innermost_protocol", "is_open"]


def is_open(transport: Any) -> bool:
    """Whether the connection below C{transport} (a wrapper's included) is still open."""
    while transport is not None:
        disconnected = getattr(transport, "disconnected", None)
        if disconnected is not None:
            return not disconnected
        transport = getattr(transport, "transport", None)
    return False


def innermost_protocol(transport: Any) -> Any:
    """The protocol speaking on C{transport}, under TLS or PROXY-protocol wrappers."""
    protocol: Any = getattr(transport, "protocol", None) or getattr(transport, "wrappedProtocol", None)
    while getattr(protocol, "wrappedProtocol", None) is not None:
        protocol = protocol.wrappedProtocol
    return protocol
