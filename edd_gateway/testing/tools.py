"""
The small pieces every end-to-end test leans on: the integration switch
(C{EDD_GATEWAY_REQUIRE_INTEGRATION=1} turns a missing tool from a skip into a
failure), finding programs, modules and free ports, bounded polling on the
reactor, bridging asyncio coroutines to Deferreds, and running a child
process without blocking the reactor (L{ProcessRun}).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Awaitable
from typing import Any, Callable, Sequence
from unittest import SkipTest

from twisted.internet import protocol
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

REQUIRE_INTEGRATION = "EDD_GATEWAY_REQUIRE_INTEGRATION"


def reactor_or_installed(reactor: Any = None) -> Any:
    """C{reactor}, or the installed one: the helpers take an injected reactor but default to trial's."""
    if reactor is None:
        from twisted.internet import reactor as installed

        return installed
    return reactor


def integration_required() -> bool:
    """Whether a missing tool must fail the test instead of skipping it."""
    return os.environ.get(REQUIRE_INTEGRATION, "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str, hint: str) -> Exception:
    if integration_required():
        return AssertionError(f"{what}, and {REQUIRE_INTEGRATION} is set so this test may not skip; {hint}")
    return SkipTest(f"{what}; {hint}, or set {REQUIRE_INTEGRATION}=1 to make this a failure")


def require_tool(name: str) -> str:
    """The path of the program C{name}; skip (or fail, when required) without it."""
    path = shutil.which(name)
    if path is None:
        raise _missing(f"{name} is not installed", f"install it (Debian: apt-get install {name})")
    return path


def require_module(name: str) -> None:
    """Skip (or fail, when required) unless the Python module C{name} imports."""
    try:
        __import__(name)
    except ImportError:
        raise _missing(f"the Python module {name} is not installed", "pip install '.[test]'") from None


def require_asyncio_reactor() -> None:
    """Skip (or fail, when required) unless trial runs the asyncio reactor, which nats-py needs."""
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise _missing("nats-py needs the asyncio reactor", "run trial with --reactor=asyncio")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def as_deferred(awaitable: Awaitable[Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (websockets) on the asyncio reactor's loop."""
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


async def poll_until(
    check: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.05, reactor: Any = None
) -> Any:
    """
    Call C{check} (which may return an awaitable) until it is truthy and
    return that value; fail naming C{what} after C{timeout} seconds.
    """
    clock = reactor_or_installed(reactor)
    deadline = clock.seconds() + timeout
    while True:
        result = check()
        if isinstance(result, (Deferred, Awaitable)):
            result = await result
        if result:
            return result
        if clock.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(clock, interval, lambda: None)


class ProcessRun(protocol.ProcessProtocol):
    """A child process whose output is collected; killed at its deadline."""

    transport: IProcessTransport  # spawnProcess's, from makeConnection on

    def __init__(self, clock: Any, timeout: float) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.exit_code: int | None = None
        self.timed_out = False
        self._ended: Deferred[ProcessRun] = Deferred()
        self._timer = clock.callLater(timeout, self._expire)

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.exit_code = getattr(reason.value, "exitCode", None)
        self._ended.callback(self)

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    async def stop(self) -> None:
        """Kill it if it still runs, and wait until the reactor has reaped it."""
        self.kill()
        await self.result()

    def result(self) -> Deferred[ProcessRun]:
        """Fires with this run once the process has exited."""
        done: Deferred[ProcessRun] = Deferred()

        def relay(outcome: Any) -> Any:
            done.callback(outcome)
            return outcome

        self._ended.addBoth(relay)
        return done

    async def wait_for_output(self, needle: bytes, timeout: float = 10.0) -> None:
        await poll_until(lambda: needle in self.out or self._ended.called,
                         f"{needle!r} on the output of a process", timeout, interval=0.01)
        if needle not in self.out:
            raise AssertionError(f"process ended without printing {needle!r}: out={bytes(self.out)!r} "
                                 f"err={bytes(self.err)!r}")


def run_process(argv: Sequence[str], timeout: float = 60.0, env: dict[str, str] | None = None,
                path: str | None = None, reactor: Any = None) -> ProcessRun:
    """Start C{argv} without blocking the reactor (the backends keep serving)."""
    clock = reactor_or_installed(reactor)
    run = ProcessRun(clock, timeout)
    clock.spawnProcess(run, argv[0], list(argv), env=os.environ.copy() if env is None else env, path=path)
    return run
