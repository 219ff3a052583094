"""
A proxied response's final head for an HTTP/2 stream, as its header list.

The exchange writes its client an HTTP/1.1 head
(L{edd_gateway.http.response_head.client_head}), and an HTTP/2 stream reads
such bytes back into fields (L{edd_gateway.h2.reframe.ResponseReframer}).
For the head of a proxied response that round trip is skipped: the same
parts (the backend's fields as the backend connection split them, the body's
framing, the request id, the route's edits) give the list the re-framer
would have read, and the body follows as it came.  Writing and re-reading
the head was about thirty Python calls per response (llhttp calls back once
per field).  C{tests/unit/test_h2_response_fields.py} checks, for any
backend head, that this list is the re-framer's reading of C{client_head}'s
bytes; the gateway's own answers, 1xx heads and upgrades still go through
the re-framer.
"""

from __future__ import annotations

from edd_gateway.h2.bounded import keep
from edd_gateway.http.headers import BODY_LENGTH, BODY_NONE, HOP_BY_HOP, connection_options
from edd_gateway.http.response_head import CONNECTION_STATES, Special
from edd_gateway.routes.model import HeaderEdits

Headers = list[tuple[bytes, bytes]]

__all__ = ["response_fields"]

#: What llhttp skips before a field's value (it keeps what follows it).
_OWS = b" \t"


#: Backend lines read as fields (Server, Content-Type, Cache-Control repeat
#: from response to response), bounded (cleared when full).
_READ_LINES: dict[bytes, tuple[bytes, bytes]] = {}
_READ_LINES_KEPT = 1024
_READ_LINES_LARGEST = 256


def _read_line(line: bytes) -> tuple[bytes, bytes]:
    """A C{Name: value} line as a field: the name lower-cased, the value as llhttp reads it again."""
    raw_name, _, value = line.partition(b":")
    field = (raw_name.lower(), value.lstrip(_OWS))
    if len(line) <= _READ_LINES_LARGEST:
        keep(_READ_LINES, line, field, _READ_LINES_KEPT)
    return field


def response_fields(plain: list[bytes], special: Special, body: int, content_length: int, request_id: str,
                    edits: HeaderEdits | None) -> Headers:
    """
    The fields (no C{:status}) of a final response head, from what
    C{client_head} takes: C{plain} lines (C{Name: value}) and C{special}
    fields as L{edd_gateway.http.response_head.split_response_headers} set
    them apart, the body's framing towards the client, the request id and
    the route's edits.
    """
    # The backend's Connection header makes the fields it names hop-by-hop.
    named: set[bytes] | None = None
    bodiless_length: Headers = []
    for name, _, value in special:
        if name == b"connection":
            extra = connection_options(value) - HOP_BY_HOP - CONNECTION_STATES
            if extra:
                named = (named or set()) | extra
        elif name == b"content-length" and body == BODY_NONE:
            # A HEAD or 304 answer keeps the backend's length.
            bodiless_length.append((name, value.lstrip(_OWS)))
    drop = edits.drop if edits is not None else None
    fields: Headers = []
    append = fields.append
    read = _READ_LINES
    for line in plain:
        field = read.get(line)
        if field is None:
            field = _read_line(line)
        name = field[0]
        if (drop is None or name not in drop) and (named is None or name not in named):
            append(field)
    for field in bodiless_length:
        if named is None or field[0] not in named:
            append(field)
    if edits is not None:
        # After the backend's fields: a backend cannot take away what the
        # edge sets (and an edit never sets a connection-specific field:
        # edd_gateway.routes.fields refuses them).
        for line in edits.add:
            raw_name, _, value = line.partition(b":")
            append((raw_name.strip(_OWS).lower(), value.lstrip(_OWS)))
    if body == BODY_LENGTH:
        append((b"content-length", b"%d" % content_length))
    append((b"x-request-id", request_id.encode("ascii")))
    return fields
