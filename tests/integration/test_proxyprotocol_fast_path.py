"""
The direct socket writes of L{edd_gateway.net.transport} through Twisted's
PROXY wrapper, on a real socket pair.  The PROXY protocol's encoders,
routes and handlers in memory are C{tests/unit/test_proxyprotocol.py}'s.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.tcp import Server
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.net import transport as _transport


CLIENT4 = IPv4Address("TCP", "203.0.113.7", 51234)


class FastPathTests(SynchronousTestCase):
    """The direct socket writes see through the PROXY wrapper, which passes writes on unchanged."""

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        reactor = MemoryReactorClock()
        self.tcp = Server(self.ours, protocol.Protocol(), ("203.0.113.7", 51234),
                          SimpleNamespace(_realPortNumber=8080), 1, reactor)
        self.wrapper = HAProxyWrappingFactory(protocol.Factory.forProtocol(protocol.Protocol)).buildProtocol(CLIENT4)
        self.tcp.protocol = self.wrapper
        self.wrapper.makeConnection(self.tcp)

    def test_write_now_sends_on_the_socket_below(self) -> None:
        self.assertTrue(_transport.is_plain_tcp(self.wrapper))
        self.assertFalse(_transport.queued(self.wrapper))
        _transport.write_now(self.wrapper, b"at once")
        self.assertEqual(self.theirs.recv(100), b"at once")
        self.assertEqual(self.tcp.dataBuffer, b"")

    def test_no_delay_reaches_the_socket(self) -> None:
        calls: list[bool] = []
        self.tcp.setTcpNoDelay = calls.append  # type: ignore[method-assign]
        _transport.set_no_delay(self.wrapper)
        self.assertEqual(calls, [True])

    def test_other_wrappers_are_not_seen_through(self) -> None:
        self.assertFalse(_transport.is_plain_tcp(StringTransport()))
        other = protocol.Factory.forProtocol(protocol.Protocol)
        from twisted.protocols.policies import WrappingFactory

        plain_wrapper = WrappingFactory(other).buildProtocol(CLIENT4)
        plain_wrapper.makeConnection(StringTransport())
        self.assertFalse(_transport.is_plain_tcp(plain_wrapper))
