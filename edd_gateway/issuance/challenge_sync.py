"""
The other replicas' challenges on this replica's board
(L{ChallengeSync}): read from the challenges table whenever its
notification arrives (through the domains' change feed) and when the feed
starts listening, so the CA's validation, which the load balancer may send
to any replica, finds its answer wherever it lands.  One read at a time; a
notification during a read asks for one more.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from edd_gateway.issuance.challenges import ChallengeBoard
from edd_gateway.issuance.storage import CertificateStorage
from edd_gateway.state.postgres import DatabaseUnavailable
from edd_gateway.state.triggers import first_line

__all__ = ["ChallengeSync"]

_log = Logger()


class ChallengeSync:
    """Loads the challenges other replicas placed onto C{board}."""

    def __init__(self, storage: CertificateStorage, board: ChallengeBoard, holder: str) -> None:
        self.storage = storage
        self.board = board
        self.holder = holder
        self._reading: Deferred[None] | None = None
        self._again = False
        self.reads = 0

    def read(self) -> None:
        if self._reading is not None:
            self._again = True
            return
        self._reading = ensureDeferred(self._read())
        self._reading.addErrback(self._failed)
        self._reading.addBoth(self._done)

    async def _read(self) -> None:
        self.board.replace_shared(await self.storage.load_challenges(self.holder))
        self.reads += 1

    def _failed(self, reason: Failure) -> None:
        if reason.check(DatabaseUnavailable) and not self.reads:
            return  # before the first connect: the next poll or notification reads them
        _log.warn("issuance: cannot read the other replicas' challenges ({error})",
                  error=first_line(reason.value) if reason.value is not None else "?")

    def _done(self, _: object) -> None:
        self._reading = None
        if self._again:
            self._again = False
            self.read()
