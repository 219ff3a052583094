"""
Tests for L{edd_gateway.ops.logs}: the JSON lines observer (fields, values JSON
cannot hold, failures, legacy C{twisted.python.log} events) and the access
log (the events' fields and their text lines, hostile request heads).
"""

from __future__ import annotations

import io
import json
import sys
from types import SimpleNamespace
from typing import Any

from twisted.logger import LegacyLogObserverWrapper, Logger, LogLevel, LogPublisher, formatEvent, textFileLogObserver
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ops.logs import ACCESS_NAMESPACE, AccessLog, json_observer, json_to_stdout
from edd_gateway.ops.observe import GatewayObserver, SSHSessionRecord, TunnelRecord

# 2024-05-01T12:34:56.789Z
WHEN = 1714566896.789


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def failure() -> Failure:
    try:
        raise ValueError("broken backend")
    except ValueError:
        return Failure()


class JSONObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.publisher = LogPublisher(json_observer(self.stream))
        self.log = Logger(namespace="edd_gateway.test", observer=self.publisher)

    def lines(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        self.assertTrue(text.endswith("\n"), text)
        self.assertNotIn("\x1e", text, "JSON lines, not RFC 7464 record separators")
        return [json.loads(line) for line in text.splitlines()]

    def test_one_object_per_line_with_the_fields(self) -> None:
        self.log.info("loaded {count} routes from {path}", count=3, path="/etc/routes.yaml")
        self.log.warn("second\nline {x}", x="y")
        first, second = self.lines()
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "edd_gateway.test")
        self.assertEqual(first["message"], "loaded 3 routes from /etc/routes.yaml")
        self.assertEqual((first["count"], first["path"]), (3, "/etc/routes.yaml"))
        self.assertNotIn("error", first)
        self.assertFalse([key for key in first if key.startswith("log_")], first)
        self.assertEqual((second["level"], second["message"]), ("warn", "second\nline y"))

    def test_time_is_iso_8601_utc_with_milliseconds(self) -> None:
        self.publisher({"log_time": WHEN, "log_format": "a", "log_level": LogLevel.info})
        self.publisher({"log_time": WHEN + 1.0005, "log_format": "b", "log_level": LogLevel.info})
        self.publisher({"log_time": 0.0, "log_format": "c", "log_level": LogLevel.debug})
        times = [line["time"] for line in self.lines()]
        self.assertEqual(times, ["2024-05-01T12:34:56.789Z", "2024-05-01T12:34:57.789Z", "1970-01-01T00:00:00.000Z"])

    def test_unserialisable_fields_become_text(self) -> None:
        self.log.info("odd values", obj=object(), raw=b"\xffbytes", nan=float("nan"), tuple_keys={(1, 2): 3},
                      bad=Unprintable(), things={1}, nested={"ok": [1, 2.5, None, True]})
        cycle: list[Any] = []
        cycle.append(cycle)
        self.log.info("cycle {n}", n=1, cycle=cycle)
        odd, cyclic = self.lines()
        self.assertEqual(odd["message"], "odd values")
        self.assertIn("object object at", odd["obj"])
        self.assertEqual(odd["raw"], "\\xffbytes")
        self.assertEqual(odd["nan"], "nan")
        self.assertEqual(odd["tuple_keys"], "{(1, 2): 3}")
        self.assertIn("Unprintable", odd["bad"])
        self.assertEqual(odd["things"], ["1"])
        self.assertEqual(odd["nested"], {"ok": [1, 2.5, None, True]})
        self.assertEqual((cyclic["message"], cyclic["cycle"]), ("cycle 1", "[[...]]"))

    def test_bad_format_still_a_line(self) -> None:
        self.log.info("{missing} and {", present=1)
        (line,) = self.lines()
        self.assertIn("Unable to format event", line["message"])
        self.assertEqual(line["present"], 1)

    def test_failure_traceback_in_error(self) -> None:
        self.log.failure("request {n} failed", failure(), n=7)
        (line,) = self.lines()
        self.assertEqual((line["level"], line["message"], line["n"]), ("critical", "request 7 failed", 7))
        self.assertIn("Traceback", line["error"])
        self.assertIn("ValueError: broken backend", line["error"])

    def test_top_level_keys_not_overwritten_by_fields(self) -> None:
        self.log.info("{message} at {time}", message="hello", time="noon", namespace="y", error="e")
        (line,) = self.lines()
        self.assertEqual((line["message"], line["level"], line["namespace"]), ("hello at noon", "info",
                                                                                 "edd_gateway.test"))
        self.assertTrue(line["time"].endswith("Z"))

    def test_legacy_message(self) -> None:
        legacy = legacy_log.LogPublisher(publishPublisher=self.publisher)
        legacy.msg("Starting factory", "<Factory>", system="HTTPChannel,3,127.0.0.1", extra=5)
        (line,) = self.lines()
        self.assertEqual(line["message"], "Starting factory <Factory>")
        self.assertEqual((line["level"], line["namespace"]), ("info", "log_legacy"))
        self.assertEqual((line["system"], line["extra"]), ("HTTPChannel,3,127.0.0.1", 5))
        self.assertFalse({"isError", "format", "why", "failure"} & set(line), line)

    def test_legacy_error(self) -> None:
        legacy = legacy_log.LogPublisher(publishPublisher=self.publisher)
        legacy.msg(failure=failure(), why="Unhandled error in Deferred:", isError=1)
        legacy.msg(failure=failure(), isError=1)
        legacy.msg("plain text error", isError=1)
        with_why, without_why, text_only = self.lines()
        self.assertEqual((with_why["level"], with_why["message"]), ("critical", "Unhandled error in Deferred:"))
        self.assertIn("ValueError: broken backend", with_why["error"])
        self.assertEqual(without_why["message"], "Unhandled Error")
        self.assertIn("ValueError: broken backend", without_why["error"])
        self.assertEqual((text_only["level"], text_only["message"]), ("critical", "plain text error"))
        self.assertNotIn("error", text_only)

    def test_new_style_event_seen_by_a_legacy_observer_first(self) -> None:
        # Twisted's LegacyLogObserverWrapper adds the legacy keys to the
        # event in place; the JSON line must not change.
        seen: list[dict[str, Any]] = []
        publisher = LogPublisher(LegacyLogObserverWrapper(seen.append), json_observer(self.stream))
        Logger(namespace="edd_gateway.test", observer=publisher).info("hello {who}", who="you")
        self.assertIn("isError", seen[0])
        (line,) = self.lines()
        self.assertEqual((line["message"], line["who"]), ("hello you", "you"))
        self.assertFalse({"isError", "format", "system"} & set(line), line)

    def test_binary_stream(self) -> None:
        stream = io.BytesIO()
        Logger(observer=json_observer(stream)).info("caf\xe9 {x}", x="\u2603")
        line = json.loads(stream.getvalue().decode("ascii"))
        self.assertEqual((line["message"], line["x"]), ("caf\xe9 \u2603", "\u2603"))

    def test_json_to_stdout_takes_no_arguments(self) -> None:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        observer = json_to_stdout()
        Logger(observer=observer).info("to stdout")
        self.assertEqual(json.loads(stdout.getvalue())["message"], "to stdout")


def http_record(**overrides: Any) -> SimpleNamespace:
    """The attributes of an L{edd_gateway.ops.observe.HTTPRequestRecord}."""
    fields: dict[str, Any] = dict(
        client_ip="203.0.113.9", scheme="https", method=b"GET", host=b"app.test",
        request_target=b"/some/path?x=1", status=200, route_label="app.test/", backend="10.0.0.5:8000",
        bytes_in=12, bytes_out=3456, started=100.0, responded=100.0042, request_id="req-1", completed=True,
        proto="http/1.1", grpc_status="",
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.access = AccessLog(Logger(namespace=ACCESS_NAMESPACE, observer=self.events.append))

    def only_event(self) -> dict[str, Any]:
        (event,) = self.events
        self.assertEqual((event["log_namespace"], event["log_level"]), (ACCESS_NAMESPACE, LogLevel.info))
        self.assertIsInstance(event["log_time"], float)
        return event

    def fields(self, event: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in event.items() if not key.startswith("log_")}

    def test_is_a_gateway_observer(self) -> None:
        observer: GatewayObserver = self.access
        observer.ssh_login("accepted")
        self.assertEqual(self.events, [])

    def test_default_logger_namespace(self) -> None:
        self.assertEqual(AccessLog()._logger.namespace, ACCESS_NAMESPACE)

    def test_http_request(self) -> None:
        self.access.http_request(http_record(), 100.01234)  # type: ignore[arg-type]
        event = self.only_event()
        self.assertEqual(self.fields(event), {
            "kind": "http", "client": "203.0.113.9", "scheme": "https", "proto": "http/1.1", "method": "GET",
            "host": "app.test", "target": "/some/path?x=1", "status": 200, "route": "app.test/", "backend": "10.0.0.5:8000",
            "bytes_in": 12, "bytes_out": 3456, "duration_ms": 12.3, "upstream_ms": 4.2, "request_id": "req-1",
            "completed": True,
        })
        self.assertEqual(formatEvent(event), '203.0.113.9 "GET app.test/some/path?x=1" 200 3456 12.3ms '
                                             'route=app.test/ backend=10.0.0.5:8000 id=req-1')

    def test_http2_request_says_so(self) -> None:
        self.access.http_request(http_record(proto="h2"), 100.01234)  # type: ignore[arg-type]
        event = self.only_event()
        self.assertEqual(self.fields(event)["proto"], "h2")
        self.assertTrue(formatEvent(event).endswith(" id=req-1 proto=h2"), formatEvent(event))

    def test_a_grpc_call_names_its_status(self) -> None:
        self.access.http_request(http_record(proto="h2", grpc_status="5"), 100.01234)  # type: ignore[arg-type]
        event = self.only_event()
        self.assertEqual(self.fields(event)["grpc_status"], "5")
        self.assertTrue(formatEvent(event).endswith(" proto=h2 grpc-status=5"), formatEvent(event))

    def test_http_request_answered_by_the_gateway(self) -> None:
        record = http_record(method=b"-", host=None, request_target=b"-", status=400, route_label="-",
                             backend="-", responded=None, bytes_in=0, bytes_out=0, scheme="http")
        self.access.http_request(record, 100.0)  # type: ignore[arg-type]
        event = self.only_event()
        self.assertEqual((event["host"], event["upstream_ms"], event["duration_ms"]), (None, None, 0.0))
        self.assertEqual(formatEvent(event), '203.0.113.9 "- -" 400 0 0.0ms route=- backend=- id=req-1')

    def test_hostile_head_cannot_forge_a_line(self) -> None:
        forged = b'/x" 200 1 1.0ms route=a backend=b id=c\r\n198.51.100.1 "GET /admin\x1b[2J\x00\x7f\x85'
        record = http_record(host=b'evil"\n.test', request_target=forged, method=b"G\tET")
        self.access.http_request(record, 100.5)  # type: ignore[arg-type]
        event = self.only_event()
        line = formatEvent(event)
        self.assertEqual(line.count('"'), 2, line)
        self.assertTrue(line.isprintable(), repr(line))
        self.assertEqual(line, '203.0.113.9 "GET evil.test/x 200 1 1.0ms route=a backend=b id=c198.51.100.1 GET '
                               '/admin[2J" 200 3456 500.0ms route=app.test/ backend=10.0.0.5:8000 id=req-1')
        self.assertEqual((event["method"], event["host"]), ("GET", "evil.test"))
        self.assertNotIn('"', event["target"])
        # The text log file shows it as one line too.
        out = io.StringIO()
        textFileLogObserver(out)(event)
        self.assertEqual(out.getvalue().count("\n"), 1, out.getvalue())

    def test_latin1_bytes_kept(self) -> None:
        self.access.http_request(http_record(request_target=b"/caf\xe9"), 100.0)  # type: ignore[arg-type]
        self.assertEqual(self.only_event()["target"], "/caf\xe9")

    def test_tunnel(self) -> None:
        self.access.tunnel(TunnelRecord(kind="websocket", client_ip="203.0.113.9", route_label="app.test/ws",
                                        backend="10.0.0.5:8000", bytes_up=120, bytes_down=4500, started=50.0,
                                        ended=62.34567, request_id="req-2"))
        event = self.only_event()
        self.assertEqual(self.fields(event), {
            "kind": "websocket", "client": "203.0.113.9", "route": "app.test/ws", "backend": "10.0.0.5:8000",
            "bytes_up": 120, "bytes_down": 4500, "duration_ms": 12345.7, "request_id": "req-2",
        })
        self.assertEqual(formatEvent(event), "203.0.113.9 websocket up=120 down=4500 12345.7ms "
                                             "route=app.test/ws backend=10.0.0.5:8000 id=req-2")

    def test_tls_passthrough_tunnel_without_request_id(self) -> None:
        self.access.tunnel(TunnelRecord(kind="tls-passthrough", client_ip="2001:db8::1", route_label="db.test/",
                                        backend="10.0.0.6:443", bytes_up=1, bytes_down=2, started=1.0, ended=1.0))
        self.assertEqual(formatEvent(self.only_event()), "2001:db8::1 tls-passthrough up=1 down=2 0.0ms "
                                                         "route=db.test/ backend=10.0.0.6:443 id=-")

    def test_ssh_session(self) -> None:
        self.access.ssh_session(SSHSessionRecord(
            client_ip="203.0.113.9", username="abc123", container="abc123", backend="10.0.0.7:22",
            outcome="relayed", bytes_up=300, bytes_down=9000, started=10.0, ended=70.0))
        event = self.only_event()
        self.assertEqual(self.fields(event), {
            "kind": "ssh", "client": "203.0.113.9", "user": "abc123", "container": "abc123",
            "backend": "10.0.0.7:22", "outcome": "relayed", "bytes_up": 300, "bytes_down": 9000,
            "duration_ms": 60000.0,
        })
        self.assertEqual(formatEvent(event), "203.0.113.9 ssh abc123 relayed up=300 down=9000 60000.0ms "
                                             "container=abc123 backend=10.0.0.7:22")

    def test_ssh_hostile_username(self) -> None:
        self.access.ssh_session(SSHSessionRecord(
            client_ip="203.0.113.9", username='x" refused\n1.2.3.4 ssh root relayed', container="",
            backend="-", outcome="refused", bytes_up=0, bytes_down=0, started=10.0, ended=10.25))
        line = formatEvent(self.only_event())
        self.assertEqual(line, "203.0.113.9 ssh xrefused1.2.3.4sshrootrelayed refused up=0 down=0 250.0ms "
                               "container=- backend=-")

    def test_json_output_of_an_access_event(self) -> None:
        stream = io.StringIO()
        access = AccessLog(Logger(namespace=ACCESS_NAMESPACE, observer=json_observer(stream)))
        access.http_request(http_record(), 100.01234)  # type: ignore[arg-type]
        line = json.loads(stream.getvalue())
        self.assertEqual((line["namespace"], line["level"]), (ACCESS_NAMESPACE, "info"))
        self.assertEqual(line["message"], '203.0.113.9 "GET app.test/some/path?x=1" 200 3456 12.3ms '
                                          'route=app.test/ backend=10.0.0.5:8000 id=req-1')
        self.assertEqual((line["client"], line["status"], line["route"], line["request_id"], line["upstream_ms"]),
                         ("203.0.113.9", 200, "app.test/", "req-1", 4.2))
