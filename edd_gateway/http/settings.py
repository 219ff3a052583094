"""
The proxy's limits and timeouts, in one immutable value built by the tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """
    Limits and timeouts of the HTTP side; every field has an operator option.

    Sizes are bytes, times are seconds.  C{max_body_size} 0 means unlimited:
    the cloud's storage service takes uploads of any size.
    C{websocket_idle_timeout} bounds the silence of a WebSocket (upgrade)
    tunnel and of a streamed response (SSE, a slow download); raw TCP
    tunnels (TLS passthrough) have their own (C{--tcp-idle-timeout}).
    """

    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body_size: int = 0
    max_pipelined: int = 16
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    websocket_idle_timeout: float = 3600.0
    pool_max_idle: int = 64
    pool_max_per_backend: int = 512
    pool_idle_timeout: float = 60.0
    #: Request bodies up to this size are read whole before a backend
    #: connection is taken (HAProxy's http-buffer-request, nginx's body
    #: buffer): a slow client then holds none.  0 streams every body.
    body_buffer_size: int = 65536
    #: Seconds a request body may go without a byte before it gets 408.
    body_timeout: float = 30.0
    #: Backend connections one client address may hold, per backend, while
    #: its (larger) request bodies are still arriving; 0 is no cap.
    body_streams_per_client: int = 8
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = field(default=())
    #: Pass request field names with an underscore on (dropped otherwise:
    #: CGI/WSGI backends read C{_} as C{-}; see headers.analyse_request).
    allow_underscore_headers: bool = False

    def is_trusted(self, address: str) -> bool:
        """Whether a peer at C{address} may set X-Forwarded-* for its clients."""
        if not self.trusted_proxies:
            return False
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self.trusted_proxies)


def parse_networks(values: list[str]) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parse C{--trusted-proxy} values (addresses or CIDR blocks)."""
    return tuple(ip_network(value, strict=False) for value in values)
