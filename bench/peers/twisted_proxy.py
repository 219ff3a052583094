"""
The twisted.web.proxy peer: Twisted's own C{ReverseProxyResource} in front of
the backend, on Twisted's default reactor, with the per-request access log
switched off so that it does no more work than the other peers.

It opens one HTTP/1.0 backend connection per request (no pool), which is
what the gateway is measured against.

Usage: python twisted_proxy.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor
from twisted.web import proxy, server


class _QuietSite(server.Site):
    def log(self, request: object) -> None:
        """No access log: the other peers keep none either."""


def main(listen_port: int, backend_port: int) -> None:
    site = _QuietSite(proxy.ReverseProxyResource("127.0.0.1", backend_port, b""))
    endpoint = endpoints.TCP4ServerEndpoint(reactor, listen_port, backlog=1024, interface="127.0.0.1")
    endpoint.listen(site)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
