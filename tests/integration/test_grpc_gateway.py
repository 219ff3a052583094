"""
gRPC through the real ``twistd edd-gateway``: a real grpcio client (in a
thread: its calls block) over TLS with ALPN h2, the gateway, and a real
grpcio server (edd_gateway.testing.grpc) behind a C{protocol: grpc} route,
reached over h2c.  Unary, server-streaming and bidirectional calls, large
messages, trailing metadata, the backend's own status passed through, and
the gateway's own gRPC-shaped answers (UNAVAILABLE, UNIMPLEMENTED).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, free_port, poll_until, require_module
from edd_gateway.testing.grpc import SERVICE, GrpcServer, start_grpc_server
from edd_gateway.testing.tls import write_pair, write_pem

HOST = "grpc.test"
T = TypeVar("T")


class GrpcGatewayMixin(EndToEndMixin):
    timeout = 120
    backend: GrpcServer
    channel: Any

    def method(self, kind: str, name: str) -> Any:
        make = getattr(self.channel, kind)
        return make(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)

    async def blocking(self, call: Callable[[], T]) -> T:
        """A grpcio call in a thread, so that the reactor (and the gateway's log reader) keeps running."""
        return await deferToThread(call)  # type: ignore[no-any-return]  # deferToThread is untyped

    async def rpc_error(self, method: Any, request: bytes = b"") -> Any:
        """The RpcError a unary C{method} raises (failing the test if the call succeeds)."""
        def call() -> Any:
            try:
                method(request, timeout=10)
            except self.grpc.RpcError as error:
                return error
            raise AssertionError("the call succeeded")

        return await self.blocking(call)

    async def start_backend_and_gateway(self, args: list[str], extra_routes: Sequence[dict[str, Any]] = ()) -> None:
        self.backend = start_grpc_server()
        self.addCleanup(self.backend.stop)  # type: ignore[attr-defined]  # a TestCase mixin
        routes = [{"host": HOST, "path": "/", "target": str(self.backend.target), "protocol": "grpc"},
                  {"host": "h2c.test", "path": "/", "target": str(self.backend.target), "protocol": "h2c"},
                  *extra_routes]
        self.gateway = await self.start_gateway(args, routes=routes)


class GrpcOverTLSTests(GrpcGatewayMixin, TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        require_module("grpc")
        import grpc  # type: ignore[import-untyped]  # grpcio ships no types

        self.grpc = grpc
        secrets = str(Path(self.mktemp()).absolute())
        certificate = write_pair(f"{secrets}/grpc", HOST, "down.test", "nowhere.test", "h2c.test", "h2c-down.test")
        root = Path(write_pem(Path(self.mktemp() + ".pem"), certificate)).read_bytes()
        down = f"127.0.0.1:{free_port()}"
        await self.start_backend_and_gateway(["--tls-dir", secrets], [
            {"host": "down.test", "path": "/", "target": down, "protocol": "grpc"},
            {"host": "h2c-down.test", "path": "/", "target": down, "protocol": "h2c"}])
        self.channel = self.secure_channel(HOST, root)
        self.root = root

    def secure_channel(self, authority: str, root: bytes) -> Any:
        channel = self.grpc.secure_channel(
            f"127.0.0.1:{self.gateway.port}", self.grpc.ssl_channel_credentials(root_certificates=root),
            options=[("grpc.ssl_target_name_override", HOST), ("grpc.default_authority", authority)])
        self.addCleanup(channel.close)
        return channel

    async def test_unary(self) -> None:
        answer = await self.blocking(lambda: self.method("unary_unary", "Echo")(b"hello", timeout=10))
        self.assertEqual(answer, b"echo:hello")

    async def test_server_streaming(self) -> None:
        answers = await self.blocking(lambda: list(self.method("unary_stream", "Count")(b"100", timeout=10)))
        self.assertEqual(answers, [str(n).encode() for n in range(1, 101)])

    async def test_bidirectional(self) -> None:
        messages = [b"m%d" % n for n in range(20)]
        answers = await self.blocking(lambda: list(self.method("stream_stream", "Chat")(iter(messages), timeout=10)))
        self.assertEqual(answers, [b"re:" + m for m in messages])

    async def test_large_messages_both_ways(self) -> None:
        """4 x 1 MiB each way: past every window, so flow control carries them."""
        messages = [bytes([n]) * (1 << 20) for n in range(4)]
        answers = await self.blocking(lambda: list(self.method("stream_stream", "Chat")(iter(messages), timeout=30)))
        self.assertEqual([len(a) for a in answers], [(1 << 20) + 3] * 4)
        self.assertEqual(answers, [b"re:" + m for m in messages])

    async def test_trailing_metadata_and_forwarded_for(self) -> None:
        def call() -> tuple[bytes, dict[str, str]]:
            answer, state = self.method("unary_unary", "Whoami").with_call(b"", timeout=10)
            return answer, dict(state.trailing_metadata())

        answer, trailers = await self.blocking(call)
        self.assertEqual(answer, b"127.0.0.1")
        self.assertEqual(trailers["x-trailer"], "yes")

    async def test_the_backend_status_passes_through(self) -> None:
        error = await self.rpc_error(self.method("unary_unary", "Missing"))
        self.assertEqual((error.code(), error.details()), (self.grpc.StatusCode.NOT_FOUND, "no such thing"))

    async def test_the_status_after_a_message_passes_through(self) -> None:
        def call() -> tuple[list[bytes], Any]:
            got: list[bytes] = []
            try:
                for answer in self.method("unary_stream", "Vanish")(b"", timeout=10):
                    got.append(answer)
            except self.grpc.RpcError as error:
                return got, error
            raise AssertionError("the call succeeded")

        got, error = await self.blocking(call)
        self.assertEqual(got, [b"partial"])
        self.assertEqual(error.code(), self.grpc.StatusCode.NOT_FOUND)

    async def failed_call(self, channel: Any) -> Any:
        return await self.rpc_error(channel.unary_unary(f"/{SERVICE}/Echo", request_serializer=None,
                                                        response_deserializer=None), b"x")

    async def test_a_backend_down_is_unavailable(self) -> None:
        error = await self.failed_call(self.secure_channel("down.test", self.root))
        self.assertEqual(error.code(), self.grpc.StatusCode.UNAVAILABLE)
        self.assertIn("127.0.0.1", error.details())

    async def test_no_route_is_unimplemented(self) -> None:
        error = await self.failed_call(self.secure_channel("nowhere.test", self.root))
        self.assertEqual(error.code(), self.grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("No route for host nowhere.test", error.details())

    async def test_http11_is_refused_with_505(self) -> None:
        response = await self.curl(f"https://{HOST}:{self.gateway.port}/{SERVICE}/Echo", "-k", "--http1.1",
                                   "--resolve", f"{HOST}:{self.gateway.port}:127.0.0.1", "-d", "x")
        self.assertEqual(response.status, 505)

    async def test_an_h2c_route_with_curl(self) -> None:
        """protocol: h2c to any HTTP/2 backend (the gRPC server here); its failures are the usual pages."""
        empty_message = Path(self.mktemp())
        empty_message.write_bytes(b"\x00\x00\x00\x00\x00")
        port = self.gateway.port
        answer = await self.curl(f"https://h2c.test:{port}/{SERVICE}/Echo", "-k", "--http2",
                                 "--resolve", f"h2c.test:{port}:127.0.0.1", "-H", "content-type: application/grpc",
                                 "-H", "te: trailers", "--data-binary", f"@{empty_message.absolute()}")
        self.assertEqual(answer.status, 200, answer.describe())
        # curl -D - writes the trailers after the body.
        self.assertTrue(answer.body.startswith(b"\x00\x00\x00\x00\x05echo:"), answer.describe())
        self.assertIn(b"grpc-status: 0", answer.body, answer.describe())
        down = await self.curl(f"https://h2c-down.test:{port}/", "-k", "--http2",
                               "--resolve", f"h2c-down.test:{port}:127.0.0.1")
        self.assertEqual(down.status, 502, down.describe())
        self.assertEqual(down.header("content-type"), "text/html; charset=utf-8", down.describe())

    async def test_the_access_log_and_metrics_count_the_calls(self) -> None:
        await self.blocking(lambda: self.method("unary_unary", "Echo")(b"hello", timeout=10))
        scrape = await self.scrape(self.gateway)
        self.assertGreaterEqual(scrape.value("edd_gateway_http2_events_total", event="stream"), 1)
        self.assertIn('"POST grpc.test/pkg.Service/Echo" 200', self.gateway.log_text())
        self.assertIn("proto=h2 grpc-status=0", self.gateway.log_text())



class GrpcPriorKnowledgeTests(GrpcGatewayMixin, TestCase):
    """The plain port with --h2c-prior-knowledge: grpc.insecure_channel and curl --http2-prior-knowledge."""

    async def setUp(self) -> None:  # type: ignore[override]
        require_module("grpc")
        import grpc

        self.grpc = grpc
        backend, _ = self.serve_echo()
        await self.start_backend_and_gateway(["--h2c-prior-knowledge", "--drain-timeout", "20"], [
            {"host": "web.test", "path": "/", "target": backend.target}])
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.port}",
                                             options=[("grpc.default_authority", HOST)])
        self.addCleanup(self.channel.close)

    async def test_unary_server_streaming_and_bidirectional(self) -> None:
        answer = await self.blocking(lambda: self.method("unary_unary", "Echo")(b"plain", timeout=10))
        self.assertEqual(answer, b"echo:plain")
        counted = await self.blocking(lambda: list(self.method("unary_stream", "Count")(b"5", timeout=10)))
        self.assertEqual(counted, [b"1", b"2", b"3", b"4", b"5"])
        chat = await self.blocking(lambda: list(self.method("stream_stream", "Chat")(iter([b"a", b"b"]), timeout=10)))
        self.assertEqual(chat, [b"re:a", b"re:b"])
        self.assertIn("proto=h2c grpc-status=0", self.gateway.log_text())

    async def test_the_backend_status_passes_through(self) -> None:
        error = await self.rpc_error(self.method("unary_unary", "Missing"))
        self.assertEqual(error.code(), self.grpc.StatusCode.NOT_FOUND)

    async def test_a_call_in_flight_finishes_through_the_drain(self) -> None:
        """SIGTERM: the client's connection gets GOAWAY, but the stream it has open goes on to its end."""
        go_on = threading.Event()

        def requests() -> Any:
            yield b"before"
            go_on.wait(20)
            yield b"after"

        call = self.method("stream_stream", "Chat")(requests(), timeout=30)
        self.assertEqual(await self.blocking(lambda: next(call)), b"re:before")
        self.gateway.signal(signal.SIGTERM)
        await poll_until(lambda: "drain: readiness off" in self.gateway.log_text(), "the drain to begin")
        go_on.set()
        self.assertEqual(await self.blocking(lambda: list(call)), [b"re:after"])
        self.assertEqual(call.code(), self.grpc.StatusCode.OK)
        await poll_until(lambda: "drain: every connection finished" in self.gateway.log_text(), "the drain to end")

    async def test_curl_prior_knowledge(self) -> None:
        """curl speaks h2c to the gateway: a gRPC route answers (trailers-only, an empty call), a site 421s."""
        empty_message = Path(self.mktemp())
        empty_message.write_bytes(b"\x00\x00\x00\x00\x00")
        grpc_route = await self.curl(f"http://{HOST}:{self.gateway.port}/{SERVICE}/Missing", "--http2-prior-knowledge",
                                     "--resolve", f"{HOST}:{self.gateway.port}:127.0.0.1",
                                     "-H", "content-type: application/grpc", "-H", "te: trailers",
                                     "--data-binary", f"@{empty_message.absolute()}")
        self.assertEqual(grpc_route.status, 200, grpc_route.describe())
        self.assertEqual(grpc_route.header("grpc-status"), "5", grpc_route.describe())
        site = await self.curl(f"http://web.test:{self.gateway.port}/", "--http2-prior-knowledge",
                               "--resolve", f"web.test:{self.gateway.port}:127.0.0.1")
        self.assertEqual(site.status, 421, site.describe())
        plain = await self.curl(f"http://web.test:{self.gateway.port}/", "--resolve",
                                f"web.test:{self.gateway.port}:127.0.0.1")
        self.assertEqual(plain.status, 200, plain.describe())


class PriorKnowledgeOffTests(EndToEndMixin, TestCase):
    timeout = 60

    async def test_without_the_option_the_preface_gets_goaway(self) -> None:
        gateway = await self.start_gateway(routes=[])
        connection = await self.raw(gateway.port)
        connection.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = await connection.read_until_closed()
        # SETTINGS, then GOAWAY (type 7) with HTTP_1_1_REQUIRED (0xd).
        self.assertEqual(answer[3:4], b"\x04")
        self.assertEqual(answer[9 + 3:9 + 4], b"\x07")
        self.assertEqual(answer[-4:], b"\x00\x00\x00\x0d")
