"""
Transport plumbing shared by every protocol of the gateway.

Two things Twisted does not offer directly: handing an already-connected
transport to another protocol (the sniffer hands a connection to HTTP, TLS or
SSH; an HTTP upgrade hands both sides to the byte relay), and writing to a TCP
socket at once when nothing is queued.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

_TCP_TYPES = (tcp.Server, tcp.Client)


def swap_protocol(transport: ITransport, new_protocol: IProtocol) -> None:
    """
    Make C{transport} deliver its future events to C{new_protocol}.

    Works for Twisted's TCP connections (their C{protocol} attribute) and for
    wrapping protocols that act as transports (TLS, PROXY-protocol and
    policies wrappers keep the protocol they feed in C{wrappedProtocol}).
    Sets C{transport} and C{connected} on the new protocol but does not call
    C{connectionMade}: the caller decides whether the protocol needs it.
    """
    if isinstance(transport, tcp.Connection):
        transport.protocol = new_protocol
    elif hasattr(transport, "wrappedProtocol"):
        transport.wrappedProtocol = new_protocol
    elif hasattr(transport, "protocol"):
        # Test transports (iosim's FakeTransport, StringTransport's
        # with-disconnection variant) name their protocol like TCP does.
        transport.protocol = new_protocol
    else:
        raise TypeError(f"cannot hand over a {type(transport).__name__}")
    new_protocol.transport = transport  # type: ignore[attr-defined]  # IProtocol lacks it
    new_protocol.connected = 1  # type: ignore[attr-defined]  # IProtocol lacks it


def _tcp_below(transport: Any) -> Any:
    """
    The TCP connection that carries C{transport}'s bytes unchanged: the
    transport itself, or the one below the PROXY-protocol wrapper of a
    C{haproxy:} listener, which only reads the header and answers
    C{getPeer}/C{getHost} from it (its C{write} is the connection's); L{None}
    for anything else (TLS, test transports).
    """
    if type(transport) is HAProxyProtocolWrapper:
        transport = transport.transport
    return transport if type(transport) in _TCP_TYPES else None


def is_plain_tcp(transport: Any) -> bool:
    """Whether C{transport} writes straight to one of Twisted's own TCP connections."""
    return _tcp_below(transport) is not None


def _tls_over_tcp(transport: Any) -> Any:
    """The TCP connection below a TLS transport that writes to it directly, or L{None}."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return _tcp_below(transport.transport)
    return None


def socket_below(transport: Any) -> Any:
    """
    The TCP connection whose send buffer tells whether a write to
    C{transport} was left queued: the transport itself, the one below a
    PROXY-protocol wrapper, or the one below TLS over either (whose records
    go to the socket as they are made); L{None} when it cannot tell.  Where
    it can, a producer need only be registered once a write is left queued,
    instead of for every exchange.  Constant for a connection, so the HTTP
    side asks once.
    """
    below = _tcp_below(transport)
    return below if below is not None else _tls_over_tcp(transport)


def queued(transport: Any, socket: Any = None) -> bool:
    """
    Whether a transport with a L{socket_below} holds bytes the kernel has
    not taken.  C{socket}: its L{socket_below}, when the caller knows it.
    """
    tcp_connection = socket if socket is not None else socket_below(transport)
    if tcp_connection is None:
        return True
    if tcp_connection is not transport and getattr(transport, "_appSendBuffer", None):
        # TLS holding application bytes until it can write (renegotiation).
        return True
    return bool(tcp_connection._tempDataLen or tcp_connection.dataBuffer)


def set_no_delay(transport: Any) -> None:
    """Disable Nagle's algorithm where the transport is a TCP socket."""
    if type(transport) is HAProxyProtocolWrapper:
        transport = transport.transport
    if isinstance(transport, _TCP_TYPES):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


def write_now(transport: Any, data: bytes, connection: Any = None) -> None:
    """
    Write C{data}, sending it on the socket at once when nothing is queued.

    Twisted's C{write()} always queues and registers the socket for writing,
    then sends on the next loop turn: for a proxy answering small requests
    that is two extra epoll_ctl calls and a loop turn per message, measured as
    most of the gap to nginx (see docs/performance.md).  When the transport
    is a plain TCP connection with an empty buffer we send directly; whatever
    the kernel does not take goes through the normal write path, which keeps
    ordering, backpressure and error handling Twisted's own.  Behind a
    C{haproxy:} listener the socket is the one below the PROXY wrapper.
    C{connection}: that TCP connection, when the caller knows it already.
    """
    if connection is None:
        connection = transport if type(transport) in _TCP_TYPES else _tcp_below(transport)
    if (
        connection is not None
        and not connection._tempDataLen
        and not connection.dataBuffer
        and connection.connected
        and not connection._writeDisconnected
    ):
        try:
            sent = connection.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the ordinary write path meet the error and report it.
            transport.write(data)
            return
        if sent < len(data):
            transport.write(data[sent:])
        return
    transport.write(data)


__all__ = ["is_plain_tcp", "queued", "set_no_delay", "socket_below", "swap_protocol", "write_now"]
