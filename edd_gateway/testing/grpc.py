"""
A real gRPC server (grpcio, on loopback, in its own threads) for tests of
the gateway's h2c backends, with no protoc: its methods take and return raw
bytes (identity serializers).  Also the gRPC wire format written by hand:
L{grpc_frame} (1 byte compressed flag, 4 bytes big-endian length, payload),
L{grpc_messages} and L{grpc_request}, the request head a gRPC client sends.

The service C{pkg.Service}: C{Echo} (unary, answers C{b"echo:" + request}),
C{Count} (server streaming: the request is a number n, the answers C{b"1"}
to n), C{Chat} (bidirectional: each request answered C{b"re:" + request} as
it comes), C{Missing} (aborts with NOT_FOUND, "no such thing", before any
answer: a trailers-only response) and C{Vanish} (server streaming: one
answer, C{b"partial"}, then the same abort, in trailers) and C{Whoami}
(unary: answers the X-Forwarded-For the call came with, and sets the
trailing metadata C{x-trailer: yes}).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from edd_gateway.routes.model import Target
from edd_gateway.testing.tools import require_module

SERVICE = "pkg.Service"


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message as it goes in DATA frames: uncompressed, length-prefixed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_messages(data: bytes) -> list[bytes]:
    """The messages of a response body (all of it); AssertionError on a partial or compressed one."""
    messages = []
    while data:
        assert len(data) >= 5 and data[0] == 0, f"not an uncompressed gRPC message: {data[:5]!r}"
        length = int.from_bytes(data[1:5], "big")
        assert len(data) >= 5 + length, f"a gRPC message cut short: {data!r}"
        messages.append(data[5:5 + length])
        data = data[5 + length:]
    return messages


def grpc_request(method: str, authority: str) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 request head of a call to C{pkg.Service/method}."""
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", f"/{SERVICE}/{method}".encode()),
            (b":authority", authority.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


@dataclass
class GrpcServer:
    """A started server; C{stop} it in the test's cleanup."""

    target: Target
    server: Any

    def stop(self) -> None:
        self.server.stop(0).wait(10)


def _echo(request: bytes, context: Any) -> bytes:
    return b"echo:" + request


def _count(request: bytes, context: Any) -> Iterator[bytes]:
    for n in range(1, int(request) + 1):
        yield str(n).encode()


def _chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield b"re:" + request


def _missing(request: bytes, context: Any) -> bytes:
    import grpc  # type: ignore[import-untyped]  # grpcio ships no types

    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort returns only by raising")


def _whoami(request: bytes, context: Any) -> bytes:
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "yes"),))
    return str(metadata.get("x-forwarded-for", "-")).encode()


def _vanish(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"partial"
    _missing(request, context)


def start_grpc_server() -> GrpcServer:
    """C{pkg.Service} on 127.0.0.1, a port of the kernel's choice; skips (or fails) without grpcio."""
    require_module("grpc")
    import grpc

    def same(data: bytes) -> bytes:
        return data

    kinds = {"Echo": (grpc.unary_unary_rpc_method_handler, _echo),
             "Count": (grpc.unary_stream_rpc_method_handler, _count),
             "Chat": (grpc.stream_stream_rpc_method_handler, _chat),
             "Missing": (grpc.unary_unary_rpc_method_handler, _missing),
             "Vanish": (grpc.unary_stream_rpc_method_handler, _vanish),
             "Whoami": (grpc.unary_unary_rpc_method_handler, _whoami)}
    handlers = {name: kind(behaviour, request_deserializer=same, response_serializer=same)
                for name, (kind, behaviour) in kinds.items()}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return GrpcServer(Target("127.0.0.1", port), server)
