"""
The channel relay: a L{RelayChannel} is one half of a channel the gateway
passes through, the user's side on the downstream connection paired (by
L{pair}) with the container's side on the upstream one.  What one half
receives, its peer sends on: data and extended data, channel requests
(pty-req, env, shell, exec, subsystem, window-change, signal one way;
exit-status, exit-signal the other), EOF and close.

Order and flow control are why this is not Conch's stock channel:

 - Conch's channel buffers unsent data in one C{bytes} that grows by
   concatenation (quadratic) and sends EOF or close even while that buffer
   still holds data (C{echo x | ssh host cat} printed nothing).  Here unsent
   data waits in an outbox, and EOF and close wait behind it.  Requests do not
   wait behind data, as in OpenSSH: they are not subject to the window, and
   holding a request (C{exec}) behind data that the far side will only accept
   after that request would deadlock.
 - Conch grants its peer more window as soon as half of it is used, whatever
   happens to the data; a fast sender then fills the gateway's memory when the
   receiver on the other side is slow.  A relay half grants more window only
   while its peer has nothing waiting (the far receiver keeps up) and the
   peer's connection is not paused by a full TCP send buffer; so each
   direction holds at most about one window of data.
 - Replies to requests go back in the order the requests came, even when a
   refused request (agent forwarding) is answered before a forwarded one.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.conch.error import ConchError
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import OPEN_CONNECT_FAILED, SSHConnection
from twisted.internet.defer import Deferred

from edd_gateway.ssh._logging import conch_logger

_DATA = 0
_OPERATION = 1


class _Reply:
    __slots__ = ("answer", "value")

    def __init__(self) -> None:
        self.answer: Deferred[bool] = Deferred()
        self.value: bool | None = None


class RelayChannel(SSHChannel):
    """
    One half of a relayed channel.

    @ivar peer: the other half, or None once that half is gone.
    @ivar refused_requests: request types answered "failure" here instead of
        being passed on (the downstream half refuses agent and X11 forwarding).
    @ivar on_open: for a half the gateway opens itself (upstream), called once
        the far side confirms; C{on_open_failed} with the L{ConchError}
        (C{.value} the description, C{.data} the reason code) when it refuses.
    """

    _log = conch_logger()
    conn: SSHConnection  # given to the constructor

    def __init__(self, name: bytes, conn: Any, *, window: int, max_packet: int,
                 refused_requests: frozenset[bytes] = frozenset()) -> None:
        super().__init__(localWindow=window, localMaxPacket=max_packet, conn=conn)
        self.name = name
        self.peer: RelayChannel | None = None
        self.refused_requests = refused_requests
        self.on_open: Callable[[RelayChannel], None] | None = None
        self.on_open_failed: Callable[[RelayChannel, ConchError], None] | None = None
        self.queued_bytes = 0
        self._outbox: deque[tuple[int, Any, int | None]] = deque()
        self._replies: deque[_Reply] = deque()
        self._close_requested = False

    # Opening (the upstream half).

    def channelOpen(self, specificData: bytes) -> None:
        if self.on_open is not None:
            self.on_open(self)

    def openFailed(self, reason: Any) -> None:
        if self.on_open_failed is not None:
            if not isinstance(reason, ConchError):
                reason = ConchError(str(reason), OPEN_CONNECT_FAILED)
            self.on_open_failed(self, reason)

    # Sending towards this half's remote side, in order.

    @property
    def accepting(self) -> bool:
        """Whether data written now leaves at once (the peer may grant more window)."""
        if self.localClosed:
            return True  # written data is dropped: nothing to hold back
        return not self._outbox and not getattr(self.conn, "paused", False)

    def write(self, data: bytes) -> None:
        self._write(None, data)

    def writeExtended(self, dataType: int, data: bytes) -> None:
        self._write(dataType, data)

    def send_eof(self) -> None:
        """EOF, after every byte written so far."""
        self._in_order(lambda: self.conn.sendEOF(self))

    def close(self) -> None:
        """Close, after every byte written so far."""
        if not self._close_requested:
            self._close_requested = True
            self._in_order(self.loseConnection)

    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        if self._outbox:
            self._flush()

    def _write(self, data_type: int | None, data: bytes) -> None:
        if self.localClosed or not data:
            return
        if self._outbox:
            self._outbox.append((_DATA, data, data_type))
            self.queued_bytes += len(data)
            return
        sent = self._send(data_type, data)
        if sent < len(data):
            self._outbox.append((_DATA, data[sent:], data_type))
            self.queued_bytes += len(data) - sent

    def _send(self, data_type: int | None, data: bytes) -> int:
        """Send as much of C{data} as the remote window allows; how much was sent."""
        size = min(len(data), self.remoteWindowLeft)
        if size <= 0:
            return 0
        step = max(self.remoteMaxPacket, 1)  # a peer announcing 0: tiny packets, not a crash
        if data_type is None:
            send = self.conn.sendData
            for offset in range(0, size, step):
                send(self, data[offset:min(offset + step, size)])
        else:
            for offset in range(0, size, step):
                self.conn.sendExtendedData(self, data_type, data[offset:min(offset + step, size)])
        self.remoteWindowLeft -= size
        return size

    def _in_order(self, operation: Callable[[], object]) -> None:
        if self._outbox:
            self._outbox.append((_OPERATION, operation, None))
        else:
            operation()

    def _flush(self) -> None:
        outbox = self._outbox
        while outbox:
            kind, item, data_type = outbox[0]
            if kind == _OPERATION:
                outbox.popleft()
                item()
                continue
            sent = self._send(data_type, item)
            self.queued_bytes -= sent
            if sent < len(item):
                outbox[0] = (kind, item[sent:], data_type)
                return
            outbox.popleft()
        self._drained()

    def _drained(self) -> None:
        if self.peer is not None:
            self.peer.maybe_grant_window()

    # Receiving from this half's remote side, passed to the peer.

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        if self.peer is not None:
            self.peer.writeExtended(dataType, data)

    def maybe_grant_window(self) -> None:
        """Grant the remote side the window it used, unless the peer is still behind."""
        used = self.localWindowSize - self.localWindowLeft
        if self.localClosed or used < self.localWindowSize // 2:
            return
        if self.peer is None or self.peer.accepting:
            self.conn.adjustWindow(self, used)

    def eofReceived(self) -> None:
        if self.peer is not None:
            self.peer.send_eof()

    def closeReceived(self) -> None:
        # The remote side wants nothing more: what waits for it is moot, and
        # RFC 4254 5.3 asks for our close in return.
        self._outbox.clear()
        self.queued_bytes = 0
        self._close_requested = True
        self.conn.sendClose(self)
        self._drained()
        if self.peer is not None:
            self.peer.close()

    def closed(self) -> None:
        peer, self.peer = self.peer, None
        for reply in self._replies:
            if reply.value is None:
                reply.value = False
        self._release_replies()
        if peer is not None:
            peer.peer = None
            peer.close()

    # Requests.

    def relay_request(self, request_type: bytes, data: bytes, want_reply: bool) -> Deferred[bool] | None:
        """
        Pass a request to the peer; when C{want_reply}, a Deferred firing with
        the peer's answer, in the order the requests came.
        """
        peer = self.peer
        if peer is None or peer.localClosed or request_type in self.refused_requests:
            answer: Deferred[Any] | bool | None = False
        else:
            answer = peer.conn.sendRequest(peer, request_type, data, wantReply=want_reply)
        if not want_reply:
            return None
        reply = _Reply()
        self._replies.append(reply)
        if isinstance(answer, Deferred):
            answer.addCallbacks(lambda _: True, lambda _: False).addCallback(self._settle, reply)
        else:
            self._settle(False, reply)
        return reply.answer

    def _settle(self, value: bool, reply: _Reply) -> None:
        if reply.value is None:
            reply.value = value
        self._release_replies()

    def _release_replies(self) -> None:
        while self._replies and self._replies[0].value is not None:
            reply = self._replies.popleft()
            reply.answer.callback(reply.value)  # type: ignore[arg-type]  # not None: the loop's test


def pair(one: RelayChannel, other: RelayChannel) -> None:
    """Make C{one} and C{other} the two halves of a relayed channel."""
    one.peer, other.peer = other, one


__all__ = ["RelayChannel", "pair"]
