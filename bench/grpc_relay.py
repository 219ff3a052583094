"""
gRPC through the gateway: ``python bench/grpc_relay.py`` starts a grpcio server
(identity serializers, no protoc) and the gateway with
``--h2c-prior-knowledge`` and a ``protocol: grpc`` route to it, then
measures the same calls straight at the server and through the gateway:

- unary calls with ``h2load`` (one at a time, then 10 connections x 10
  streams): requests/s and the mean time per request;
- a bidirectional call of 1 MiB messages both ways, from a grpcio client: MiB/s;
- backpressure: a server streaming 1 MiB messages as fast as it can to a
  client that stops reading for a while: what the server managed to send
  meanwhile and the gateway's RSS (flow control should hold both flat),
  then the rate once the client reads again.

Needs grpcio (``pip install '.[test]'``) and h2load (Debian: nghttp2-client).
Everything started is stopped on exit.  Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _procs import ProcessSet, free_port, rss_kib, run_tool, wait_listening  # noqa: E402
from tls import REPO_ROOT, twistd  # noqa: E402

SERVICE = "bench.Service"
HOST = "grpc.bench"
MIB = 1 << 20
_FINISHED = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
_MEAN = re.compile(r"time for request:\s+\S+\s+\S+\s+(\S+)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="unary calls per h2load run (5000)")
    parser.add_argument("--mib", type=int, default=128, help="MiB each way of the bidirectional call (128)")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds the slow client stops reading (5)")
    parser.add_argument("--python", default=sys.executable, help="the Python whose twistd runs the gateway")
    return parser.parse_args(argv)


class Server:
    """The grpcio server: Echo (unary), Chat (bidirectional), Flood (1 MiB messages until cancelled)."""

    def __init__(self) -> None:
        import grpc  # type: ignore[import-untyped]  # grpcio ships no types

        self.flooded = 0
        same: Callable[[bytes], bytes] = lambda data: data  # noqa: E731
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request,
                                                        request_deserializer=same, response_serializer=same),
            "Chat": grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(requests),
                                                          request_deserializer=same, response_serializer=same),
            "Flood": grpc.unary_stream_rpc_method_handler(self._flood, request_deserializer=same,
                                                          response_serializer=same),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_receive_message_length", 8 * MIB)])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _flood(self, request: bytes, context: Any) -> Iterator[bytes]:
        chunk = b"z" * MIB
        while context.is_active():
            self.flooded += 1
            yield chunk

    def stop(self) -> None:
        self.server.stop(0)


def start_gateway(procs: ProcessSet, workdir: Path, python: str, backend_port: int) -> tuple[Any, int]:
    port = free_port()
    routes = workdir / "routes.yaml"
    routes.write_text(f'routes:\n  - {{host: {HOST}, path: /, target: "127.0.0.1:{backend_port}", protocol: grpc}}\n')
    command = (f"{twistd(python)} -n --pidfile= --logfile={workdir / 'gateway.log'} edd-gateway "
               f"--routes {routes} --listen tcp:{port}:interface=127.0.0.1 --admin none --no-access-log "
               f"--h2c-prior-knowledge --dev-cert-dir {workdir / 'dev'} --state-file {workdir / 'state/pins.json'} "
               f"--ssh-host-key {workdir / 'host_key'} --ssh-client-key {workdir / 'client_key'}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    started = procs.start("gateway", shlex.split(command), env=env, cwd=workdir)
    wait_listening(started, port)
    return started, port


def unary(port: int, authority: str, requests: int, clients: int, streams: int, message: Path) -> tuple[float, str]:
    tool = shutil.which("h2load")
    if tool is None:
        raise SystemExit("h2load is not installed (Debian: nghttp2-client)")
    out = run_tool([tool, "-n", str(requests), "-c", str(clients), "-m", str(streams), "-d", str(message),
                    "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f":authority: {authority}",
                    f"http://127.0.0.1:{port}/{SERVICE}/Echo"], timeout=300)
    if f"{requests} succeeded" not in out:
        raise RuntimeError(f"h2load: not every call succeeded: {out[-800:]}")
    rate, mean = _FINISHED.search(out), _MEAN.search(out)
    assert rate is not None and mean is not None, out[-800:]
    return float(rate[1]), mean[1]


def channel(port: int, authority: str) -> Any:
    import grpc

    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.default_authority", authority), ("grpc.max_receive_message_length", 8 * MIB),
        ("grpc.max_send_message_length", 8 * MIB)])


def bidirectional(port: int, authority: str, mib: int) -> float:
    with channel(port, authority) as chan:
        chat = chan.stream_stream(f"/{SERVICE}/Chat", request_serializer=None, response_deserializer=None)
        message = b"y" * MIB
        started = time.perf_counter()
        received = sum(len(answer) for answer in chat(iter([message] * mib), timeout=300))
        elapsed = time.perf_counter() - started
    assert received == mib * MIB, received
    return mib / elapsed


def backpressure(port: int, server: Server, gateway_pid: int, pause: float) -> dict[str, float]:
    with channel(port, HOST) as chan:
        flood = chan.unary_stream(f"/{SERVICE}/Flood", request_serializer=None, response_deserializer=None)
        call = flood(b"", timeout=300)
        next(call)
        before = (rss_kib(gateway_pid) or 0) / 1024
        time.sleep(pause)
        sent_while_paused, rss_paused = server.flooded, (rss_kib(gateway_pid) or 0) / 1024
        time.sleep(pause)
        sent_later = server.flooded
        started = time.perf_counter()
        for _ in range(200):
            next(call)
        rate = 200 / (time.perf_counter() - started)
        call.cancel()
    return {"rss_before_mib": before, "rss_paused_mib": rss_paused, "sent_after_pause_mib": sent_while_paused,
            "sent_after_twice_the_pause_mib": sent_later, "read_again_mib_s": rate}


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        server = Server()
    except ImportError:
        raise SystemExit("grpcio is not installed: pip install '.[test]'") from None
    workdir = Path(tempfile.mkdtemp(prefix="edd-bench-grpc-"))
    message = workdir / "message.bin"
    message.write_bytes(b"\x00\x00\x00\x00\x01x")  # one gRPC message of one byte
    try:
        with ProcessSet(workdir) as procs:
            gateway, port = start_gateway(procs, workdir, args.python, server.port)
            peers = {"direct": (server.port, f"127.0.0.1:{server.port}"), "gateway": (port, HOST)}
            unary(port, HOST, 500, 1, 1, message)  # warm-up
            print(f"unary calls, h2load -n {args.requests} (mean time per request in brackets)")
            for clients, streams in ((1, 1), (10, 10)):
                for name, (peer_port, authority) in peers.items():
                    rate, mean = unary(peer_port, authority, args.requests, clients, streams, message)
                    print(f"  -c{clients} -m{streams} {name:8} {rate:9,.0f} calls/s ({mean})", flush=True)
            print(f"bidirectional call, {args.mib} x 1 MiB each way")
            for name, (peer_port, authority) in peers.items():
                print(f"  {name:8} {bidirectional(peer_port, authority, args.mib):6.0f} MiB/s", flush=True)
            figures = backpressure(port, server, gateway.pid, args.pause)
            print(f"backpressure: a client that stops reading a stream of 1 MiB messages for {args.pause:g}s, "
                  f"then {2 * args.pause:g}s")
            print(f"  the server had sent {figures['sent_after_pause_mib']} MiB, then "
                  f"{figures['sent_after_twice_the_pause_mib']} MiB; the gateway's RSS "
                  f"{figures['rss_before_mib']:.0f} MiB before, {figures['rss_paused_mib']:.0f} MiB while paused; "
                  f"read again at {figures['read_again_mib_s']:.0f} MiB/s")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
