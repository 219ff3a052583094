"""
L{ListenerCase}: a TLS listener factory on a memory reactor with exact,
wildcard and default certificates and one passthrough route, and the moves of
bytes between a L{MemoryClient} and the listener's protocol.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.table import LiveRouteTable, RouteTable
from edd_gateway.tls.listener import ClientHelloProtocol, TLSListenerFactory
from edd_gateway.tls.store import CertificateStore
from edd_gateway.tls.testing import CLIENT, HandoverTransport, MemoryClient, passthrough_route, quiet_logger, write_pair


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class CountingFactory(protocol.Factory):
    protocol = Echo
    starts = 0

    def startFactory(self) -> None:
        self.starts += 1


class ListenerCase(SynchronousTestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        self.exact = write_pair(os.path.join(root, "exact"), "a.cloud.test")
        self.wildcard = write_pair(os.path.join(root, "wildcard"), "*.cloud.test")
        self.default = write_pair(os.path.join(root, "default"), "default.test")
        self.root = root
        self.store = CertificateStore(default_name="default.test", log=quiet_logger())
        self.store.add_directory(root)
        self.routes = LiveRouteTable(RouteTable([passthrough_route("vm.cloud.test", connect_timeout=2.5)]))
        self.reactor = MemoryReactorClock()
        self.https = CountingFactory()
        self.factory = self.make_factory(self.store)

    def make_factory(self, store: CertificateStore, **options: Any) -> TLSListenerFactory:
        factory = TLSListenerFactory(self.routes, store, self.https, self.reactor, connect_timeout=4.0, **options)
        factory.doStart()
        self.addCleanup(factory.doStop)
        return factory

    def connect(self, factory: TLSListenerFactory | None = None) -> tuple[ClientHelloProtocol, HandoverTransport]:
        factory = factory or self.factory
        transport = HandoverTransport()
        hello_protocol = factory.buildProtocol(CLIENT)
        transport.protocol = hello_protocol
        hello_protocol.makeConnection(transport)
        return hello_protocol, transport

    def handshake(self, client: MemoryClient, transport: HandoverTransport, chunk: int = 0) -> None:
        """Move bytes both ways until neither side has more; chunk > 0 trickles the first flight."""
        outgoing = client.feed(b"")
        if chunk:
            for start in range(0, len(outgoing), chunk):
                transport.protocol.dataReceived(outgoing[start:start + chunk])
            outgoing = b""
        for _ in range(20):
            if outgoing:
                transport.protocol.dataReceived(outgoing)
            # The TLS transport sends what it wrote at the next loop turn.
            self.reactor.advance(0)
            incoming = transport.take()
            if not incoming and not outgoing:
                return
            outgoing = client.feed(incoming)

    def round_trip(self, client: MemoryClient, transport: HandoverTransport, data: bytes) -> bytes:
        client.received = b""
        transport.protocol.dataReceived(client.send(data))
        self.reactor.advance(0)
        client.feed(transport.take())
        return client.received
