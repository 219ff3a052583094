"""
The SSH user name grammar: C{<container-id>} is root in that container,
C{<user>.<container-id>} is that user, split at the last dot; anything else
is an L{InvalidUsername} whose message is safe to show and log.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.username import (
    DEFAULT_USER,
    MAX_USERNAME_LENGTH,
    InvalidUsername,
    RequestedName,
    SSHTarget,
    parse_requested,
    parse_ssh_username,
    target_of,
)

container_ids = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
users = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")


class ParseTests(SynchronousTestCase):
    def test_bare_container_id_is_root(self) -> None:
        self.assertEqual(parse_ssh_username("abc123"), SSHTarget("abc123", DEFAULT_USER))
        self.assertEqual(DEFAULT_USER, "root")

    def test_user_and_container(self) -> None:
        self.assertEqual(parse_ssh_username("alice.abc123"), SSHTarget("abc123", "alice"))

    def test_split_at_the_last_dot(self) -> None:
        self.assertEqual(parse_ssh_username("first.last.abc123"), SSHTarget("abc123", "first.last"))

    def test_bytes_as_received(self) -> None:
        self.assertEqual(parse_ssh_username(b"bob.c-1"), SSHTarget("c-1", "bob"))

    def test_container_id_is_case_insensitive(self) -> None:
        self.assertEqual(parse_ssh_username("Alice.ABC123"), SSHTarget("abc123", "Alice"))

    def test_str_names_user_and_container(self) -> None:
        self.assertEqual(str(SSHTarget("abc123", "root")), "root@abc123")

    def test_a_requested_name_is_its_bytes_with_their_parse(self) -> None:
        requested = parse_requested(b"alice.abc123")
        self.assertEqual((requested, requested.target), (b"alice.abc123", SSHTarget("abc123", "alice")))
        self.assertEqual(target_of(requested), SSHTarget("abc123", "alice"))
        self.assertEqual(target_of(b"bob.c-1"), SSHTarget("c-1", "bob"))
        self.assertEqual(target_of(RequestedName(b"x", SSHTarget("c", "u"))), SSHTarget("c", "u"), "not parsed again")
        with self.assertRaises(InvalidUsername):
            parse_requested(b"a b")

    def test_longest_label_accepted(self) -> None:
        label = "a" * 63
        self.assertEqual(parse_ssh_username(label).container_id, label)

    def assertInvalid(self, name: str | bytes, fragment: str) -> InvalidUsername:
        with self.assertRaises(InvalidUsername) as caught:
            parse_ssh_username(name)
        self.assertIn(fragment, str(caught.exception))
        return caught.exception

    def test_invalid_names(self) -> None:
        cases = {
            "": "empty",
            ".abc123": "user before the last dot is empty",
            "alice.": "container id",
            "-abc": "container id",
            "abc-": "container id",
            "a_b": "container id",
            "a b": "container id",
            "a" * 64: "container id",
            "-alice.abc123": "the user must be",
            "..abc123": "the user must be",
            "al ice.abc123": "the user must be",
            ("u" * 33) + ".abc123": "the user must be",
            "x" * (MAX_USERNAME_LENGTH + 1): "longer than",
        }
        for name, fragment in cases.items():
            self.assertInvalid(name, fragment)

    def test_non_ascii_bytes(self) -> None:
        error = self.assertInvalid("é.abc".encode(), "only ASCII")
        self.assertEqual(error.username, "\\xc3\\xa9.abc")

    def test_message_quotes_the_name_escaped_and_short(self) -> None:
        error = self.assertInvalid("\x1b[31m" + "x" * 200, "invalid SSH user name")
        message = str(error)
        self.assertNotIn("\x1b", message)
        self.assertIn("\\x1b", message)
        self.assertLess(len(message), 250)

    @settings(max_examples=200, deadline=None)
    @given(users, container_ids)
    def test_user_and_container_round_trip(self, user: str, container_id: str) -> None:
        self.assertEqual(parse_ssh_username(f"{user}.{container_id}"), SSHTarget(container_id, user))

    @settings(max_examples=100, deadline=None)
    @given(container_ids)
    def test_bare_id_round_trip(self, container_id: str) -> None:
        self.assertEqual(parse_ssh_username(container_id), SSHTarget(container_id, DEFAULT_USER))

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=120), st.binary(max_size=120)))
    def test_any_input_parses_or_is_invalid(self, name: str | bytes) -> None:
        try:
            target = parse_ssh_username(name)
        except InvalidUsername as error:
            self.assertTrue(str(error).isprintable())
            return
        # Whatever parses names a target that parses back to itself.
        self.assertEqual(parse_ssh_username(f"{target.user}.{target.container_id}"), target)
