"""
The SSH user name grammar: C{<container-id>} logs in as root in that
container, C{<user>.<container-id>} as C{<user>}; the name is split at its
last dot, since user names may hold dots and container ids (DNS labels)
never do.

L{parse_ssh_username} is a pure function of the name the client sent; it
returns an L{SSHTarget} or raises L{InvalidUsername}, whose message is fit
to show the client (it quotes the name escaped and shortened).  A login
attempt parses its name once, when it starts (L{parse_requested}), and
passes the L{RequestedName} on: the name's bytes, carrying their parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The user a bare C{<container-id>} logs in as.
DEFAULT_USER = "root"

#: Longest name accepted: a 32-character user, a dot, a 63-character label.
MAX_USERNAME_LENGTH = 96

# A DNS label, as container ids are the first label of <id>.<container-domain>
# (the same rule as the containers file's).  Matched after lower-casing:
# host names are case-insensitive, and so is this half of the SSH name.
_CONTAINER_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# POSIX's portable user name characters, not starting with a hyphen (a user
# name that looks like an option is a classic foot-gun) or a dot, at most 32
# long as in shadow-utils.  Case is kept: Unix user names are case-sensitive.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_SHOWN_LENGTH = 64


@dataclass(frozen=True, slots=True)
class SSHTarget:
    """Where a login goes: which container, as which user."""

    container_id: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.container_id}"


class InvalidUsername(ValueError):
    """
    The name is not C{<container-id>} or C{<user>.<container-id>}.

    @ivar username: the name as received, decoded leniently for logs.
    @ivar reason: what is wrong with it, for the client and the log.
    """

    def __init__(self, username: str, reason: str) -> None:
        super().__init__(username, reason)
        self.username = username
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid SSH user name {shown(self.username)}: {self.reason}"


def shown(text: str) -> str:
    """C{text} quoted for a log line or a client message: escaped, shortened."""
    if len(text) > _SHOWN_LENGTH:
        return repr(text[:_SHOWN_LENGTH]) + "..."
    return repr(text)


def parse_ssh_username(name: str | bytes) -> SSHTarget:
    """
    The container and user that the SSH user name C{name} asks for.

    @raise InvalidUsername: when C{name} does not follow the grammar.
    """
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidUsername(name.decode("ascii", "backslashreplace"),  # type: ignore[union-attr]  # still bytes
                                  "only ASCII is allowed") from None
    if not name:
        raise InvalidUsername(name, "it is empty; log in as <container-id> or <user>.<container-id>")
    if len(name) > MAX_USERNAME_LENGTH:
        raise InvalidUsername(name, f"longer than {MAX_USERNAME_LENGTH} characters")
    user, dot, container_id = name.rpartition(".")
    if not dot:
        user = DEFAULT_USER
    elif not user:
        raise InvalidUsername(name, "the user before the last dot is empty")
    container_id = container_id.lower()
    if _CONTAINER_ID.fullmatch(container_id) is None:
        raise InvalidUsername(
            name, "the container id (after the last dot) must be letters, digits and inner hyphens, at most 63"
        )
    if _USER.fullmatch(user) is None:
        raise InvalidUsername(
            name, "the user must be at most 32 letters, digits, '.', '_' or '-', not starting with '-' or '.'"
        )
    return SSHTarget(container_id=container_id, user=user)


class RequestedName(bytes):
    """
    A user name as a client sent it, with the target it names (C{target}).
    It is the name's bytes to whatever signs, compares or logs them (Conch's
    userauth keeps the name in C{self.user} and puts it in the credentials
    it makes), so the parse travels with the name instead of being redone.
    """

    target: SSHTarget

    def __new__(cls, name: bytes, target: SSHTarget) -> RequestedName:
        requested = super().__new__(cls, name)
        requested.target = target
        return requested


def parse_requested(name: bytes) -> RequestedName:
    """
    C{name} and its parse, done once for a login attempt.

    @raise InvalidUsername: when C{name} does not follow the grammar.
    """
    return RequestedName(name, parse_ssh_username(name))


def target_of(name: bytes) -> SSHTarget:
    """
    The target C{name} asks for: the parse it carries (a L{RequestedName}),
    else parsed now.

    @raise InvalidUsername: when C{name} does not follow the grammar.
    """
    if isinstance(name, RequestedName):
        return name.target
    return parse_ssh_username(name)


__all__ = [
    "DEFAULT_USER", "MAX_USERNAME_LENGTH", "InvalidUsername", "RequestedName", "SSHTarget", "parse_requested",
    "parse_ssh_username", "shown", "target_of",
]
