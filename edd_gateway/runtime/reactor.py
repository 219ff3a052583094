"""
The reactor edd-gateway runs on: Twisted's asyncio reactor (nats-py needs
asyncio), on a uvloop loop when uvloop is installed, minus the per-event
logging context.

Stock C{AsyncioSelectorReactor} registers every socket with the loop
through C{twisted.python.log.callWithLogger}, which builds a legacy logging
context (the "system" prefix of C{log.msg} lines) around each read and
write event.  The gateway logs through C{twisted.logger} namespaces and
never reads that prefix, while the wrapping cost ~15% of the CPU of a
proxied request on loopback (measured with py-spy, docs/performance.md).
L{GatewayReactor} registers C{_readOrWrite} directly; C{_readOrWrite}
itself still catches and logs what C{doRead}/C{doWrite} raise.
"""

from __future__ import annotations

import asyncio
import errno
import sys

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.posixbase import PosixReactorBase

#: New timed calls left unpushed at most (see GatewayReactor.callLater).
_NEW_CALLS_BOUND = 1024


class GatewayReactor(AsyncioSelectorReactor):
    """An asyncio reactor that dispatches socket events without a logging context."""

    # Twisted sets it to None in __init__ and to the loop time when a timer is scheduled; mypy infers None.
    _scheduledAt: float | None  # type: ignore[assignment]  # AsyncioSelectorReactor's inferred type is None

    def addReader(self, reader) -> None:  # type: ignore[no-untyped-def]  # Twisted's, untyped
        if reader in self._readers or reader in self._continuousPolling._readers:
            return
        fd = reader.fileno()
        try:
            self._asyncioEventloop.add_reader(fd, self._readOrWrite, reader, True)
            self._readers[reader] = fd
        except OSError as e:
            self._unregisterFDInAsyncio(fd)
            if e.errno != errno.EPERM:
                raise
            # epoll(7) refuses regular files: poll those, as the stock
            # reactor does.
            self._continuousPolling.addReader(reader)

    def addWriter(self, writer) -> None:  # type: ignore[no-untyped-def]  # Twisted's, untyped
        if writer in self._writers or writer in self._continuousPolling._writers:
            return
        fd = writer.fileno()
        try:
            self._asyncioEventloop.add_writer(fd, self._readOrWrite, writer, False)
            self._writers[writer] = fd
        except PermissionError:
            self._unregisterFDInAsyncio(fd)
            self._continuousPolling.addWriter(writer)
        except BrokenPipeError:
            self._unregisterFDInAsyncio(fd)
        except BaseException:
            self._unregisterFDInAsyncio(fd)
            raise

    def callLater(self, delay, callable, *args, **kwargs):  # type: ignore[no-untyped-def]  # Twisted's, untyped
        # The stock method asks timeout() after every call, which pushes the
        # new call onto the timer heap (a Python-level comparison per level)
        # to learn whether the loop's one timer must fire sooner.  Every
        # connection schedules a few deadlines and cancels nearly all of them
        # within milliseconds: when the loop's timer already fires before the
        # new call is due, it is left among the new calls, and the next
        # runUntilCurrent drops it if it was cancelled meanwhile or pushes it
        # then.  The list is flushed past a bound so that a far-off loop timer
        # cannot let it grow.
        call = PosixReactorBase.callLater(self, delay, callable, *args, **kwargs)
        scheduled = self._scheduledAt
        now = self._asyncioEventloop.time()
        if scheduled is not None and now + delay >= scheduled and len(self._newTimedCalls) <= _NEW_CALLS_BOUND:
            return call
        # The stock path.
        if scheduled is None or now + self.timeout() < scheduled:  # type: ignore[operator]  # a call is scheduled
            self._reschedule()
        return call


def install() -> AsyncioSelectorReactor:
    """
    Install L{GatewayReactor} on a uvloop loop (a stdlib loop without
    uvloop) as the global reactor, unless a reactor is installed already.
    """
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        return reactor  # type: ignore[return-value]  # installed by us, or asyncio's
    from twisted.internet.main import installReactor

    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gateway_reactor = GatewayReactor(loop)
    installReactor(gateway_reactor)
    return gateway_reactor
