"""
Normalisation of what a client sends before it is routed: the Host header and
the request target.

Both the route table and the upstream see the same normalised path, so a
request cannot be routed as one path and served as another.  The rules follow
RFC 3986 section 6.2.2: percent-escapes of unreserved characters are decoded,
every other escape keeps its (upper-cased) encoding, C{%2F} in particular
stays inside its segment, dot-segments are removed (section 5.2.4) and, as
nginx does by default, repeated slashes are merged.  Bytes that may not appear
raw in a path (non-ASCII, C{"<>\\^`{|}[]}) are percent-encoded; control
characters, space, C{#}, bad escapes and an encoded NUL are refused with
L{BadRequestTarget}.  Everything here is pure and hand-written because no
library applies exactly these rules (C{urllib.parse} neither validates nor
removes encoded dot-segments), and it sits on every request's path.
"""

from __future__ import annotations

import re
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "BadRequestTarget",
    "normalize_host",
    "normalize_hostname",
    "normalize_request_target",
    "split_absolute_form",
]


class BadRequestTarget(ValueError):
    """
    The request target cannot be routed safely; the proxy answers 400.

    C{str(error)} is the reason, fit for a log line.
    """


_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
# pchar minus "%" (RFC 3986 3.3): bytes a path may carry raw.
_PCHAR_CLASS = rb"A-Za-z0-9\-._~!$&'()*+,;=:@"

# The common case: segments that are non-empty, do not start with a dot and
# hold only raw pchars, optionally a trailing slash.  Such a path is already
# normal, so it is returned untouched without further work.
_SIMPLE_PATH = re.compile(
    rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][" + _PCHAR_CLASS + rb"]*)*/?"
)
# Queries are not routed on: any visible ASCII but "#" passes through as is.
_SIMPLE_QUERY = re.compile(rb"[\x21\x22\x24-\x7e]*")
_REJECTED_BYTE = re.compile(rb"[\x00-\x20\x7f#]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_PATH_REWRITE = re.compile(rb"%([0-9A-Fa-f]{2})|([^" + _PCHAR_CLASS + rb"/%])")
_QUERY_REWRITE = re.compile(rb"[\x80-\xff]")
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HOST_HEADER = re.compile(r"(?P<name>[^:\[\]]+)(?::(?P<port>[0-9]{0,5}))?")
_BRACKETED_HOST_HEADER = re.compile(r"\[(?P<name>[0-9A-Fa-f:.]+)\](?::(?P<port>[0-9]{0,5}))?")


def normalize_hostname(name: str) -> str | None:
    """
    Normalise a host name without a port: a DNS name (letters, digits and
    hyphens, labels of 1-63 characters, 253 at most), an IPv4 address, or an
    IPv6 address with or without brackets.

    @return: the lower-case name without one trailing dot (IPv6 compressed,
        without brackets), or L{None} when C{name} is none of those.
    """
    if name.startswith("[") and name.endswith("]"):
        return _ipv6(name[1:-1])
    if ":" in name:
        return _ipv6(name)
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    if len(name) > 253 or not name.isascii() or _DNS_NAME.fullmatch(name) is None:
        return None
    last_label = name.rpartition(".")[2]
    if last_label.isdigit():
        # An all-numeric top label is never a DNS name (RFC 1123 2.1): it must
        # be a well-formed dotted IPv4 address, or nothing.
        try:
            return str(IPv4Address(name))
        except ValueError:
            return None
    return name


def _ipv6(text: str) -> str | None:
    if "%" in text:  # zone identifiers mean nothing off this machine
        return None
    try:
        return str(IPv6Address(text))
    except ValueError:
        return None


# Pure, and a gateway sees few distinct hosts: a bounded cache turns the regex
# and ipaddress work (several microseconds) into one dict probe per request.
@lru_cache(maxsize=4096)
def normalize_host(raw: str | bytes) -> str | None:
    """
    Normalise a Host header (or the authority of an absolute-form target).

    The port is dropped (C{example.com:8080}, C{[::1]:80}), the name is
    lower-cased and one trailing dot removed.

    @return: the host as routes name it, or L{None} when C{raw} is not a valid
        host name or IP address (the proxy then answers 400).
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    else:
        text = raw
    text = text.strip(" \t")
    if text.startswith("["):
        match = _BRACKETED_HOST_HEADER.fullmatch(text)
        if match is None or not _port_ok(match["port"]):
            return None
        return _ipv6(match["name"])
    match = _HOST_HEADER.fullmatch(text)
    if match is None or not _port_ok(match["port"]):
        return None
    return normalize_hostname(match["name"])


def _port_ok(port: str | None) -> bool:
    # RFC 3986 allows an empty port after the colon.
    return not port or int(port) <= 65535


def split_absolute_form(raw: bytes) -> tuple[bytes, bytes] | None:
    """
    Split an absolute-form request target (C{http://host:port/path?query},
    RFC 9112 3.2.2) into its authority and its path-and-query.

    @return: C{(authority, path_and_query)}, the path starting with C{/}
        (C{/} when the URL has none); L{None} when C{raw} is not in
        absolute-form.  Pass the authority to L{normalize_host} and the rest
        to L{normalize_request_target}.
    @raise BadRequestTarget: for a scheme other than http/https, an empty
        authority or one carrying user information.
    """
    match = _ABSOLUTE_FORM.fullmatch(raw)
    if match is None:
        return None
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise BadRequestTarget(f"unsupported scheme {scheme.decode('ascii')!r}")
    if not authority:
        raise BadRequestTarget("absolute-form target without a host")
    if b"@" in authority:
        raise BadRequestTarget("user information is not allowed in the target")
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return authority, rest


def normalize_request_target(raw: bytes) -> tuple[str, str]:
    """
    Normalise an origin-form request target (C{/a/b?x=1}); an absolute-form
    one is reduced to its path and query first (its host is ignored here, see
    L{split_absolute_form}).

    @return: C{(path, query)}; C{path} always starts with C{/} and is what is
        both matched and forwarded upstream; C{query} is the text after the
        first C{?} (empty when there is none), unchanged except that non-ASCII
        bytes are percent-encoded.
    @raise BadRequestTarget: for anything that cannot be routed safely.
    """
    path, _, query = raw.partition(b"?")
    if _SIMPLE_PATH.fullmatch(path) is not None and path and (
        not query or _SIMPLE_QUERY.fullmatch(query) is not None
    ):
        return path.decode("ascii"), query.decode("ascii")
    return _normalize_slowly(raw)


def _normalize_slowly(raw: bytes) -> tuple[str, str]:
    if not raw.startswith(b"/"):
        absolute = split_absolute_form(raw)
        if absolute is None:
            raise BadRequestTarget("the request target must start with '/'")
        raw = absolute[1]
    _refuse_bad_bytes(raw)
    path, _, query = raw.partition(b"?")
    if _BAD_ESCAPE.search(path) is not None:
        raise BadRequestTarget("invalid percent-escape in the path")
    canonical = _PATH_REWRITE.sub(_rewrite_path_byte, path).decode("ascii")
    query = _QUERY_REWRITE.sub(_percent_encode, query)
    return _remove_dot_segments(canonical), query.decode("ascii")


def _refuse_bad_bytes(raw: bytes) -> None:
    bad = _REJECTED_BYTE.search(raw)
    if bad is None:
        return
    byte = bad.group()
    if byte == b"#":
        raise BadRequestTarget("a fragment ('#') is not allowed in a request target")
    if byte == b" ":
        raise BadRequestTarget("a space is not allowed in a request target")
    if byte == b"\x00":
        raise BadRequestTarget("NUL is not allowed in a request target")
    raise BadRequestTarget(f"control character 0x{byte[0]:02X} in the request target")


def _rewrite_path_byte(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    if escape is None:
        return _percent_encode(match)
    value = int(escape, 16)
    if value == 0:
        raise BadRequestTarget("an encoded NUL (%00) is not allowed in the path")
    if value in _UNRESERVED:
        return bytes((value,))
    return b"%" + escape.upper()


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


def _remove_dot_segments(path: str) -> str:
    """
    RFC 3986 5.2.4 on an absolute path, merging empty segments: C{..} above
    the root stays at the root; a trailing C{/}, C{.} or C{..} leaves a
    trailing slash.
    """
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    if not kept:
        return "/"
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing
