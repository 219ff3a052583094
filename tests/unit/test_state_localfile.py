"""
Tests for L{edd_gateway.state.localfile}: the containers file's format and
its file:line errors, reloading on change with the last good snapshot kept,
and the JSON pin store.
"""

from __future__ import annotations

import json
import os
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.state.localfile import (
    ContainersFileError,
    LocalContainersSource,
    LocalPinStore,
    PinStoreError,
    load_containers_file,
    load_containers_text,
)
from edd_gateway.state.model import Container, ContainerDirectory, HostKeyPin, IngressRule

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRWnd03oL7qVUScEq+4xbgWp5e4Apuox818FnnDghrf dev@laptop"

EXAMPLE = f"""\
containers:
  - id: web1
    user_id: u1
    name: my web
    status: running
    external_ip: 127.0.1.5
    ssh_enabled: true
    https_enabled: false
    ingress:
      - port: 80
        target_port: 8080
      - {{port: 8000}}
    ssh_keys:
      - {KEY}
  - id: "0123"
    status: stopped
"""


def problems(text: str) -> list[str]:
    try:
        load_containers_text(textwrap.dedent(text), "containers.yaml")
    except ContainersFileError as error:
        return [str(problem) for problem in error.errors]
    raise AssertionError("the file was accepted")


class FormatTests(SynchronousTestCase):
    def test_example(self) -> None:
        snapshot = load_containers_text(EXAMPLE, "containers.yaml")
        self.assertTrue(snapshot.ready)
        self.assertEqual(snapshot.get("web1"), Container(
            id="web1", user_id="u1", status="running", external_ip="127.0.1.5", name="my web",
            ssh_enabled=True, https_enabled=False,
            ingress={80: IngressRule(80, 8080), 8000: IngressRule(8000, 80)}, ssh_keys=(KEY,)))
        # "0123" stays a string, and the defaults apply.
        other = snapshot.get("0123")
        self.assertEqual((other.status, other.external_ip, other.ingress, other.ssh_keys), ("stopped", None, {}, ()))

    def test_status_defaults_to_running(self) -> None:
        snapshot = load_containers_text("containers:\n  - id: a\n", "c.yaml")
        self.assertTrue(snapshot.get("a").running)

    def test_empty_list(self) -> None:
        self.assertEqual(dict(load_containers_text("containers:\n", "c.yaml").containers), {})
        self.assertEqual(dict(load_containers_text("containers: []\n", "c.yaml").containers), {})

    def test_errors_carry_file_and_line(self) -> None:
        found = problems("""\
            containers:
              - id: ok
              - id: Bad_Id
              - id: x
                ingress:
                  - port: 70000
                  - port: 80
                  - port: 80
              - id: ok
              - id: y
                ssh_keys: [not a key]
                external_ip: "not an address!"
                colour: blue
              - user_id: nobody
            """)
        self.assertEqual(found, [
            "containers.yaml:3: id 'Bad_Id' must be a DNS label: lower-case letters, digits and '-', "
            "at most 63 characters (it names <id>.<container-domain>)",
            "containers.yaml:6: port must be a number from 1 to 65535, got '70000'",
            "containers.yaml:8: ingress port 80 is listed twice",
            "containers.yaml:9: container 'ok' is listed twice (first on line 2)",
            "containers.yaml:11: not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]'): "
            "cannot guess the type of b'not a key'",
            "containers.yaml:12: external_ip 'not an address!' is not an IP address or DNS name",
            "containers.yaml:13: unknown container key 'colour' (allowed: id, user_id, name, status, external_ip, "
            "ssh_enabled, https_enabled, ingress, ssh_keys)",
            "containers.yaml:14: container is missing id",
        ])

    def test_shape_errors(self) -> None:
        self.assertEqual(problems(""), ["containers.yaml:1: the file is empty: expected a mapping with a "
                                        "'containers' list"])
        self.assertEqual(problems("- a\n"), ["containers.yaml:1: expected a mapping with a 'containers' list, "
                                             "got a list"])
        self.assertEqual(problems("containers: {a: 1}\n"), ["containers.yaml:1: 'containers' must be a list, "
                                                            "got a mapping"])
        self.assertEqual(problems("containers:\n  - id: a\n    ssh_enabled: maybe\n"),
                         ["containers.yaml:3: ssh_enabled must be true or false, got 'maybe'"])
        (syntax,) = problems("containers: [\n")
        self.assertTrue(syntax.startswith("containers.yaml:2: YAML syntax error: "), syntax)

    def test_private_key_refused(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        private = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        text = "containers:\n  - id: a\n    ssh_keys:\n      - |\n" + textwrap.indent(private.decode(), " " * 8)
        self.assertEqual(problems(text), ["containers.yaml:4: this is a private key: list public keys only"])

    def test_unreadable_file(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ContainersFileError) as caught:
            load_containers_file(path)
        self.assertIn(f"{path}:0: cannot read", str(caught.exception))

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=200))
    def test_any_text_is_accepted_or_refused_with_lines(self, text: str) -> None:
        try:
            load_containers_text(text, "fuzz.yaml")
        except ContainersFileError as error:
            self.assertTrue(error.errors)
            self.assertTrue(all(str(problem).startswith("fuzz.yaml:") for problem in error.errors))


class SourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(EXAMPLE)
        self.clock = Clock()
        self.directory = ContainerDirectory()
        self.source = LocalContainersSource(self.path, self.directory, self.clock, interval=1.0)
        self.source.startService()
        self.addCleanup(self.source.stopService)

    def write(self, text: str) -> None:
        with open(self.path, "w") as file:
            file.write(text)
        # Coarse timestamps: make each version look new to the watcher.
        stat = os.stat(self.path)
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    def test_loaded_at_start(self) -> None:
        self.assertTrue(self.directory.current.ready)
        self.assertEqual(sorted(self.directory.current.containers), ["0123", "web1"])

    def test_reloaded_on_change(self) -> None:
        self.write("containers:\n  - id: fresh\n")
        self.clock.advance(1)
        self.assertEqual(sorted(self.directory.current.containers), ["fresh"])

    def test_bad_version_keeps_last_good(self) -> None:
        self.write("containers:\n  - id: BAD\n")
        self.clock.advance(1)
        self.assertEqual(sorted(self.directory.current.containers), ["0123", "web1"])
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])

    def test_bad_at_start_is_not_ready(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("containers: 3\n")
        directory = ContainerDirectory()
        source = LocalContainersSource(path, directory, self.clock)
        source.startService()
        self.addCleanup(source.stopService)
        self.assertFalse(directory.current.ready)

    def test_pins_of_containers_that_left_the_file_go(self) -> None:
        self.successResultOf(self.source.set_pin("web1", KEY))
        self.successResultOf(self.source.set_pin("0123", KEY))
        self.write("containers:\n  - id: web1\n")
        self.clock.advance(1)
        self.assertIsNotNone(self.successResultOf(self.source.get_pin("web1")))
        self.assertIsNone(self.successResultOf(self.source.get_pin("0123")))

    def test_pins_through_the_source(self) -> None:
        self.assertIsNone(self.successResultOf(self.source.get_pin("web1")))
        self.successResultOf(self.source.set_pin("web1", KEY, "2026-01-01T00:00:00Z"))
        self.assertEqual(self.successResultOf(self.source.get_pin("web1")),
                         HostKeyPin("web1", KEY, "2026-01-01T00:00:00Z"))
        self.successResultOf(self.source.clear_pin("web1"))
        self.assertIsNone(self.successResultOf(self.source.get_pin("web1")))


class PinStoreTests(SynchronousTestCase):
    def test_persisted_across_instances(self) -> None:
        path = self.mktemp()
        store = LocalPinStore(path)
        self.successResultOf(store.set_pin("a", KEY, None))
        self.successResultOf(store.set_pin("b", KEY, "t1"))
        self.successResultOf(store.clear_pin("a"))
        again = LocalPinStore(path)
        self.assertIsNone(self.successResultOf(again.get_pin("a")))
        self.assertEqual(self.successResultOf(again.get_pin("b")), HostKeyPin("b", KEY, "t1"))
        with open(path) as file:
            self.assertEqual(json.load(file), {"b": {"host_key": KEY, "container_created": "t1"}})

    def test_corrupt_file_fails_closed(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("{not json")
        store = LocalPinStore(path)
        self.failureResultOf(store.get_pin("a"), PinStoreError)
        self.failureResultOf(store.set_pin("a", KEY), PinStoreError)
        with open(path) as file:
            self.assertEqual(file.read(), "{not json", "a corrupt file is never overwritten")

    def test_prune(self) -> None:
        path = self.mktemp()
        store = LocalPinStore(path)
        for name in ("a", "b", "c"):
            self.successResultOf(store.set_pin(name, KEY))
        self.assertEqual(self.successResultOf(store.prune({"b"})), 2)
        self.assertEqual(self.successResultOf(store.prune({"b"})), 0)
        with open(path) as file:
            self.assertEqual(sorted(json.load(file)), ["b"])

    def test_memory_only(self) -> None:
        store = LocalPinStore()
        self.successResultOf(store.set_pin("a", KEY))
        self.assertEqual(self.successResultOf(store.get_pin("a")), HostKeyPin("a", KEY, None))


class PinStoreSharedFileTests(SynchronousTestCase):
    """The file is shared with the operator command: nothing read is kept once the file changed."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.gateway = LocalPinStore(self.path)
        self.successResultOf(self.gateway.set_pin("a", KEY))
        self.successResultOf(self.gateway.set_pin("b", KEY))

    def test_a_pin_forgotten_elsewhere_is_forgotten_at_the_next_read(self) -> None:
        self.assertIsNotNone(self.successResultOf(self.gateway.get_pin("a")))
        self.assertEqual(LocalPinStore(self.path).forget("a"), HostKeyPin("a", KEY, None))
        self.assertIsNone(self.successResultOf(self.gateway.get_pin("a")))

    def test_a_write_keeps_what_changed_elsewhere(self) -> None:
        self.successResultOf(self.gateway.get_pin("a"))
        LocalPinStore(self.path).forget("a")
        self.successResultOf(self.gateway.set_pin("c", KEY))
        with open(self.path) as file:
            self.assertEqual(sorted(json.load(file)), ["b", "c"])

    def test_a_pin_written_elsewhere_is_read(self) -> None:
        self.successResultOf(LocalPinStore(self.path).set_pin("d", KEY, "t"))
        self.assertEqual(self.successResultOf(self.gateway.get_pin("d")), HostKeyPin("d", KEY, "t"))

    def test_forget_what_is_not_pinned(self) -> None:
        with open(self.path, "rb") as file:
            before = file.read()
        self.assertIsNone(self.gateway.forget("zzz"))
        self.successResultOf(self.gateway.clear_pin("zzz"))
        with open(self.path, "rb") as file:
            self.assertEqual(file.read(), before)

    def test_no_file_is_made_to_forget_nothing(self) -> None:
        missing = os.path.join(self.mktemp(), "pins.json")
        self.assertIsNone(LocalPinStore(missing).forget("a"))
        self.successResultOf(LocalPinStore(missing).clear_pin("a"))
        self.assertFalse(os.path.exists(os.path.dirname(missing)))

    def test_no_temporary_files_left(self) -> None:
        self.gateway.forget("a")
        directory = os.path.dirname(os.path.abspath(self.path))
        name = os.path.basename(self.path)
        self.assertEqual(sorted(n for n in os.listdir(directory) if n.startswith((name, "." + name))),
                         [name, name + ".lock"])

    def test_not_a_regular_file(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        store = LocalPinStore(directory)
        self.failureResultOf(store.get_pin("a"), PinStoreError)
        with self.assertRaises(PinStoreError):
            store.forget("a")
        self.assertFalse(os.path.exists(directory + ".lock"))
