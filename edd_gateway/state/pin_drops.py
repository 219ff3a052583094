"""
Dropping the SSH host-key pins of deleted containers in the background
(L{PinDrops}): a deleted container's pin goes with it, so a container later
created under the same id is pinned afresh instead of refused.  Routing
must not wait for this bookkeeping; stopping the state service does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["PinDrops", "settled"]

_log = Logger()


class PinDrops:
    """The pin deletions still running, each logged when it ends."""

    def __init__(self) -> None:
        self._running: set[Deferred[Any]] = set()

    def add(self, forgetting: Deferred[Any]) -> None:
        """Follow one deletion (it fires with how many pins it dropped); not awaited."""
        def forgotten(count: object) -> None:
            if isinstance(count, int) and count:
                _log.info("state: dropped the SSH host-key pins of {count} deleted containers", count=count)

        self._running.add(forgetting)
        forgetting.addCallbacks(forgotten, lambda failure: _log.warn(
            "state: cannot drop SSH pins of deleted containers: {error}", error=failure.getErrorMessage()))
        forgetting.addBoth(lambda _: self._running.discard(forgetting))

    async def settled(self) -> None:
        """Return once every deletion started until now has ended."""
        for forgetting in list(self._running):
            await settled(forgetting)


def settled(deferred: Deferred[Any]) -> Deferred[None]:
    """Fires once C{deferred} has, leaving its result to its own callbacks."""
    waiter: Deferred[None] = Deferred()

    def passthrough(result: object) -> object:
        waiter.callback(None)
        return result

    deferred.addBoth(passthrough)
    return waiter
