"""
The ssh-connection service on both sides of the gateway.

L{RelayConnection} is Conch's SSHConnection made fit for relaying: channel
data grants window only as the relay allows (see L{edd_gateway.ssh.relay}),
requests reach the channel with their want-reply flag so that it is passed
on unchanged, and the connection is its TCP transport's producer, so a full
send buffer holds back the window grants of every channel feeding it.

L{DownstreamConnection} serves the user: it opens the matching channel on the
container's connection before confirming the user's channel, so the user
gets the container's own answer (C{ssh -L} to a closed port fails as it
would directly) and never sends into a channel that does not exist yet.
Only session and direct-tcpip channels are relayed; global requests (remote
forwarding among them) are refused by the avatar.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection as ssh_connection
from twisted.conch.ssh.common import NS, getNS
from twisted.logger import Logger

from edd_gateway.net.addresses import describe_peer
from edd_gateway.ssh._logging import conch_logger
from edd_gateway.ssh.relay import RelayChannel, pair

if TYPE_CHECKING:
    from edd_gateway.ssh.factory import GatewayAvatar

_log = Logger()

MSG_CHANNEL_DATA = 94
#: The recipient channel and the data's length (RFC 4254, 5.2).
_DATA_HEAD = struct.Struct(">2L")

#: Channel types a user may open through the gateway.
RELAYED_CHANNEL_TYPES = frozenset({b"session", b"direct-tcpip"})

#: Requests the user's side answers itself: forwarding the user's agent or
#: X11 display into a container is not offered.
REFUSED_REQUESTS = frozenset({b"auth-agent-req@openssh.com", b"x11-req"})


class RelayConnection(ssh_connection.SSHConnection):
    """An SSHConnection whose channels are L{RelayChannel}s."""

    _log = conch_logger()
    #: True while the TCP transport's send buffer is full.
    paused = False
    #: The transport may hand C{ssh_CHANNEL_DATA} a memoryview of the
    #: decrypted packet: the data goes on as a view of it, and out through
    #: L{sendData} without being joined to its header first.
    takes_views = True

    def serviceStarted(self) -> None:
        super().serviceStarted()
        tcp: Any = self.transport.transport  # type: ignore[union-attr]  # Conch's
        if hasattr(tcp, "registerProducer"):
            tcp.registerProducer(self, True)

    # IPushProducer, for the TCP transport below the SSH transport.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        for channel in list(self.channels.values()):
            if channel.peer is not None and channel.accepting:
                channel.peer.maybe_grant_window()

    def stopProducing(self) -> None:
        pass

    # Messages, reworked for the relay.

    def ssh_CHANNEL_DATA(self, packet: bytes | memoryview) -> None:
        local_id, length = struct.unpack(">2L", packet[:8])
        channel = self.channels[local_id]
        if not self._within_limits(channel, length):
            return
        channel.localWindowLeft -= length
        channel.dataReceived(packet[8:8 + length])
        channel.maybe_grant_window()

    def sendData(self, channel: Any, data: bytes | memoryview) -> None:
        if channel.localClosed:
            return
        self.transport.sendPacket(  # type: ignore[union-attr, call-arg]  # ours takes a tail
            MSG_CHANNEL_DATA, _DATA_HEAD.pack(self.channelsToRemoteChannel[channel], len(data)), data)

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        local_id, data_type, length = struct.unpack(">3L", packet[:12])
        channel = self.channels[local_id]
        if not self._within_limits(channel, length):
            return
        channel.localWindowLeft -= length
        channel.extReceived(data_type, packet[12:12 + length])
        channel.maybe_grant_window()

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        local_id = struct.unpack(">L", packet[:4])[0]
        request_type, rest = getNS(packet[4:])
        want_reply = rest[:1] != b"\x00"
        channel = self.channels[local_id]
        answer = channel.relay_request(request_type, rest[1:], want_reply)
        if answer is not None:
            answer.addCallback(self._reply, channel)

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        # Nothing is offered globally in either direction: no remote
        # forwarding, no host key rotation; keepalives get their "failure",
        # which is all they want.
        return 0

    def _within_limits(self, channel: RelayChannel, length: int) -> bool:
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            _log.warn("ssh: {peer} sent {length} bytes into a window of {window} (packets up to {max}); "
                      "closing the channel", peer=describe_peer(self.transport.transport.getPeer()),  # type: ignore[union-attr]  # Conch's
                      length=length, window=channel.localWindowLeft, max=channel.localMaxPacket)
            self.sendClose(channel)
            return False
        return True

    def _reply(self, ok: bool, channel: RelayChannel) -> None:
        remote = self.channelsToRemoteChannel.get(channel)
        if remote is None or channel.localClosed:
            return
        message = ssh_connection.MSG_CHANNEL_SUCCESS if ok else ssh_connection.MSG_CHANNEL_FAILURE
        self.transport.sendPacket(message, struct.pack(">L", remote))  # type: ignore[union-attr]  # Conch's

    def refuse_open(self, sender: int, code: int, description: bytes) -> None:
        self.transport.sendPacket(  # type: ignore[union-attr]  # Conch's
            ssh_connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, code) + NS(description) + NS(b""),
        )


class DownstreamConnection(RelayConnection):
    """
    The user's ssh-connection.  Its transport's C{avatar} holds the upstream
    connection (C{avatar.upstream}) and C{avatar.login}; its factory holds
    the C{settings} (window, packet size, channel limit).
    """

    def __init__(self) -> None:
        super().__init__()
        self._opening = 0
        self._stopped = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.avatar: GatewayAvatar = self.transport.avatar  # type: ignore[union-attr, assignment]  # set at login
        self.settings = self.transport.factory.settings  # type: ignore[union-attr]  # Conch's

    def serviceStopped(self) -> None:
        self._stopped = True
        super().serviceStopped()

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = getNS(packet)
        sender, window, max_packet = struct.unpack(">3L", rest[:12])
        extra = rest[12:]
        if channel_type not in RELAYED_CHANNEL_TYPES:
            _log.info("ssh: refused a {kind!r} channel for {login}", kind=channel_type, login=self._who())
            self.refuse_open(sender, ssh_connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
                             b"the gateway does not relay " + channel_type + b" channels")
            return
        if len(self.channels) + self._opening >= self.settings.max_channels:
            self.refuse_open(sender, ssh_connection.OPEN_RESOURCE_SHORTAGE, b"too many channels")
            return
        settings = self.settings
        downstream = RelayChannel(channel_type, self, window=settings.window_size,
                                  max_packet=settings.max_packet, refused_requests=REFUSED_REQUESTS)
        downstream.remoteWindowLeft, downstream.remoteMaxPacket = window, max_packet
        upstream = RelayChannel(channel_type, self.avatar.upstream, window=settings.window_size,
                                max_packet=settings.max_packet)
        pair(downstream, upstream)
        upstream.on_open = lambda _: self._opened(downstream, sender)
        upstream.on_open_failed = lambda _, reason: self._openFailed(downstream, sender, reason)
        self._opening += 1
        self.avatar.upstream.openChannel(upstream, extra)

    def _opened(self, downstream: RelayChannel, sender: int) -> None:
        self._opening -= 1
        upstream = downstream.peer
        if self._stopped or upstream is None:
            if upstream is not None:
                upstream.peer = None
                upstream.close()
            return
        # What SSHConnection.ssh_CHANNEL_OPEN does once its getChannel has
        # answered, done here once the container has answered.
        local_id = self.localChannelID
        self.localChannelID += 1
        downstream.id = local_id  # type: ignore[assignment]  # SSHChannel's is None until it opens
        self.channels[local_id] = downstream
        self.channelsToRemoteChannel[downstream] = sender
        self.localToRemoteChannel[local_id] = sender
        self.transport.sendPacket(  # type: ignore[union-attr]  # Conch's
            ssh_connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(">4L", sender, local_id, downstream.localWindowSize, downstream.localMaxPacket),
        )

    def _openFailed(self, downstream: RelayChannel, sender: int, reason: ConchError) -> None:
        self._opening -= 1
        downstream.peer = None
        if self._stopped:
            return
        description = reason.value if isinstance(reason.value, bytes) else str(reason.value).encode()
        code = reason.data if isinstance(reason.data, int) else ssh_connection.OPEN_CONNECT_FAILED
        self.refuse_open(sender, code, description)

    def _who(self) -> str:
        login = getattr(self.avatar, "login", None)
        return str(login.target) if login is not None else "?"


__all__ = ["REFUSED_REQUESTS", "RELAYED_CHANNEL_TYPES", "DownstreamConnection", "RelayConnection"]
