"""
Pure parsers for the values of a route's fields (host, path, target,
durations, response header names and values), each returning the normalised value or raising L{ValueError}
whose message is the reason shown after C{file:line:}.  The loader owns the
YAML walking; these own what a valid value is.
"""

from __future__ import annotations

import math
import re

from edd_gateway.net.proxyprotocol import parse_version
from edd_gateway.routes.model import MatchKind, Target
from edd_gateway.routes.normalize import (
    BadRequestTarget,
    normalize_hostname,
    normalize_request_target,
)

__all__ = [
    "INTERNAL_TARGETS",
    "parse_duration",
    "parse_header_name",
    "parse_header_value",
    "parse_proxy_protocol",
    "parse_route_host",
    "parse_route_path",
    "parse_target",
]

INTERNAL_TARGETS = frozenset({"welcome"})

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DURATION_HINT = "a duration like 30, 30s, 500ms, 2m or 1h"
_PATH_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
# RFC 9110 5.1 and 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5, less obs-text: visible ASCII, spaces and tabs inside.
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x21-\x7e\t]*[\x21-\x7e])?)?")
#: Response fields the gateway itself owns: framing, hop-by-hop, its request
#: id.  The edge neither sets nor removes them.
GATEWAY_RESPONSE_FIELDS = frozenset({
    "connection", "content-length", "http2-settings", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "x-request-id",
})


def parse_duration(value: object) -> float:
    """
    Seconds from a number or a string such as C{"30"}, C{"30s"},
    C{"500ms"}, C{"2m"} or C{"1h"}.

    @raise ValueError: unless the result is a finite number above zero.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not {_DURATION_HINT}")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ValueError(f"expected {_DURATION_HINT}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, got {value!r}")
    return seconds


def parse_route_host(text: str) -> str:
    """A route's host: a DNS name or IP literal, lower-cased, no port."""
    if "://" in text:
        raise ValueError(f"host {text!r} must be a bare name: remove the scheme")
    if "*" in text:
        raise ValueError(f"host {text!r}: wildcards are not supported")
    if "]:" in text or (text.count(":") == 1 and not text.startswith("[")):
        raise ValueError(f"host {text!r} must not include a port")
    host = normalize_hostname(text)
    if host is None:
        raise ValueError(f"host {text!r} is not a valid DNS name or IP address")
    return host


def parse_route_path(text: str, match: MatchKind) -> str:
    """
    A route's path, normalised as request paths are; a prefix loses its
    trailing slash (C{/compute/} is C{/compute}), the root stays C{/}.
    """
    reason = None
    if not text.startswith("/"):
        reason = "must start with '/'"
    elif _PATH_FORBIDDEN.search(text):
        reason = "must not contain spaces or control characters"
    elif "?" in text:
        reason = "must not contain a query ('?')"
    elif "#" in text:
        reason = "must not contain a fragment ('#')"
    if reason is not None:
        raise ValueError(f"path {text!r} {reason}")
    try:
        path, _ = normalize_request_target(text.encode("utf-8"))
    except BadRequestTarget as error:
        raise ValueError(f"path {text!r}: {error}") from error
    if match is MatchKind.PREFIX and path != "/" and path.endswith("/"):
        path = path[:-1]
    return path


def parse_target(text: str) -> Target:
    """C{host:port}, C{[v6]:port} or C{internal:NAME}."""
    if text.startswith("internal:"):
        name = text[len("internal:"):]
        if name not in INTERNAL_TARGETS:
            known = ", ".join(f"internal:{known}" for known in sorted(INTERNAL_TARGETS))
            raise ValueError(f"unknown internal target {text!r} (known: {known})")
        return Target(host="", port=0, internal=name)
    if "://" in text:
        raise ValueError(f"target {text!r} must be host:port without a scheme")
    host, port = _split_target(text)
    if port is None:
        raise ValueError(f"target {text!r} must be host:port (IPv6 as [address]:port)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"target {text!r}: port must be a number from 1 to 65535")
    hostname = normalize_hostname(host)
    if hostname is None:
        raise ValueError(f"target {text!r}: {host!r} is not a valid DNS name or IP address")
    return Target(host=hostname, port=int(port))


def parse_proxy_protocol(text: str) -> str | None:
    """C{v1} or C{v2}: the PROXY protocol header version; C{none} is L{None}."""
    try:
        return parse_version(text)
    except ValueError as error:
        raise ValueError(f"proxy_protocol {error}") from None


def _split_target(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return text, None
        return f"[{host}]", rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon or ":" in host:
        return text, None
    return host, port


def parse_header_name(text: str) -> str:
    """
    A response field name for C{response_headers}: an RFC 9110 token that
    is not one of L{GATEWAY_RESPONSE_FIELDS}.  Kept as written.
    """
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"header name {text!r} is not a token (letters, digits and !#$%&'*+-.^_`|~)")
    if text.lower() in GATEWAY_RESPONSE_FIELDS:
        raise ValueError(f"header {text!r} is the gateway's own (framing, hop-by-hop or the request id): "
                         "it cannot be set or removed")
    return text


def parse_header_value(text: str) -> str:
    """
    A response field value for C{response_headers}: visible ASCII with
    spaces or tabs inside, possibly empty.
    """
    if not _FIELD_VALUE.fullmatch(text):
        raise ValueError(f"header value {text!r} must be visible ASCII, with spaces or tabs only inside "
                         "(no control characters, line breaks or leading/trailing spaces)")
    return text
