"""
The containers' SSH host keys under each C{--ssh-host-key-policy}: the
directory observer that drops a pin when a container's run ends
(L{edd_gateway.ssh.pinning.RunWatch}), the logins in flight that a run's end
voids, the refusal of a key changed while a container runs, and the command
line option, on memory pins, directories and reactors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.auth import LoginRefused, fingerprint
from edd_gateway.ssh.factory import GatewaySSHFactory, SSHSettings
from edd_gateway.ssh.hostkey import public_text
from edd_gateway.ssh.pinning import HostKeyPolicy, RunWatch, parse_host_key_policy
from edd_gateway.ssh.pins import MemoryHostKeyPins
from edd_gateway.ssh.upstream import UpstreamConnector, UpstreamSettings
from edd_gateway.state.model import Container, ContainerDirectory, ContainerSnapshot, HostKeyPin

from edd_gateway.ssh.testing import container, key

OLD, NEW = key("container-old-run"), key("container-new-run")


class RecordingPins(MemoryHostKeyPins):
    """Memory pins that record every clear_pin, and whose writes can be held."""

    def __init__(self) -> None:
        super().__init__()
        self.cleared: list[str] = []
        self.reads = 0
        self.held_writes: list[Deferred[None]] | None = None

    def get_pin(self, container_id: str) -> Deferred[Any]:
        self.reads += 1
        return super().get_pin(container_id)

    def set_pin(self, container_id: str, host_key: str, container_created: str | None = None) -> Deferred[None]:
        if self.held_writes is None:
            return super().set_pin(container_id, host_key, container_created)
        # The write lands when the test fires it: after whatever ran meanwhile.
        landing: Deferred[None] = Deferred()
        landing.addCallback(lambda _: super(RecordingPins, self).set_pin(container_id, host_key, container_created))
        landing.addCallback(lambda _: None)
        self.held_writes.append(landing)
        return landing

    def clear_pin(self, container_id: str) -> Deferred[bool]:
        self.cleared.append(container_id)
        return super().clear_pin(container_id)


def snapshot(*containers: Container, ready: bool = True) -> ContainerSnapshot:
    return ContainerSnapshot({c.id: c for c in containers}, ready=ready)


def current(directory: ContainerDirectory, cid: str = "abc123") -> Container:
    found = directory.get(cid)
    assert found is not None
    return found


def warnings(events: Sequence[Any]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]


def many(count: int) -> dict[str, Container]:
    return {f"c{n:05d}": container(f"c{n:05d}") for n in range(count)}


class RunWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pins = RecordingPins()
        self.pins.pins["abc123"] = self.pinned("abc123")
        self.directory = ContainerDirectory(snapshot(container("abc123"), container("other1")))
        self.watch = RunWatch(self.directory, self.pins)

    def pinned(self, cid: str) -> Any:
        from edd_gateway.state.model import HostKeyPin

        return HostKeyPin(cid, public_text(OLD))

    def set_status(self, status: str, cid: str = "abc123") -> None:
        self.directory.replace(cid, replace(current(self.directory, cid), status=status))

    def test_registered_as_an_observer(self) -> None:
        self.assertIn(self.watch.observe, self.directory.observers)

    def test_the_first_snapshot_is_the_baseline(self) -> None:
        self.assertEqual(self.pins.cleared, [], "a gateway (re)start is no container restart")
        self.assertIn("abc123", self.pins.pins)

    def test_running_stopped_running_drops_the_pin(self) -> None:
        with capturedLogs() as events:
            self.set_status("stopped")
        self.assertEqual(self.pins.cleared, ["abc123"])
        self.assertNotIn("abc123", self.pins.pins)
        [line] = [formatEvent(e) for e in events]
        self.assertEqual(line, "ssh: container abc123 is stopped: its pinned SSH host key is dropped; its next "
                               "run is pinned afresh")
        with capturedLogs() as events:
            self.set_status("running")
        self.assertEqual(self.pins.cleared, ["abc123", "abc123"], "dropped again as the new run starts")
        self.assertEqual(events, [], "there was no pin left to drop: nothing said")
        self.set_status("stopped")
        self.pins.pins["abc123"] = HostKeyPin("abc123", "ssh-ed25519 AAAA written late")
        with capturedLogs() as events:
            self.set_status("running")
        self.assertNotIn("abc123", self.pins.pins)
        self.assertIn("runs again", formatEvent(events[0]))

    def test_every_status_but_running_ends_a_run(self) -> None:
        for status in ("pending", "initializing", "failed", "not_found", "stopped"):
            self.set_status("running")
            self.pins.cleared.clear()
            self.set_status(status)
            self.assertEqual(self.pins.cleared, ["abc123"], status)

    def test_changes_while_running_keep_the_pin(self) -> None:
        running = current(self.directory)
        self.directory.replace("abc123", replace(running, external_ip="10.0.0.9", ssh_enabled=False))
        self.directory.replace("abc123", replace(running, name="renamed"))
        self.set_status("stopped", "other1")
        self.assertEqual(self.pins.cleared, ["other1"])
        self.assertIn("abc123", self.pins.pins)

    def test_a_full_resync_of_new_objects_keeps_the_pins(self) -> None:
        self.directory.swap(snapshot(container("abc123"), container("other1")))
        self.assertEqual(self.pins.cleared, [])

    def test_stopped_to_stopped_is_no_new_run(self) -> None:
        self.set_status("stopped")
        self.set_status("failed")
        self.assertEqual(self.pins.cleared, ["abc123"])

    def test_disappearing_and_coming_back(self) -> None:
        self.directory.replace("abc123", None)
        self.assertEqual(self.pins.cleared, ["abc123"])
        self.directory.replace("abc123", container("abc123"))
        self.assertEqual(self.pins.cleared, ["abc123", "abc123"])

    def test_disappearing_while_stopped_then_running(self) -> None:
        self.set_status("stopped")
        self.directory.replace("abc123", None)
        self.assertEqual(self.pins.cleared, ["abc123"], "its run had already ended")
        self.directory.replace("abc123", container("abc123"))
        self.assertEqual(self.pins.cleared, ["abc123", "abc123"])

    def test_a_new_container_that_runs(self) -> None:
        self.directory.replace("new1", container("new1", status="pending"))
        self.assertEqual(self.pins.cleared, [])
        self.directory.replace("new1", container("new1"))
        self.assertEqual(self.pins.cleared, ["new1"])

    def test_snapshots_that_are_not_ready_are_skipped(self) -> None:
        self.directory.swap(snapshot(ready=False))
        self.assertEqual(self.pins.cleared, [])
        self.directory.swap(snapshot(container("abc123"), container("other1")))
        self.assertEqual(self.pins.cleared, [])

    def test_no_baseline_before_the_first_ready_snapshot(self) -> None:
        directory = ContainerDirectory()
        pins = RecordingPins()
        RunWatch(directory, pins)
        directory.swap(snapshot(container("abc123")))
        self.assertEqual(pins.cleared, [], "what runs when the containers are first loaded keeps its pin")
        directory.replace("abc123", container("abc123", status="stopped"))
        self.assertEqual(pins.cleared, ["abc123"])

    def test_one_change_among_many(self) -> None:
        containers = many(10_000)
        directory = ContainerDirectory(ContainerSnapshot(containers, ready=True))
        pins = RecordingPins()
        RunWatch(directory, pins)
        directory.replace("c04242", container("c04242", status="stopped"))
        directory.replace("c00007", None)
        directory.replace("c04242", container("c04242"))
        self.assertEqual(pins.cleared, ["c04242", "c00007", "c04242"])

    def test_a_store_that_fails_is_logged(self) -> None:
        self.pins.clear_pin = lambda cid: fail(OSError("database gone"))  # type: ignore[method-assign, assignment]
        with capturedLogs() as events:
            self.set_status("stopped")
        warning = formatEvent(events[-1])
        self.assertIn("cannot drop the pinned SSH host key of container abc123 (database gone)", warning)
        self.assertIn("python -m edd_gateway forget-host-key abc123", warning)

    def test_tickets_are_voided_when_the_run_ends(self) -> None:
        ticket, other = self.watch.ticket("abc123"), self.watch.ticket("other1")
        self.directory.replace("abc123", replace(current(self.directory), name="x"))
        self.assertTrue(ticket.current)
        self.set_status("stopped")
        self.assertFalse(ticket.current)
        self.assertTrue(other.current)
        self.watch.release(other)
        self.watch.release(ticket)
        self.assertEqual(self.watch._tickets, {})


class PolicyTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(parse_host_key_policy("pin-per-run"), HostKeyPolicy.PIN_PER_RUN)
        self.assertEqual(parse_host_key_policy(" PIN "), HostKeyPolicy.PIN)
        self.assertEqual(parse_host_key_policy("ignore"), HostKeyPolicy.IGNORE)
        with self.assertRaises(ValueError) as raised:
            parse_host_key_policy("tofu")
        self.assertEqual(str(raised.exception), "'tofu' is not one of pin-per-run, pin, ignore")

    def test_the_factory_watches_runs_only_for_pin_per_run(self) -> None:
        for policy, watching in ((HostKeyPolicy.PIN_PER_RUN, True), (HostKeyPolicy.PIN, False),
                                 (HostKeyPolicy.IGNORE, False)):
            directory = ContainerDirectory(snapshot(container()))
            factory = GatewaySSHFactory(directory, MemoryHostKeyPins(), [key("host")], key("client"),
                                        MemoryReactorClock(), SSHSettings(host_key_policy=policy))
            self.assertEqual(factory.runs is not None, watching, policy)
            self.assertIs(factory.connector.runs, factory.runs)
            self.assertEqual(len(directory.observers), 1 if watching else 0)
            self.assertIs(factory.connector.settings.host_key_policy, policy)


class LoginTests(SynchronousTestCase):
    """The upstream side of logins, with the directory and its RunWatch."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pins = RecordingPins()
        self.directory = ContainerDirectory(snapshot(container("abc123", external_ip="10.42.0.7")))

    def connector(self, policy: HostKeyPolicy = HostKeyPolicy.PIN_PER_RUN, **settings: Any) -> UpstreamConnector:
        runs = RunWatch(self.directory, self.pins) if policy is HostKeyPolicy.PIN_PER_RUN else None
        return UpstreamConnector(self.reactor, key("gateway-client"), self.pins,
                                 UpstreamSettings(port=2200, host_key_policy=policy, **settings), runs=runs)

    def login(self, connector: UpstreamConnector) -> tuple[Deferred[Any], Any]:
        """A login to abc123 as the directory has it now, and its UpstreamTransport."""
        result = connector.connect(current(self.directory), "root")
        wrapping: Any = self.reactor.tcpClients[-1][2].buildProtocol(IPv4Address("TCP", "10.42.0.7", 2200))  # type: ignore[arg-type]
        wrapping.makeConnection(StringTransport())
        return result, wrapping._wrappedProtocol

    def present(self, ssh: Any, host_key: Any) -> Deferred[None]:
        return ssh.verifyHostKey(host_key.public().blob(), b"md5")

    def refusal(self, result: Deferred[Any], ssh: Any) -> str:
        ssh.connectionLost(Failure(ConnectionDone()))
        return str(self.failureResultOf(result, LoginRefused).value)

    def restart(self) -> None:
        running = current(self.directory)
        self.directory.replace("abc123", replace(running, status="stopped"))
        self.directory.replace("abc123", replace(running, status="running"))

    def test_a_restarted_container_is_pinned_afresh(self) -> None:
        connector = self.connector()
        _, ssh = self.login(connector)
        self.successResultOf(self.present(ssh, OLD))
        self.restart()
        _, ssh = self.login(connector)
        self.successResultOf(self.present(ssh, NEW))
        self.assertEqual(self.pins.pins["abc123"].host_key, public_text(NEW))

    def test_a_key_changed_while_running_is_refused_naming_the_command(self) -> None:
        connector = self.connector(forget_command="python -m edd_gateway forget-host-key {container} "
                                                  "--state-file pins.json")
        _, ssh = self.login(connector)
        self.successResultOf(self.present(ssh, OLD))
        result, ssh = self.login(connector)
        with capturedLogs() as events:
            self.failureResultOf(self.present(ssh, NEW), LoginRefused)
        message = self.refusal(result, ssh)
        self.assertEqual(message, (
            f"container abc123 presented a different SSH host key ({fingerprint(NEW.public().blob())}) than the "
            f"one pinned in its current run ({fingerprint(OLD.public().blob())}); refusing. If its key was "
            "changed on purpose, an operator clears the pin with: python -m edd_gateway forget-host-key abc123 "
            "--state-file pins.json"))
        self.assertEqual(warnings(events), [f"ssh: {message}"])
        self.assertEqual(self.pins.pins["abc123"].host_key, public_text(OLD))

    def test_a_run_that_ends_before_the_pin_is_read(self) -> None:
        self.pins.get_pin = lambda cid: self.reading  # type: ignore[method-assign, assignment]
        self.reading: Deferred[Any] = Deferred()
        result, ssh = self.login(self.connector())
        checked = self.present(ssh, OLD)
        self.restart()
        self.reading.callback(None)
        self.failureResultOf(checked, LoginRefused)
        self.assertEqual(self.refusal(result, ssh),
                         "container abc123 stopped or restarted during the login; try again")
        self.assertNotIn("abc123", self.pins.pins, "the old run's key is never pinned")

    def test_a_run_that_ends_while_the_pin_is_written(self) -> None:
        self.pins.held_writes = []
        result, ssh = self.login(self.connector())
        checked = self.present(ssh, OLD)
        self.restart()
        self.pins.cleared.clear()
        # The write lands after the drops (another pooled connection).
        self.pins.held_writes[0].callback(None)
        self.assertEqual(self.pins.cleared, ["abc123"], "dropped again by the login itself")
        self.assertNotIn("abc123", self.pins.pins)
        self.failureResultOf(checked, LoginRefused)
        self.assertIn("restarted during the login", self.refusal(result, ssh))

    def test_a_login_that_ends_while_the_pin_is_written(self) -> None:
        self.pins.held_writes = []
        result, ssh = self.login(self.connector())
        checked = self.present(ssh, OLD)
        ssh.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, LoginRefused)
        self.restart()
        self.pins.held_writes[0].callback(None)
        self.assertNotIn("abc123", self.pins.pins, "the ticket is held until the check is over")
        self.failureResultOf(checked, LoginRefused)

    def test_tickets_are_released(self) -> None:
        connector = self.connector()
        result, ssh = self.login(connector)
        self.successResultOf(self.present(ssh, OLD))
        ssh.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, LoginRefused)
        refused = connector.connect(container("abc123", external_ip=None), "root")
        self.failureResultOf(refused, LoginRefused)
        self.assertEqual(connector.runs._tickets, {})  # type: ignore[union-attr]

    def test_pin_keeps_the_first_key_for_good(self) -> None:
        connector = self.connector(HostKeyPolicy.PIN)
        _, ssh = self.login(connector)
        self.successResultOf(self.present(ssh, OLD))
        self.restart()
        self.assertEqual(self.pins.cleared, [])
        result, ssh = self.login(connector)
        self.failureResultOf(self.present(ssh, NEW), LoginRefused)
        message = self.refusal(result, ssh)
        self.assertIn("than the one pinned at its first login", message)
        self.assertIn("python -m edd_gateway forget-host-key abc123", message)

    def test_ignore_checks_nothing(self) -> None:
        connector = self.connector(HostKeyPolicy.IGNORE)
        for host_key in (OLD, NEW):
            _, ssh = self.login(connector)
            self.successResultOf(self.present(ssh, host_key))
        self.assertEqual((self.pins.pins, self.pins.reads), ({}, 0))


class OptionTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        from edd_gateway.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_default_is_pin_per_run(self) -> None:
        options = self.parse()
        self.assertIs(options["ssh-host-key-policy"], HostKeyPolicy.PIN_PER_RUN)
        self.assertIs(options.ssh_settings().host_key_policy, HostKeyPolicy.PIN_PER_RUN)

    def test_values(self) -> None:
        self.assertIs(self.parse("--ssh-host-key-policy", "pin").ssh_settings().host_key_policy, HostKeyPolicy.PIN)
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--ssh-host-key-policy", "trust")
        self.assertEqual(str(raised.exception),
                         "--ssh-host-key-policy: 'trust' is not one of pin-per-run, pin, ignore")

    def test_the_command_names_where_the_pins_are(self) -> None:
        self.assertEqual(self.parse("--state-file", "/var/lib/gw/pins file.json").ssh_settings().forget_command,
                         "python -m edd_gateway forget-host-key {container} --state-file '/var/lib/gw/pins file.json'")
        self.assertEqual(self.parse("--database", "host=db dbname=gw password=secret").ssh_settings().forget_command,
                         "python -m edd_gateway forget-host-key {container} --database DSN")

    def test_ignore_is_warned_at_start(self) -> None:
        import os

        from twisted.internet.testing import MemoryReactorClock as Reactor

        from edd_gateway.assembly import build_ssh, build_state
        from edd_gateway.routes.table import LiveRouteTable, RouteTable
        from twisted.application.service import MultiService

        work = self.mktemp()
        options = self.parse("--ssh-host-key-policy", "ignore", "--ssh-host-key", os.path.join(work, "host"),
                             "--ssh-client-key", os.path.join(work, "client"),
                             "--state-file", os.path.join(work, "pins.json"))
        reactor = Reactor()
        state = build_state(options, reactor, LiveRouteTable(RouteTable([])), MultiService())
        with capturedLogs() as events:
            factory = build_ssh(options, state, reactor)
        self.assertIsNone(factory.runs)
        [warning] = warnings(events)
        self.assertIn("--ssh-host-key-policy ignore: containers' SSH host keys are NOT checked", warning)
