"""
Pure header work on the way back: how a backend's response body is framed,
which of its fields the gateway interprets, and the head the client gets.

Apart from L{edd_gateway.http.headers} (the request side, where smuggling is
reviewed) because the two directions share only the hop-by-hop list: the
backend connection and the exchange read this module, the client
connection never does.
"""

from __future__ import annotations

from edd_gateway.http.headers import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HOP_BY_HOP,
    Headers,
    connection_options,
)
from edd_gateway.routes.model import HeaderEdits

#: The response fields the gateway interprets rather than passes on.
RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length", b"x-request-id"}
#: Connection options that name no field (close; keep-alive is hop-by-hop already).
CONNECTION_STATES = frozenset({b"close"})

#: Fields set apart by L{split_response_headers}: (lower-case name, name as sent, value).
Special = list[tuple[bytes, bytes, bytes]]

def response_body_kind(
    status: int, headers: Headers, head_request: bool
) -> tuple[int, int]:
    """
    How a backend's response body is framed: (kind, content length).
    """
    return body_kind_of(status, split_response_headers(headers)[1], head_request)


def body_kind_of(status: int, special: Special, head_request: bool) -> tuple[int, int]:
    """L{response_body_kind} over the special fields L{split_response_headers} set apart."""
    if head_request or status < 200 or status in (204, 304):
        return BODY_NONE, 0
    length: int | None = None
    chunked = False
    for name, _, value in special:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.split(b",")[-1].strip().lower() == b"chunked"
    if chunked:
        return BODY_CHUNKED, 0
    if length is not None:
        return BODY_LENGTH, length
    return BODY_UNTIL_CLOSE, 0


def client_framing(status: int, special: Special, head_request: bool, http11_client: bool
                   ) -> tuple[int, int, bool, bool]:
    """
    How a response body reaches the client: its kind and length from the
    backend, whether the gateway chunks it, and whether that framing leaves
    the connection reusable.  HTTP/1.0 clients know no chunked coding: they
    get a chunked or close-delimited body delimited by the close instead.
    """
    body, length = body_kind_of(status, special, head_request)
    unsized = body == BODY_CHUNKED or body == BODY_UNTIL_CLOSE
    chunk_to_client = http11_client and unsized
    return body, length, chunk_to_client, chunk_to_client or not unsized


def interim_head(status_line: bytes, plain: list[bytes], special: Special, request_id: str, *,
                 upgrade: bool = False) -> bytes:
    """The head of a 1xx answer for the client: a 101 with its Upgrade, the others (100, 103) as they came."""
    return client_head(status_line, plain, special, BODY_NONE, 0, False, True, True, request_id, upgrade=upgrade)


def split_response_headers(headers: Headers) -> tuple[list[bytes], Special]:
    """
    Set apart the response fields the gateway interprets (framing,
    hop-by-hop, request id) from those it passes on as they are, already
    formatted as lines.  The backend connection does this field by field as
    llhttp reports them, so that a response's headers are walked once.
    """
    plain: list[bytes] = []
    special: Special = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in RESPONSE_SPECIAL:
            special.append((name, raw_name, value))
        else:
            plain.append(raw_name + b": " + value)
    return plain, special


def client_response_head(
    status_line: bytes,
    headers: Headers,
    body: int,
    content_length: int,
    chunk_to_client: bool,
    keep_alive: bool,
    http11_client: bool,
    request_id: str,
    upgrade: bool = False,
    edits: HeaderEdits | None = None,
) -> bytes:
    """
    The response head sent to the client: the backend's status line and
    end-to-end headers (less and plus the route's C{edits}), the framing the
    gateway uses towards the client, and the request id.
    """
    plain, special = split_response_headers(headers)
    return client_head(
        status_line, plain, special, body, content_length, chunk_to_client,
        keep_alive, http11_client, request_id, upgrade, edits,
    )


def client_head(
    status_line: bytes,
    plain: list[bytes],
    special: Special,
    body: int,
    content_length: int,
    chunk_to_client: bool,
    keep_alive: bool,
    http11_client: bool,
    request_id: str,
    upgrade: bool = False,
    edits: HeaderEdits | None = None,
) -> bytes:
    """L{client_response_head} over headers L{split_response_headers} split."""
    lines = [status_line]
    if edits is None:
        lines += plain
    else:
        # Only routes that edit headers pay for looking at each name.
        drop = edits.drop
        lines += [line for line in plain if line.split(b":", 1)[0].strip().lower() not in drop]
    named, upgrade_value, transfer_codings = _read_special(special, body == BODY_NONE, lines)
    append = lines.append
    if named:
        # Rare: fields the backend's Connection header names are hop-by-hop.
        lines = [lines[0]] + [
            line for line in lines[1:] if line.split(b":", 1)[0].lower() not in named
        ]
        append = lines.append
    if edits is not None:
        # After the Connection-named removal: a backend cannot take away
        # what the edge sets.
        lines += edits.add
    if upgrade:
        append(b"Connection: upgrade")
        append(b"Upgrade: " + upgrade_value)
    elif body == BODY_LENGTH:
        append(b"Content-Length: %d" % content_length)
    elif chunk_to_client:
        append(b"Transfer-Encoding: " + (transfer_codings or b"chunked"))
    append(b"X-Request-ID: " + request_id.encode("ascii"))
    if not upgrade:
        if not keep_alive:
            append(b"Connection: close")
        elif not http11_client:
            append(b"Connection: keep-alive")
    append(b"\r\n")
    return b"\r\n".join(lines)


def _read_special(special: Special, bodiless: bool, lines: list[bytes]) -> tuple[set[bytes] | None, bytes, bytes]:
    """
    What L{client_head} takes from the fields it interprets: the names the
    backend's Connection header makes hop-by-hop, its Upgrade value and its
    transfer codings, chunked last.  A bodiless answer's Content-Length goes
    to C{lines} as it is.
    """
    named: set[bytes] | None = None
    upgrade_value = transfer_codings = b""
    for name, raw_name, value in special:
        if name == b"connection":
            extra = connection_options(value) - HOP_BY_HOP - CONNECTION_STATES
            if extra:
                named = (named or set()) | extra
        elif name == b"transfer-encoding":
            # Codings other than chunked (gzip) stay the client's to undo;
            # the gateway re-chunks what llhttp de-chunked.
            chunked = value.lower().rstrip().endswith(b"chunked")
            transfer_codings = value if chunked else value + b", chunked"
        elif name == b"upgrade":
            upgrade_value = value
        elif name == b"content-length" and bodiless:
            # A HEAD or 304 answer keeps the backend's length; otherwise the
            # gateway states its own framing.
            lines.append(raw_name + b": " + value)
    return named, upgrade_value, transfer_codings
