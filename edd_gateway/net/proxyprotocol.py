"""
The PROXY protocol (HAProxy's, versions 1 and 2) on both sides of the
gateway: the header it sends first on a connection it opens for a client
(TLS passthrough, a container's sshd), so that the backend learns the
client's address, and telling whether a connection accepted on a
C{haproxy:} listener has received its own header yet.

Twisted ships the receiving half (C{twisted.protocols.haproxy}: a parser per
version and the wrapper the C{haproxy:} endpoint prefix puts around a
listener's factory) but no encoder, so the headers are built here by hand
from the specification (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt)
and tested against Twisted's parsers.  The encoders are pure functions of
(version, source, destination).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address as IPv4, IPv6Address as IPv6, ip_address
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

# A private module: twisted.protocols.haproxy exports only proxyEndpoint, and
# the sniffer needs to know whether the wrapper has read a header.  Stable
# since the package exists (2016); tests/test_proxyprotocol.py would notice.
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

__all__ = [
    "V2_SIGNATURE",
    "VERSIONS",
    "awaiting_header",
    "header",
    "parse_version",
    "v1_header",
    "v2_header",
]

#: The versions a header can be sent in, as the routes file and the command
#: line name them.
VERSIONS = ("v1", "v2")

#: The twelve bytes every version 2 header starts with (spec section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# Version 2 in the high nibble; the command in the low one.
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
# Address family in the high nibble, transport in the low one: STREAM (TCP).
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_UNSPEC = 0x00

_Endpoint = tuple[IPv4 | IPv6, int]


def parse_version(text: str) -> str | None:
    """
    C{"v1"} or C{"v2"}, or L{None} for C{"none"}: the value of the routes
    file's C{proxy_protocol} key and of the C{--*-proxy-protocol} options.

    @raise ValueError: for anything else.
    """
    value = text.strip().lower()
    if value == "none":
        return None
    if value not in VERSIONS:
        raise ValueError(f"must be none, v1 or v2, not {text!r}")
    return value


def header(version: str, source: IAddress | None, destination: IAddress | None) -> bytes:
    """The header of C{version} (C{"v1"} or C{"v2"}) for a connection from C{source} to C{destination}."""
    if version == "v1":
        return v1_header(source, destination)
    if version == "v2":
        return v2_header(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}")


def v1_header(source: IAddress | None, destination: IAddress | None) -> bytes:
    """
    The human-readable header: C{PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n}
    (C{TCP6} for IPv6), or C{PROXY UNKNOWN\\r\\n} when either address is not
    a TCP/IP one (the receiver then uses the connection's own addresses).
    That short form is the specification's and what HAProxy sends, but
    Twisted's own parser (26.x) refuses it, wanting a space after UNKNOWN:
    a Twisted receiver needs v2, whose LOCAL form it reads.
    """
    endpoints = _endpoints(source, destination)
    if endpoints is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = endpoints
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")


def v2_header(source: IAddress | None, destination: IAddress | None) -> bytes:
    """
    The binary header: the signature, version 2 with the PROXY command,
    TCP over IPv4 (12 address bytes) or IPv6 (36), then source address,
    destination address, source port and destination port in network
    order.  When either address is not a TCP/IP one, the LOCAL command with
    no address block: the receiver then uses the connection's own addresses.
    """
    endpoints = _endpoints(source, destination)
    if endpoints is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _V2_UNSPEC, 0)
    (src, sport), (dst, dport) = endpoints
    block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(block)) + block


def awaiting_header(transport: Any) -> bool:
    """
    Whether C{transport} is the PROXY-protocol wrapper of a C{haproxy:}
    listener that has not yet read a valid header: nothing it carries has
    reached the protocol above it, and C{getPeer()} still names the balancer
    (or whoever connected), not the client.
    """
    return isinstance(transport, HAProxyProtocolWrapper) and transport._proxyInfo is None


def _endpoints(source: IAddress | None, destination: IAddress | None) -> tuple[_Endpoint, _Endpoint] | None:
    src, dst = _endpoint(source), _endpoint(destination)
    if src is None or dst is None:
        return None
    if src[0].version != dst[0].version:
        # Both must be of one family; as HAProxy does, a mixed pair travels
        # as IPv6 with the IPv4 address mapped (::ffff:a.b.c.d).
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    return src, dst


def _endpoint(address: IAddress | None) -> _Endpoint | None:
    if not isinstance(address, (IPv4Address, IPv6Address)) or address.type != "TCP":
        return None
    try:
        # A link-local peer's host may carry its zone (fe80::1%eth0), which
        # neither version can say.
        ip = ip_address(address.host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, IPv6) and ip.ipv4_mapped is not None:
        # An IPv4 client of a dual-stack listener: say what it really is.
        ip = ip.ipv4_mapped
    return ip, address.port


def _text(ip: IPv4 | IPv6) -> str:
    # Mapped addresses as inet_ntop (and HAProxy) writes them, whatever
    # Python's version prefers (::ffff:cb00:7107 before 3.13).
    if isinstance(ip, IPv6) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _as_ipv6(endpoint: _Endpoint) -> _Endpoint:
    ip, port = endpoint
    if isinstance(ip, IPv4):
        return IPv6("::ffff:" + str(ip)), port
    return endpoint
