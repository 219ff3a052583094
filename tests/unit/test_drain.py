"""
The graceful drain (L{edd_gateway.front.drain}) on a memory clock with fake
transports: the order of the steps, the grace period, and what is closed
at its end.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.front.drain import DRAIN_POLL_INTERVAL, FINAL_CLOSE_TIME, ConnectionTracker, GatewayService
from edd_gateway.front.connections import innermost_protocol, is_open
from edd_gateway.front.drain import TrackedFactory


class FakeTransport:
    def __init__(self, protocol: Any = None) -> None:
        self.protocol = protocol
        self.disconnected = False
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnected = True


class HTTPish:
    drained = False

    def drain(self) -> None:
        self.drained = True


class Wrapper:
    """A protocol wrapping another (TLS, PROXY protocol)."""

    def __init__(self, wrapped: Any) -> None:
        self.wrappedProtocol = wrapped


class RecordingSSH(SSHServerTransport):
    def __init__(self) -> None:
        self.goodbyes: list[bytes] = []

    def sendDisconnect(self, reason: int, description: bytes) -> None:
        self.goodbyes.append(description)


class Recorder(Service):
    def __init__(self, name: str, events: list[str], result: Deferred[None] | None = None) -> None:
        self.setName(name)
        self.events = events
        self.result = result

    def stopService(self) -> Any:
        self.events.append(f"stop {self.name}")
        super().stopService()
        return self.result


class HelperTests(SynchronousTestCase):
    def test_innermost_protocol_looks_through_wrappers(self) -> None:
        inner = HTTPish()
        self.assertIs(innermost_protocol(FakeTransport(Wrapper(Wrapper(inner)))), inner)
        self.assertIs(innermost_protocol(FakeTransport(inner)), inner)

    def test_is_open_looks_below_wrapping_transports(self) -> None:
        below = FakeTransport()
        wrapping = type("Wrapping", (), {"transport": below})()
        self.assertTrue(is_open(wrapping))
        below.disconnected = True
        self.assertFalse(is_open(wrapping))
        self.assertFalse(is_open(None))

    def test_tracker_forgets_collected_transports(self) -> None:
        tracker = ConnectionTracker("tcp:80")
        kept, dropped = FakeTransport(), FakeTransport()
        tracker.add(kept)
        tracker.add(dropped)
        del dropped
        gc.collect()
        self.assertEqual((tracker.accepted, tracker.open_transports()), (2, [kept]))
        kept.disconnected = True
        self.assertEqual(len(tracker), 0)

    def test_tracked_factory_records_protocols(self) -> None:
        class Built:
            transport: Any = None

        built = Built()
        wrapped = type("F", (), {"buildProtocol": lambda self, addr: built, "doStart": lambda self: None,
                                 "doStop": lambda self: None})()
        tracker = ConnectionTracker("tcp:2222")
        self.assertIs(TrackedFactory(wrapped, tracker).buildProtocol(None), built)
        self.assertEqual(len(tracker), 0, "not connected yet")
        built.transport = FakeTransport()
        self.assertEqual(tracker.open_transports(), [built.transport])


class GatewayServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.events: list[str] = []
        self.gateway = GatewayService(self.clock, grace=10.0)
        Recorder("pool", self.events).setServiceParent(self.gateway)
        self.tracker = ConnectionTracker("tcp:80")
        self.gateway.add_listener(Recorder("listener", self.events), self.tracker)
        self.factory = type("Factory", (), {"draining": False})()
        self.gateway.http_factories = [self.factory]
        self.gateway.startService()

    def test_listeners_stop_first_then_connections_finish_then_the_rest(self) -> None:
        busy = HTTPish()
        transport = FakeTransport(Wrapper(busy))
        self.tracker.add(transport)
        stopped = self.gateway.stopService()
        self.assertTrue(self.gateway.draining)
        self.assertTrue(self.factory.draining)
        self.assertEqual(self.events, ["stop listener"])
        self.assertTrue(busy.drained, "HTTP connections are asked to close after their response")
        self.clock.advance(5)
        self.assertNoResult(stopped)
        transport.disconnected = True
        self.clock.advance(DRAIN_POLL_INTERVAL)
        self.successResultOf(stopped)
        self.assertEqual(self.events, ["stop listener", "stop pool"])
        self.assertFalse(transport.aborted)

    def test_what_is_left_at_the_end_of_the_grace_period_is_closed(self) -> None:
        tunnel = FakeTransport(object())
        ssh = RecordingSSH()
        session = FakeTransport(ssh)
        self.tracker.add(tunnel)
        self.tracker.add(session)
        stopped = self.gateway.stopService()
        self.clock.advance(9.9)
        self.assertFalse(tunnel.aborted)
        self.clock.pump([DRAIN_POLL_INTERVAL] * 2)
        self.assertTrue(tunnel.aborted)
        self.assertEqual(ssh.goodbyes, [b"the gateway is restarting; connect again"])
        self.assertNoResult(stopped)
        self.clock.pump([DRAIN_POLL_INTERVAL] * int(FINAL_CLOSE_TIME / DRAIN_POLL_INTERVAL + 2))
        self.assertTrue(session.aborted, "a client that ignores the goodbye is cut off")
        self.successResultOf(stopped)
        self.assertEqual(self.events, ["stop listener", "stop pool"])

    def test_no_connections_stops_at_once(self) -> None:
        self.successResultOf(self.gateway.stopService())
        self.assertEqual(self.events, ["stop listener", "stop pool"])
