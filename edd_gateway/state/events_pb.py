"""
The compute service's protobuf event messages (its C{common/types.proto} and
C{compute/events.proto}), as message classes built at import time from
descriptors written out below, and which message each event subject carries
(L{message_class}).

Why no protoc and no generated C{_pb2} module: generated code is tied to the
protoc version that wrote it (a newer gencode refuses to import on an older
runtime, an older one warns on a newer), so it would need protoc at build
time or a checked-in file that silently drifts from the runtime installed
with it.  A C{FileDescriptorProto} is the very data protoc would embed in
that file; C{message_factory} turns it into ordinary message classes parsed
by the runtime's own (upb) decoder.  Only field numbers and types matter on
the wire; names follow the compute service's .proto files.  The descriptors
live in a private pool so they cannot clash with anything else registering
C{common.Timestamp} in protobuf's default pool.
"""

from __future__ import annotations

from typing import Any

# protobuf ships no type hints (types-protobuf has them): its classes are Any here.
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]  # no stubs
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]  # no stubs

__all__ = ["MESSAGES", "DecodeError", "Message", "message_class"]

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _INT64, _INT32, _BOOL = _F.TYPE_STRING, _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_BOOL
_Field = tuple[str, int, "int | str"]  # name, number, scalar type or ".package.Message"

_METADATA: _Field = ("metadata", 1, ".common.EventMetadata")
_CONTAINER_ID: _Field = ("container_id", 2, _STRING)

_COMMON: dict[str, list[_Field]] = {
    "Timestamp": [("seconds", 1, _INT64), ("nanos", 2, _INT32)],
    "EventMetadata": [("event_id", 1, _STRING), ("entity_id", 2, _STRING), ("timestamp", 3, ".common.Timestamp"),
                      ("source", 4, _STRING), ("version", 5, _INT64)],
}

_COMPUTE: dict[str, list[_Field]] = {
    "ContainerCreated": [_METADATA, _CONTAINER_ID, ("user_id", 3, _INT64), ("owner_username", 4, _STRING),
                         ("name", 5, _STRING), ("namespace", 6, _STRING), ("memory_mb", 7, _INT32),
                         ("storage_gb", 8, _INT32), ("image", 9, _STRING)],
    "ContainerStarted": [_METADATA, _CONTAINER_ID, ("external_ip", 3, _STRING)],
    "ContainerStopped": [_METADATA, _CONTAINER_ID],
    "ContainerDeleted": [_METADATA, _CONTAINER_ID, ("user_id", 3, _INT64)],
    "ContainerSSHToggled": [_METADATA, _CONTAINER_ID, ("ssh_enabled", 3, _BOOL)],
    "ContainerHTTPSToggled": [_METADATA, _CONTAINER_ID, ("https_enabled", 3, _BOOL)],
    # Not in the compute service's .proto yet: assumed to follow the others.
    "ContainerIPAssigned": [_METADATA, _CONTAINER_ID, ("external_ip", 3, _STRING)],
    "SSHKeyCreated": [_METADATA, ("key_id", 2, _INT64), ("user_id", 3, _INT64), ("name", 4, _STRING),
                      ("fingerprint", 5, _STRING)],
    "SSHKeyDeleted": [_METADATA, ("key_id", 2, _INT64), ("user_id", 3, _INT64)],
    "IngressRuleRequested": [_METADATA, _CONTAINER_ID, ("port", 3, _INT32), ("target_port", 4, _INT32)],
    "IngressRuleDeleteRequested": [_METADATA, _CONTAINER_ID, ("port", 3, _INT32)],
    # The gateway's own shapes for subjects no message is defined for (an
    # action added later, the older ingress created/deleted): the fields
    # every message of the kind shares, so a body of any of them still names
    # what to re-read.
    "ContainerEvent": [_METADATA, _CONTAINER_ID],
    "SSHKeyEvent": [_METADATA, ("key_id", 2, _INT64), ("user_id", 3, _INT64)],
}

_BY_SUBJECT: dict[tuple[str, str], str] = {
    ("container", "created"): "ContainerCreated",
    ("container", "started"): "ContainerStarted",
    ("container", "stopped"): "ContainerStopped",
    ("container", "deleted"): "ContainerDeleted",
    ("container", "ssh_toggled"): "ContainerSSHToggled",
    ("container", "https_toggled"): "ContainerHTTPSToggled",
    ("container", "ip_assigned"): "ContainerIPAssigned",
    ("ingress", "requested"): "IngressRuleRequested",
    ("ingress", "delete_requested"): "IngressRuleDeleteRequested",
    ("sshkey", "created"): "SSHKeyCreated",
    ("sshkey", "deleted"): "SSHKeyDeleted",
}
_FALLBACK = {"container": "ContainerEvent", "ingress": "ContainerEvent", "sshkey": "SSHKeyEvent"}


def _file(name: str, package: str, messages: dict[str, list[_Field]],
          dependencies: tuple[str, ...] = ()) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3",
                                               dependency=list(dependencies))
    for message_name, fields in messages.items():
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type, field.type_name = _F.TYPE_MESSAGE, kind
            else:
                field.type = kind
    return proto


def _build() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file("common/types.proto", "common", _COMMON))
    pool.Add(_file("compute/events.proto", "compute", _COMPUTE, ("common/types.proto",)))
    classes: dict[str, type[Message]] = {}
    for package, names in (("common", _COMMON), ("compute", _COMPUTE)):
        for name in names:
            classes[name] = _message_class(pool.FindMessageTypeByName(f"{package}.{name}"))
    return classes


def _message_class(descriptor: Any) -> type[Message]:
    make = getattr(message_factory, "GetMessageClass", None)
    if make is None:  # protobuf before 4.22
        return message_factory.MessageFactory().GetPrototype(descriptor)
    return make(descriptor)


MESSAGES: dict[str, type[Message]] = _build()
"""Every message class by its short name (C{"ContainerStarted"}, C{"EventMetadata"}, ...)."""


def message_class(kind: str, action: str) -> type[Message]:
    """
    The message a subject C{compute.<kind>.<id>.<action>} carries; for an
    action no message is defined for, a message with just the fields every
    message of that kind has (C{metadata}, and C{container_id} or C{key_id}
    and C{user_id}).
    """
    return MESSAGES[_BY_SUBJECT.get((kind, action)) or _FALLBACK[kind]]
