"""
The containers file's format: a YAML mapping with a C{containers} list,
each container with its ingress rules and its owner's SSH keys (see
docs/state.md), validated as a whole into a L{ContainerSnapshot}.

YAML is composed into a node tree, not loaded into plain objects, so every
problem is reported as C{file:line: reason}; all of them are collected and
raised together in one L{ContainersFileError}, as the routes file's loader
does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edd_gateway.files.yamlfile import (
    INVALID,
    FileError,
    FileProblem,
    NodeReader,
    SafeLoader,
    is_null,
    kind,
    read_utf8,
)
from edd_gateway.routes.normalize import normalize_hostname
from edd_gateway.state.model import RUNNING, Container, ContainerSnapshot, IngressRule

__all__ = ["CONTAINER_KEYS", "ContainersFileError", "ContainersProblem", "load_containers_file",
           "load_containers_text"]

CONTAINER_KEYS = ("id", "user_id", "name", "status", "external_ip", "ssh_enabled", "https_enabled",
                  "ingress", "ssh_keys")
_INGRESS_KEYS = ("port", "target_port")
# The first label of <id>.<container-domain> and the SSH user name: a DNS label.
_CONTAINER_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class ContainersProblem(FileProblem):
    """One thing wrong with a containers file; line 0 means the whole file."""


class ContainersFileError(FileError):
    """A containers file was refused; C{errors} lists every problem found."""


def load_containers_file(path: str) -> ContainerSnapshot:
    """Read and validate the containers file at C{path}."""
    return load_containers_text(read_utf8(path, ContainersProblem, ContainersFileError), path)


def load_containers_text(text: str, filename: str) -> ContainerSnapshot:
    """
    Validate a containers file's C{text} into a ready snapshot.

    @raise ContainersFileError: listing every problem found.
    """
    reader = _Reader(filename)
    containers = reader.read(text)
    if reader.problems:
        raise ContainersFileError(reader.sorted_problems())
    return ContainerSnapshot(containers, ready=True)


class _Reader(NodeReader):
    """Walks one file's node tree (composed, not loaded: nodes carry lines)."""

    problem_type = ContainersProblem

    def read(self, text: str) -> dict[str, Container]:
        self.set_text(text)
        try:
            root = yaml.compose(text, Loader=SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            self.problem(self.mark_line(mark.line) if mark is not None else 0, f"YAML syntax error: {error.problem}")
            return {}
        except yaml.YAMLError as error:
            self.problem(1, f"YAML error: {error}")
            return {}
        if root is None:
            self.problem(1, "the file is empty: expected a mapping with a 'containers' list")
            return {}
        return self._containers_file(root)

    def _containers_file(self, root: Node) -> dict[str, Container]:
        if not isinstance(root, MappingNode):
            self.problem(root, f"expected a mapping with a 'containers' list, got {kind(root)}")
            return {}
        fields = self._fields(root, ("containers",), "top-level")
        if "containers" not in fields:
            self.problem(root, "missing 'containers' (a list of containers)")
            return {}
        node = fields["containers"]
        if is_null(node):
            return {}
        if not isinstance(node, SequenceNode):
            self.problem(node, f"'containers' must be a list, got {kind(node)}")
            return {}
        containers: dict[str, Container] = {}
        first_line: dict[str, int] = {}
        for item in node.value:
            container = self._container(item)
            if container is None:
                continue
            if container.id in containers:
                self.problem(item, f"container {container.id!r} is listed twice (first on line "
                                   f"{first_line[container.id]})")
                continue
            containers[container.id] = container
            first_line[container.id] = self.line(item)
        return containers

    def _fields(self, mapping: MappingNode, allowed: tuple[str, ...], what: str) -> dict[str, Node]:
        return {name: value for name, (_, value) in self.fields(mapping, allowed, what).items()}

    def _container(self, node: Node) -> Container | None:
        if not isinstance(node, MappingNode):
            self.problem(node, f"each container must be a mapping with at least an id, got {kind(node)}")
            return None
        fields = self._fields(node, CONTAINER_KEYS, "container")
        if "id" not in fields:
            self.problem(node, "container is missing id")
        container_id = self._container_id(fields["id"]) if "id" in fields else INVALID
        values = {
            "user_id": self._text(fields.get("user_id"), "user_id", ""),
            "name": self._text(fields.get("name"), "name", ""),
            # The file lists what a developer wants served: running unless it says otherwise.
            "status": self._text(fields.get("status"), "status", RUNNING),
            "external_ip": self._address(fields.get("external_ip")),
            "ssh_enabled": self.boolean(fields.get("ssh_enabled"), "ssh_enabled"),
            "https_enabled": self.boolean(fields.get("https_enabled"), "https_enabled"),
            "ingress": self._ingress(fields.get("ingress")),
            "ssh_keys": self._ssh_keys(fields.get("ssh_keys")),
        }
        if container_id is INVALID or any(value is INVALID for value in values.values()):
            return None
        return Container(id=container_id, **values)

    def _container_id(self, node: Node) -> str:
        text = self._text(node, "id", None)
        if text is INVALID or text is None:
            if text is None:
                self.problem(node, "id must not be empty")
            return INVALID
        if _CONTAINER_ID.fullmatch(text) is None:
            self.problem(node, f"id {text!r} must be a DNS label: lower-case letters, digits and '-', "
                               "at most 63 characters (it names <id>.<container-domain>)")
            return INVALID
        return text

    def _address(self, node: Node | None) -> str | None:
        text = self._text(node, "external_ip", None)
        if text is None or text is INVALID:
            return text
        address = normalize_hostname(text)
        if address is None:
            self.problem(node or 0, f"external_ip {text!r} is not an IP address or DNS name")
            return INVALID
        return address

    def _ingress(self, node: Node | None) -> dict[int, IngressRule]:
        if node is None or is_null(node):
            return {}
        if not isinstance(node, SequenceNode):
            self.problem(node, f"'ingress' must be a list of {{port, target_port}}, got {kind(node)}")
            return INVALID
        rules: dict[int, IngressRule] = {}
        valid = True
        for item in node.value:
            rule = self._rule(item)
            if rule is None:
                valid = False
            elif rule.port in rules:
                self.problem(item, f"ingress port {rule.port} is listed twice")
                valid = False
            else:
                rules[rule.port] = rule
        return rules if valid else INVALID

    def _rule(self, node: Node) -> IngressRule | None:
        if not isinstance(node, MappingNode):
            self.problem(node, f"each ingress rule must be a mapping with port and target_port, got {kind(node)}")
            return None
        fields = self._fields(node, _INGRESS_KEYS, "ingress")
        if "port" not in fields:
            self.problem(node, "ingress rule is missing port")
            return None
        port = self._port(fields["port"], "port")
        target_port = self._port(fields["target_port"], "target_port") if "target_port" in fields else 80
        if port is INVALID or target_port is INVALID:
            return None
        return IngressRule(port, target_port)

    def _ssh_keys(self, node: Node | None) -> tuple[str, ...]:
        if node is None or is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            self.problem(node, f"'ssh_keys' must be a list of OpenSSH public keys, got {kind(node)}")
            return INVALID
        keys = tuple(self._ssh_key(item) for item in node.value)
        return INVALID if INVALID in keys else keys

    def _ssh_key(self, node: Node) -> str:
        text = self._text(node, "ssh key", None)
        if text is None or text is INVALID:
            if text is None:
                self.problem(node, "an ssh key must not be empty")
            return INVALID
        # Conch parses what its SSH server will later accept; a key it cannot
        # read is refused here, with its line, not at the first login.
        from twisted.conch.ssh.keys import BadKeyError, Key

        try:
            key = Key.fromString(text.strip().encode("utf-8"))
        except Exception as error:  # Conch raises struct.error, binascii.Error... on junk
            detail = f": {error}" if isinstance(error, BadKeyError) else ""
            self.problem(node, f"not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]'){detail}")
            return INVALID
        if not key.isPublic():
            self.problem(node, "this is a private key: list public keys only")
            return INVALID
        return text.strip()

    def _port(self, node: Node, name: str) -> int:
        value = self.construct(node)
        if value is INVALID:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.problem(node, f"{name} must be a number from 1 to 65535, got {getattr(node, 'value', node)!r}")
            return INVALID
        return value

    def _text(self, node: Node | None, name: str, default: str | None) -> Any:
        # The raw scalar text, not the YAML 1.1 value: an id like 0123 or
        # "on" must stay the string it looks like.
        if node is None or is_null(node):
            return default
        if not isinstance(node, ScalarNode):
            self.problem(node, f"{name} must be a string, got {kind(node)}")
            return INVALID
        return str(node.value)
