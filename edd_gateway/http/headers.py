"""
Pure header work of the proxy on the way in: what a request head means
(framing, keep-alive, upgrade), which headers cross the proxy, and the
forwarding headers that carry the client's address.  The way back is
L{edd_gateway.http.response_head}.

llhttp already refuses most malformed heads; the checks here are those it
leaves to the application (one Host, exactly ``chunked`` as the only
transfer coding, control bytes in values), kept together so that request
smuggling has one place to be reviewed.  Field names with an underscore
are dropped here too (unless the operator allows them): CGI and WSGI stacks
read C{Transfer_Encoding} as C{Transfer-Encoding}, so a backend could see a
framing the gateway never saw.
"""

from __future__ import annotations

from random import getrandbits
import re
from dataclasses import dataclass

from edd_gateway.http.errors import GatewayError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1: hop-by-hop fields, plus those a Connection header names.
# HTTP2-Settings (RFC 7540 3.2.1) belongs to the h2c upgrade, which the
# gateway never passes on: hop-by-hop even when Connection does not name it.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway; taken from the client only when it is a trusted proxy.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-real-ip",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
    }
)
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}\Z")
_BAD_VALUE_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2
BODY_UNTIL_CLOSE = 3


@dataclass(slots=True)
class RequestInfo:
    """What the gateway needs to know about one request head."""

    method: bytes
    target: bytes
    http11: bool
    headers: Headers
    host: bytes | None
    body: int
    content_length: int
    keep_alive: bool
    upgrade: bool
    expect_continue: bool
    request_id: str
    connection_tokens: frozenset[bytes]
    #: The protocols of the Upgrade header passed on (HTTP/2's removed).
    upgrade_value: bytes = b""
    #: Field names dropped from the request (underscores), for the log line.
    dropped: tuple[bytes, ...] = ()


def new_request_id() -> str:
    # Unique, not secret: Python's Mersenne Twister (seeded from the OS at
    # start) costs no system call per request, unlike os.urandom.
    return "%024x" % getrandbits(96)


_KNOWN_TOKENS: dict[bytes, frozenset[bytes]] = {}


def connection_options(value: bytes) -> frozenset[bytes]:
    """The options of a Connection header, lower-cased (memoised: the same
    few values, "keep-alive" above all, arrive on every message)."""
    known = _KNOWN_TOKENS.get(value)
    if known is not None:
        return known
    tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
    if len(_KNOWN_TOKENS) < 256:
        _KNOWN_TOKENS[value] = tokens
    return tokens


# RFC 7540 3.2: the cleartext upgrade to HTTP/2 ("h2" is never valid in
# Upgrade, "h2c" is).  Passed on, a backend speaking h2c would take the whole
# connection, and every later request on it would dodge the routes
# ("h2c smuggling"); the gateway serves HTTP/1.1 only, so it ignores them.
_HTTP2_UPGRADES = frozenset({b"h2c", b"h2"})


def _without_http2(value: bytes) -> bytes:
    """An Upgrade header's protocols less HTTP/2's, as one value."""
    kept = [p.strip() for p in value.split(b",") if p.strip() and p.strip().lower() not in _HTTP2_UPGRADES]
    return b", ".join(kept)


def _drop_names(headers: Headers, dropped: list[bytes]) -> Headers:
    names = set(dropped)
    return [(name, value) for name, value in headers if name not in names]


_MEANINGFUL = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect", b"x-request-id"}
)


#: What L{_read_fields} found: host, content-length, transfer codings,
#: Connection options, whether an Upgrade header came, the Upgrade values,
#: Expect 100-continue, the client's request id, and the names dropped.
_Fields = tuple[bytes | None, bytes | None, list[bytes], set[bytes], bool, bytes, bool, str, list[bytes]]


def _read_fields(headers: Headers, allow_underscores: bool) -> _Fields:
    """
    The fields of a request head that decide what it means, in one pass; the
    others are only passed on.  A plain tuple: this runs for every request,
    and an object with attributes cost 2 % of the instructions per request.

    @raise GatewayError: 400 for a field that could be read two ways.
    """
    host: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: list[bytes] = []
    connection: set[bytes] = set()
    upgrade_header = expect_continue = False
    upgrade_value = b""
    request_id = ""
    dropped: list[bytes] = []
    for raw_name, value in headers:
        # llhttp already refuses these; checked again because a request
        # head that could be read two ways must never reach a backend.
        if _BAD_VALUE_BYTES.search(value):
            raise GatewayError(400, "A header value holds a control character.")
        if b"_" in raw_name and not allow_underscores:
            # Dropped, not refused: nginx's default (ignore_invalid_headers),
            # which clients sending such names already live with.
            dropped.append(raw_name)
            continue
        name = raw_name.lower()
        if name not in _MEANINGFUL:
            continue
        if name == b"host":
            if host is not None:
                raise GatewayError(400, "The request has more than one Host header.")
            host = value
        elif name == b"content-length":
            if content_length is not None and content_length != value:
                raise GatewayError(400, "The request has conflicting Content-Length headers.")
            if not value.isdigit():
                raise GatewayError(400, "The Content-Length header is not a number.")
            content_length = value
        elif name == b"transfer-encoding":
            transfer_encoding.extend(t.strip().lower() for t in value.split(b","))
        elif name == b"connection":
            connection |= connection_options(value)
        elif name == b"upgrade":
            upgrade_header = True
            upgrade_value = upgrade_value + b", " + value if upgrade_value else value
        elif name == b"expect":
            expect_continue = expect_continue or value.strip().lower() == b"100-continue"
        elif name == b"x-request-id" and _REQUEST_ID.match(value):
            request_id = value.decode("ascii")
    return (host, content_length, transfer_encoding, connection, upgrade_header, upgrade_value, expect_continue,
            request_id, dropped)


def analyse_request(
    method: bytes, target: bytes, version: str, headers: Headers, *, allow_underscores: bool = False
) -> RequestInfo:
    """
    Validate a parsed request head and say what it means.

    Field names with an underscore are left out of C{info.headers} and
    listed in C{info.dropped}, unless C{allow_underscores}.  llhttp has
    already refused every other name that is not an RFC 9110 token (400).

    @raise GatewayError: 400 for anything that could be read two ways.
    """
    (host, content_length, transfer_encoding, connection, upgrade_header, upgrade_value, expect_continue,
     request_id, dropped) = _read_fields(headers, allow_underscores)
    http11 = version == "1.1"
    if version not in ("1.1", "1.0"):
        raise GatewayError(505 if version[:1] != "0" else 400, f"HTTP/{version} is not served.")
    if http11 and host is None:
        raise GatewayError(400, "An HTTP/1.1 request needs a Host header.")
    if transfer_encoding and content_length is not None:
        raise GatewayError(400, "The request has both Content-Length and Transfer-Encoding.")
    if transfer_encoding:
        if transfer_encoding != [b"chunked"]:
            raise GatewayError(400, "The only transfer coding accepted is a single chunked.")
        body, length = BODY_CHUNKED, 0
    else:
        length = int(content_length) if content_length is not None else 0
        body = BODY_LENGTH if length else BODY_NONE
    if http11:
        keep_alive = b"close" not in connection
    else:
        # RFC 9112 6.1: chunked framing from a 1.0 client is suspect; the
        # connection ends with this request.
        keep_alive = b"keep-alive" in connection and not transfer_encoding
    # The Host header is never a connection option (a client naming it in
    # Connection must not strip it from the forwarded request).
    connection.discard(b"host")
    parser_upgrade = upgrade_header and b"upgrade" in connection
    upgrade_value = _without_http2(upgrade_value) if parser_upgrade else b""
    if parser_upgrade and not upgrade_value:
        # llhttp stopped parsing after this head all the same (it saw an
        # upgrade): the connection ends with the answer, and a body it left
        # unread cannot be passed on.
        keep_alive = False
        if body != BODY_NONE:
            raise GatewayError(400, "The gateway does not upgrade to HTTP/2 (Upgrade: h2c): send a request "
                                    "with a body without asking for the upgrade.")
    return RequestInfo(
        method=method, target=target, http11=http11,
        headers=_drop_names(headers, dropped) if dropped else headers,
        host=host, body=body, content_length=length, keep_alive=keep_alive, upgrade=bool(upgrade_value),
        expect_continue=expect_continue, request_id=request_id or new_request_id(),
        connection_tokens=frozenset(connection), upgrade_value=upgrade_value, dropped=tuple(dropped),
    )


_REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING | {b"x-request-id", b"content-length"}


def upstream_request_head(
    info: RequestInfo,
    path_and_query: bytes,
    client_ip: str,
    scheme: str,
    trusted: bool,
    keep_expect: bool = True,
) -> bytes:
    """
    The request head sent to the backend; without C{Expect} unless
    C{keep_expect} (when the gateway answered 100 Continue itself).

    Hop-by-hop headers and those the client's Connection header names are
    dropped (an upgrade keeps Upgrade and asks for it again); the forwarding
    headers are appended to when the peer is a trusted proxy and replaced
    otherwise.  One pass over the headers: this runs for every request.
    """
    named = info.connection_tokens
    lines = [info.method + b" " + path_and_query + b" HTTP/1.1"]
    append = lines.append
    forwarded_for = real_ip = proto = forwarded_host = b""
    for raw_name, value in info.headers:
        name = raw_name.lower()
        if name not in _REQUEST_SPECIAL:
            if (not named or name not in named) and (keep_expect or name != b"expect"):
                append(raw_name + b": " + value)
            continue
        if not trusted or name in named:
            continue
        elif name == b"x-forwarded-for":
            forwarded_for = forwarded_for + b", " + value if forwarded_for else value
        elif name == b"x-real-ip":
            real_ip = value
        elif name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-host":
            forwarded_host = value
        elif name == b"x-forwarded-port" or name == b"forwarded":
            append(raw_name + b": " + value)
    client = client_ip.encode("ascii")
    append(b"X-Forwarded-For: " + (forwarded_for + b", " + client if forwarded_for else client))
    append(b"X-Real-IP: " + (real_ip or client))
    append(b"X-Forwarded-Proto: " + (proto or scheme.encode("ascii")))
    if forwarded_host or info.host is not None:
        append(b"X-Forwarded-Host: " + (forwarded_host or info.host or b""))
    append(b"X-Request-ID: " + info.request_id.encode("ascii"))
    if info.upgrade:
        append(b"Connection: upgrade")
        append(b"Upgrade: " + info.upgrade_value)
    if info.body == BODY_LENGTH:
        append(b"Content-Length: %d" % info.content_length)
    elif info.body == BODY_CHUNKED:
        append(b"Transfer-Encoding: chunked")
    elif info.method in (b"POST", b"PUT", b"PATCH"):
        append(b"Content-Length: 0")
    append(b"\r\n")
    return b"\r\n".join(lines)
