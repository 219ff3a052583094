"""
Which sites a terminated TLS connection may ask for: the HTTP side's 421
Misdirected Request check.

A connection's certificate was chosen by its SNI, so a request on it for a
host that certificate does not cover (and that is not the SNI itself, which
got the default certificate) reached this gateway through a connection set
up for another site, typically one a client reused for a name that resolves
to the same address.  Answering it could hand one tenant's visitor another
tenant's backend; RFC 9110 section 15.5.20 says 421 instead, so the client
opens a connection for the right name.  A host whose TLS passes through
never gets its requests from a terminated connection either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edd_gateway.routes.table import LiveRouteTable
from edd_gateway.tls.context import chosen_certificate
from edd_gateway.tls.terminated import TerminatedTLS

__all__ = ["MisdirectedCheck", "misdirected_check"]

#: C{(tls_transport, host) -> bool}: True when the request must get 421.
MisdirectedCheck = Callable[[Any, str], bool]


def misdirected_check(routes: LiveRouteTable) -> MisdirectedCheck:
    """
    The check for requests on connections terminated by this gateway.

    @param routes: the live routes, whose passthrough hosts are never
        served from a terminated connection.
    """

    def misdirected(transport: Any, host: str) -> bool:
        if routes.current.tls_passthrough(host) is not None:
            return True
        if isinstance(transport, TerminatedTLS):
            # Knows its SNI and remembers its last answer.
            return transport.misdirected(host)
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is None:
            return False
        certificate = chosen_certificate(get_handle())
        return certificate is None or not certificate.covers(host)

    return misdirected
