"""
The gateway's logs: everything goes through C{twisted.logger}, to twistd's
text log file by default or, with C{twistd --logger=edd_gateway.ops.logs.json_to_stdout},
as one JSON object per line on stdout (L{json_observer}); and the access
log (L{AccessLog}), an observer of L{edd_gateway.ops.observe} that turns every
HTTP request, byte tunnel and SSH session into one event in the
C{edd_gateway.access} namespace.  Field names and line formats are
documented in docs/logging.md.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable

from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.compat import ioType
from twisted.python.failure import Failure
from twisted.python.reflect import safe_repr
from zope.interface import implementer

from .observe import HTTPRequestRecord, SSHSessionRecord, TunnelRecord

__all__ = ["ACCESS_NAMESPACE", "AccessLog", "JSONLinesObserver", "json_observer", "json_to_stdout"]

ACCESS_NAMESPACE = "edd_gateway.access"


# --- JSON lines ---------------------------------------------------------------

# The keys the JSON observer writes itself; an event field of the same name
# is left out (the message shows it when the format uses it).
_TOP_LEVEL = frozenset({"time", "level", "namespace", "message", "error"})

# What twisted.python.log.msg puts in an event besides its own fields (and
# LegacyLogObserverWrapper adds to new-style ones): rendered in "message"
# and "error" instead.
_LEGACY_KEYS = frozenset({"message", "time", "isError", "format", "failure", "why", "system"})


def _fallback(value: object) -> object:
    """C{json.dumps}'s C{default}: bytes as text, anything else as its repr; never raises."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return [safe_repr(item) for item in value]
    return safe_repr(value)


# allow_nan=False: NaN and Infinity are not JSON, and collectors that parse
# strictly drop the whole line; such a value falls back to its repr.
_dumps: Callable[[object], str] = json.JSONEncoder(
    default=_fallback, allow_nan=False, separators=(",", ":")
).encode


def _encode(record: dict[str, Any]) -> str:
    try:
        return _dumps(record)
    except Exception:
        # NaN, a reference cycle, a dict with non-string keys, a recursion
        # too deep: only the offending fields become their repr.
        safe: dict[str, Any] = {}
        for key, value in record.items():
            try:
                _dumps(value)
            except Exception:
                value = safe_repr(value)
            safe[key] = value
        return _dumps(safe)


class _UTCClock:
    """ISO 8601 UTC with milliseconds; strftime runs once per second, not once per event."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, when: float) -> str:
        second, millis = divmod(int(when * 1000), 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{millis:03d}Z"


def _traceback(failure: object) -> str:
    if not isinstance(failure, Failure):
        return safe_repr(failure)
    try:
        return failure.getTraceback()
    except Exception as problem:
        return f"(cannot format the traceback: {safe_repr(problem)})"


def _message(event: dict[str, Any]) -> str:
    if event.get("log_format") == "{log_text}" and isinstance(event.get("log_text"), str):
        return event["log_text"]  # pre-rendered: the access log and legacy text
    return formatEvent(event)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one JSON object on one line, and flushes: C{time},
    C{level}, C{namespace}, C{message}, the event's own fields (not the
    C{log_*} internals; a value JSON cannot hold becomes its repr), and
    C{error} with the traceback when the event carries a failure.  Legacy
    C{twisted.python.log} events come out the same way.
    """

    def __init__(self, stream: IO[Any]) -> None:
        self._stream = stream
        self._binary = ioType(stream) is not str
        self._clock = _UTCClock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = self.render(event) + "\n"
        self._stream.write(line.encode("ascii") if self._binary else line)
        self._stream.flush()

    def render(self, event: dict[str, Any]) -> str:
        """The JSON object for C{event}, without the newline."""
        level = getattr(event.get("log_level"), "name", None)
        when = event.get("log_time")
        record: dict[str, Any] = {
            "time": self._clock(when if isinstance(when, (int, float)) else time.time()),
            "level": level if isinstance(level, str) else "info",
            "namespace": str(event.get("log_namespace", "-")),
        }
        failure = event.get("log_failure")
        legacy = isinstance(event.get("message"), tuple) and "isError" in event
        if legacy and failure is None and event.get("isError") and "failure" in event:
            # log.err(failure, why): the traceback goes to "error", not into the message.
            failure = event["failure"]
            record["message"] = str(event.get("why") or "Unhandled Error")
        else:
            record["message"] = _message(event)
        if legacy:
            system = event.get("log_system", event.get("system"))
            if system not in (None, "-"):
                record["system"] = str(system)
        for key, value in event.items():
            if key.startswith("log_") or key in _TOP_LEVEL or (legacy and key in _LEGACY_KEYS):
                continue
            record[key] = value
        if failure is not None:
            record["error"] = _traceback(failure)
        return _encode(record)


def json_observer(stream: IO[Any]) -> JSONLinesObserver:
    """An observer writing JSON lines to C{stream} (text or binary)."""
    return JSONLinesObserver(stream)


def json_to_stdout() -> JSONLinesObserver:
    """
    For C{twistd --logger=edd_gateway.ops.logs.json_to_stdout}: twistd calls it
    with no arguments before it redirects C{sys.stdout} into the log, so the
    stream taken here is the process's real stdout.
    """
    return json_observer(sys.stdout)


# --- access log ---------------------------------------------------------------

# Bytes that could end or forge a line, or a quoted field, in the text log:
# C0 controls (CR, LF, ESC...), the double quote, DEL, and the C1 controls
# that these bytes become when decoded as latin-1.
_UNSAFE_BYTES = bytes(range(0x20)) + b'"' + bytes(range(0x7F, 0xA0))


def _clean_bytes(value: bytes) -> str:
    return value.translate(None, _UNSAFE_BYTES).decode("latin-1")


def _clean_text(value: str) -> str:
    """A name the client chose (the SSH user): printable, no quotes or spaces."""
    if value.isprintable() and '"' not in value and " " not in value:
        return value
    return "".join(c for c in value if c.isprintable() and c not in '" ')


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


class AccessLog:
    """
    One C{edd_gateway.access} event per HTTP request, tunnel and SSH session
    (an L{edd_gateway.ops.observe.GatewayObserver}).  Each event carries its
    fields for structured output and its text line, pre-rendered, as
    C{log_text} with the format C{"{log_text}"} (as Twisted itself does for
    legacy events): twistd's text log file shows the line, the JSON output
    the line as C{message} plus the fields.  Rendering the line once with
    an f-string costs 0.5 us; the same line as a twisted.logger format,
    rendered by each observer, costs 16 us.

    Cost per HTTP request, measured with timeit on CPython 3.11 (a 2-core
    shared VM, best of 7): 2.9 us from the call to the observer, the line
    and the event included (a bare Logger.info with the same fields costs
    3.3 us: hence L{_emit}); 17.7 us in all with twistd's text log file
    observer writing to a file, whose own formatTime (6 us), formatEvent
    (3 us) and write and flush (2 us) are most of it; 14.6 us in all with
    L{json_observer}.
    """

    def __init__(self, logger: Logger | None = None) -> None:
        self._logger = logger if logger is not None else Logger(namespace=ACCESS_NAMESPACE)
        self._observer = self._logger.observer
        self._event_keys = {
            "log_logger": self._logger,
            "log_level": LogLevel.info,
            "log_namespace": self._logger.namespace,
            "log_source": self._logger.source,
            "log_format": "{log_text}",
        }

    def _emit(self, line: str, event: dict[str, Any]) -> None:
        # What Logger.info does, without Logger.emit's check of the level
        # against every LogLevel constant (a third of the cost of a call).
        event.update(self._event_keys)
        event["log_text"] = line
        event["log_time"] = time.time()
        self._observer(event)

    def http_request(self, request: HTTPRequestRecord, now: float) -> None:
        client = request.client_ip
        method = _clean_bytes(request.method)
        raw_host = request.host
        host = None if raw_host is None else _clean_bytes(raw_host)
        target = _clean_bytes(request.request_target)
        status = request.status
        route = request.route_label
        backend = request.backend
        bytes_out = request.bytes_out
        request_id = request.request_id
        started = request.started
        responded = request.responded
        duration_ms = _ms(now - started)
        proto = request.proto
        line = (f'{client} "{method} {host or ""}{target}" {status} {bytes_out} {duration_ms}ms '
                f"route={route} backend={backend} id={request_id}")
        if proto != "http/1.1":
            line += f" proto={proto}"
        grpc_status = request.grpc_status
        if grpc_status:
            line += f" grpc-status={grpc_status}"
        self._emit(line, {
            "kind": "http",
            "client": client,
            "scheme": request.scheme,
            "proto": proto,
            "method": method,
            "host": host,
            "target": target,
            "status": status,
            "route": route,
            "backend": backend,
            "bytes_in": request.bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": duration_ms,
            "upstream_ms": None if responded is None else _ms(responded - started),
            "request_id": request_id,
            "completed": request.completed,
            **({"grpc_status": grpc_status} if grpc_status else {}),
        })

    def tunnel(self, record: TunnelRecord) -> None:
        duration_ms = _ms(record.ended - record.started)
        line = (f"{record.client_ip} {record.kind} up={record.bytes_up} down={record.bytes_down} "
                f"{duration_ms}ms route={record.route_label} backend={record.backend} id={record.request_id}")
        self._emit(line, {
            "kind": record.kind,
            "client": record.client_ip,
            "route": record.route_label,
            "backend": record.backend,
            "bytes_up": record.bytes_up,
            "bytes_down": record.bytes_down,
            "duration_ms": duration_ms,
            "request_id": record.request_id,
        })

    def ssh_session(self, record: SSHSessionRecord) -> None:
        user, container = _clean_text(record.username), _clean_text(record.container)
        duration_ms = _ms(record.ended - record.started)
        line = (f"{record.client_ip} ssh {user or '-'} {record.outcome} up={record.bytes_up} "
                f"down={record.bytes_down} {duration_ms}ms container={container or '-'} backend={record.backend}")
        self._emit(line, {
            "kind": "ssh",
            "client": record.client_ip,
            "user": user,
            "container": container,
            "backend": record.backend,
            "outcome": record.outcome,
            "bytes_up": record.bytes_up,
            "bytes_down": record.bytes_down,
            "duration_ms": duration_ms,
        })

    def http2(self, event: str, code: str) -> None:
        pass

    def ssh_login(self, outcome: str) -> None:
        """Logins are counted by the metrics and logged by the SSH door itself."""
