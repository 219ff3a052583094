"""
L{EndToEndMixin}, the base of every end-to-end trial C{TestCase}: it starts
gateways and backends that are stopped at cleanup, runs curl and raw
connections against them, and wraps the test's result so every failure or
error carries the last lines of each gateway's log, because an end-to-end
failure is only useful when it says what the gateway saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from twisted.internet import protocol
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure
from twisted.trial.itrial import IReporter
from zope.interface import implementer

from .backends import BackendServer, EchoResource, WebSocketEcho, start_backend, start_websocket_echo, web_factory
from ._clients import CurlResponse, MetricsScrape, RawConnection, curl
from ._gateway import GatewayProcess, routes_yaml
from .tools import require_module


class _AnnotatedError(Exception):
    def __init__(self, original: BaseException, logs: str) -> None:
        super().__init__(original, logs)
        self.original, self.logs = original, logs

    def __str__(self) -> str:
        return f"{self.original}\n{self.logs}"


@implementer(IReporter)
class _AnnotatingResult:
    """Passes everything to the reporter; failures get the gateways' logs."""

    def __init__(self, result: Any, test: "EndToEndMixin") -> None:
        self._result, self._test = result, test

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    def _annotate(self, failure: Any) -> Any:
        logs = self._test.gateway_logs()
        if logs and isinstance(failure, Failure) and not isinstance(failure.value, _AnnotatedError):
            # The type stays, so the reporter still names the original
            # exception; only its message gains the logs.
            failure.value = _AnnotatedError(failure.value, logs)  # type: ignore[arg-type]  # a Failure's is set
        return failure

    def addFailure(self, test: Any, failure: Any) -> None:
        self._result.addFailure(test, self._annotate(failure))

    def addError(self, test: Any, failure: Any) -> None:
        self._result.addError(test, self._annotate(failure))


class EndToEndMixin:
    """
    For trial C{TestCase}s: start gateways and backends that are stopped at
    cleanup, and attach the gateways' logs to every failure or error.
    """

    log_lines = 120

    def run(self, result: Any) -> Any:
        self._gateways: list[GatewayProcess] = []
        return super().run(_AnnotatingResult(result, self))  # type: ignore[misc]  # a TestCase mixin

    def gateway_logs(self) -> str:
        parts = []
        for gateway in getattr(self, "_gateways", []):
            lines = gateway.log_text().splitlines()[-self.log_lines:]
            parts.append(f"--- gateway log ({gateway.log_path}, last {len(lines)} lines) ---\n"
                         + "\n".join(lines))
        return "\n".join(parts)

    def _stop_at_cleanup(self, stoppable: GatewayProcess | BackendServer | WebSocketEcho) -> None:
        self.addCleanup(lambda: ensureDeferred(stoppable.stop()))  # type: ignore[attr-defined]  # a TestCase mixin

    async def start_gateway(self, args: Sequence[str] = (), routes: Sequence[dict[str, Any]] | None = None,
                            routes_path: str | None = None) -> GatewayProcess:
        """A gateway with C{args}; C{routes} are written to a routes file first."""
        gateway = GatewayProcess(self.mktemp())  # type: ignore[attr-defined]  # a TestCase mixin
        args = list(args)
        if routes is not None:
            path = routes_path or str(gateway.workdir / "routes.yaml")
            Path(path).write_text(routes_yaml(routes))
            args = ["--routes", path, *args]
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        await gateway.start(args)
        return gateway

    def serve(self, factory: protocol.Factory[Any], app: Any = None) -> BackendServer:
        backend = start_backend(factory, app)
        self._stop_at_cleanup(backend)
        return backend

    def serve_echo(self, name: str = "echo") -> tuple[BackendServer, EchoResource]:
        resource = EchoResource(name)
        return self.serve(web_factory(resource), resource), resource

    async def serve_websocket_echo(self) -> WebSocketEcho:
        require_module("websockets")
        echo = await start_websocket_echo()
        self._stop_at_cleanup(echo)
        return echo

    async def curl(self, url: str, *args: str, timeout: float = 30.0) -> CurlResponse:
        """L{curl}: the final response of C{curl -sS -D - ARGS URL}, parsed."""
        return await curl(url, *args, timeout=timeout)

    async def scrape(self, gateway: GatewayProcess) -> MetricsScrape:
        """The gateway's C{/metrics}, parsed; the answer must be a 200."""
        response = await self.curl(gateway.admin_url("/metrics"))
        self.assertEqual(response.status, 200, response.describe())  # type: ignore[attr-defined]  # a TestCase mixin
        return MetricsScrape(response.text, response.header("Content-Type") or "")

    async def raw(self, port: int) -> RawConnection:
        connection = await RawConnection.open(port)
        self.addCleanup(connection.close)  # type: ignore[attr-defined]  # a TestCase mixin
        return connection
