"""
The channel relay on recorded SSH transports: data, requests, EOF and close
pass between the two halves in order; window is granted only as fast as the
far side takes the data; the downstream connection opens the container's
channel before confirming the user's.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from twisted.conch.ssh import connection as c
from twisted.conch.ssh.common import NS, getNS
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.ssh.connection import REFUSED_REQUESTS, DownstreamConnection, RelayConnection
from edd_gateway.ssh.factory import SSHSettings
from edd_gateway.ssh.relay import RelayChannel, pair

from edd_gateway.ssh.testing import RecordingSSH, attach, channel_payloads, kinds, open_channel, request_packet, sent_data

WINDOW = 100


def ids(channel_id: int, *more: int) -> bytes:
    return struct.pack(f">{1 + len(more)}L", channel_id, *more)


class RelayTests(SynchronousTestCase):
    """C{d} is the user's half (remote channel 7), C{u} the container's (remote 9)."""

    def setUp(self) -> None:
        self.down_ssh, self.up_ssh = RecordingSSH(), RecordingSSH()
        self.down = attach(RelayConnection(), self.down_ssh)
        self.up = attach(RelayConnection(), self.up_ssh)
        self.d = RelayChannel(b"session", self.down, window=WINDOW, max_packet=64, refused_requests=REFUSED_REQUESTS)
        self.u = RelayChannel(b"session", self.up, window=WINDOW, max_packet=64)
        pair(self.d, self.u)
        open_channel(self.down, self.d, 7, window=1000, max_packet=64)
        open_channel(self.up, self.u, 9, window=1000, max_packet=64)

    def client_sends(self, data: bytes) -> None:
        self.down.ssh_CHANNEL_DATA(ids(self.d.id) + NS(data))

    def container_sends(self, data: bytes) -> None:
        self.up.ssh_CHANNEL_DATA(ids(self.u.id) + NS(data))

    def container_grants(self, size: int) -> None:
        self.up.ssh_CHANNEL_WINDOW_ADJUST(ids(self.u.id, size))

    def grants(self, packets: list[tuple[int, bytes]]) -> list[int]:
        return [struct.unpack(">L", p)[0] for p in channel_payloads(packets, c.MSG_CHANNEL_WINDOW_ADJUST)]

    def test_data_both_ways(self) -> None:
        self.client_sends(b"to the container")
        self.container_sends(b"to the user")
        self.assertEqual(sent_data(self.up_ssh.take()), b"to the container")
        self.assertEqual(sent_data(self.down_ssh.take()), b"to the user")

    def test_split_by_remote_max_packet(self) -> None:
        self.u.remoteMaxPacket = 10
        self.client_sends(b"x" * 25)
        sizes = [len(getNS(p)[0]) for p in channel_payloads(self.up_ssh.take(), c.MSG_CHANNEL_DATA)]
        self.assertEqual(sizes, [10, 10, 5])

    def test_window_is_granted_while_the_peer_keeps_up(self) -> None:
        self.client_sends(b"a" * 60)
        self.assertEqual(self.grants(self.down_ssh.take()), [60])

    def test_grant_waits_until_the_container_takes_the_data(self) -> None:
        self.u.remoteWindowLeft = 0
        self.client_sends(b"a" * 30)
        self.client_sends(b"b" * 30)
        self.assertEqual(self.down_ssh.take(), [])
        self.assertEqual(self.up_ssh.take(), [])
        self.assertEqual(self.u.queued_bytes, 60)
        self.container_grants(40)
        self.assertEqual(sent_data(self.up_ssh.take()), b"a" * 30 + b"b" * 10)
        self.assertEqual(self.down_ssh.take(), [])
        self.container_grants(100)
        self.assertEqual(sent_data(self.up_ssh.take()), b"b" * 20)
        self.assertEqual(self.grants(self.down_ssh.take()), [60])
        self.assertEqual(self.u.queued_bytes, 0)

    def test_a_sender_past_its_window_is_cut_off(self) -> None:
        self.u.remoteWindowLeft = 0
        for _ in range(3):
            self.client_sends(b"z" * 30)
        self.client_sends(b"z" * 30)  # 120 > the 100 granted
        self.assertEqual(self.u.queued_bytes, 90)
        self.assertIn(c.MSG_CHANNEL_CLOSE, kinds(self.down_ssh.take()))

    def test_full_send_buffer_holds_grants(self) -> None:
        self.up.pauseProducing()
        self.client_sends(b"a" * 60)
        self.assertEqual(sent_data(self.up_ssh.take()), b"a" * 60)
        self.assertEqual(self.grants(self.down_ssh.take()), [])
        self.up.resumeProducing()
        self.assertEqual(self.grants(self.down_ssh.take()), [60])

    def test_slow_user_holds_the_container(self) -> None:
        self.d.remoteWindowLeft = 10
        self.container_sends(b"o" * 60)
        self.assertEqual(sent_data(self.down_ssh.take()), b"o" * 10)
        self.assertEqual(self.up_ssh.take(), [])
        self.down.ssh_CHANNEL_WINDOW_ADJUST(ids(self.d.id, 1000))
        self.assertEqual(sent_data(self.down_ssh.take()), b"o" * 50)
        self.assertEqual(self.grants(self.up_ssh.take()), [60])

    def test_eof_after_the_queued_data(self) -> None:
        self.u.remoteWindowLeft = 10
        self.client_sends(b"x" * 30)
        self.down.ssh_CHANNEL_EOF(ids(self.d.id))
        self.assertEqual(kinds(self.up_ssh.take()), [c.MSG_CHANNEL_DATA])
        self.container_grants(100)
        packets = self.up_ssh.take()
        self.assertEqual(kinds(packets), [c.MSG_CHANNEL_DATA, c.MSG_CHANNEL_EOF])
        self.assertEqual(sent_data(packets), b"x" * 20)

    def test_container_close_after_the_queued_data(self) -> None:
        self.d.remoteWindowLeft = 0
        self.container_sends(b"last words")
        self.up.ssh_CHANNEL_EOF(ids(self.u.id))
        self.up.ssh_CHANNEL_CLOSE(ids(self.u.id))
        self.assertEqual(kinds(self.up_ssh.take()), [c.MSG_CHANNEL_CLOSE])
        self.assertEqual(self.down_ssh.take(), [])
        self.down.ssh_CHANNEL_WINDOW_ADJUST(ids(self.d.id, 1000))
        packets = self.down_ssh.take()
        self.assertEqual(kinds(packets), [c.MSG_CHANNEL_DATA, c.MSG_CHANNEL_EOF, c.MSG_CHANNEL_CLOSE])
        self.assertEqual(sent_data(packets), b"last words")

    def test_user_close_drops_what_waits_for_the_user(self) -> None:
        self.d.remoteWindowLeft = 0
        self.container_sends(b"unread")
        self.down.ssh_CHANNEL_CLOSE(ids(self.d.id))
        self.assertEqual(kinds(self.down_ssh.take()), [c.MSG_CHANNEL_CLOSE])
        self.assertEqual(self.d.queued_bytes, 0)
        self.assertEqual(kinds(self.up_ssh.take()), [c.MSG_CHANNEL_CLOSE])
        self.up.ssh_CHANNEL_CLOSE(ids(self.u.id))
        self.assertNotIn(self.u, self.up.channelsToRemoteChannel)
        self.assertNotIn(self.d, self.down.channelsToRemoteChannel)

    def test_requests_do_not_wait_behind_data(self) -> None:
        # sshd grants a session window only once the command runs: an exec
        # held behind early stdin would never be answered.
        self.u.remoteWindowLeft = 0
        self.client_sends(b"stdin before exec")
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"exec", True, NS(b"cat")))
        [(kind, payload)] = self.up_ssh.take()
        self.assertEqual(kind, c.MSG_CHANNEL_REQUEST)
        self.assertEqual(getNS(payload[4:])[0], b"exec")

    def test_request_relayed_with_its_answer(self) -> None:
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"pty-req", True, b"term-data"))
        [(kind, payload)] = self.up_ssh.take()
        self.assertEqual(payload, request_packet(9, b"pty-req", True, b"term-data"))
        self.up.ssh_CHANNEL_FAILURE(ids(self.u.id))
        self.assertEqual(self.down_ssh.take(), [(c.MSG_CHANNEL_FAILURE, ids(7))])

    def test_replies_keep_the_order_of_requests(self) -> None:
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"env", True, NS(b"LANG") + NS(b"C")))
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"auth-agent-req@openssh.com", True))
        self.assertEqual(self.down_ssh.take(), [])
        self.up.ssh_CHANNEL_SUCCESS(ids(self.u.id))
        self.assertEqual(self.down_ssh.take(), [(c.MSG_CHANNEL_SUCCESS, ids(7)), (c.MSG_CHANNEL_FAILURE, ids(7))])

    def test_agent_and_x11_forwarding_stay_here(self) -> None:
        for name in (b"auth-agent-req@openssh.com", b"x11-req"):
            self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, name, True))
        self.assertEqual(self.up_ssh.take(), [])
        self.assertEqual(kinds(self.down_ssh.take()), [c.MSG_CHANNEL_FAILURE, c.MSG_CHANNEL_FAILURE])

    def test_no_reply_wanted_none_sent(self) -> None:
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"window-change", False, b"\x00" * 16))
        self.assertEqual(self.up_ssh.take(), [(c.MSG_CHANNEL_REQUEST,
                                               request_packet(9, b"window-change", False, b"\x00" * 16))])
        self.assertEqual(self.down_ssh.take(), [])

    def test_exit_status_reaches_the_user(self) -> None:
        self.up.ssh_CHANNEL_REQUEST(request_packet(self.u.id, b"exit-status", False, ids(3)))
        self.assertEqual(self.down_ssh.take(), [(c.MSG_CHANNEL_REQUEST,
                                                 request_packet(7, b"exit-status", False, ids(3)))])

    def test_stderr_relayed(self) -> None:
        self.up.ssh_CHANNEL_EXTENDED_DATA(ids(self.u.id, 1) + NS(b"oops"))
        [(kind, payload)] = self.down_ssh.take()
        self.assertEqual((kind, payload), (c.MSG_CHANNEL_EXTENDED_DATA, ids(7, 1) + NS(b"oops")))

    def test_container_connection_lost_closes_the_users_channel(self) -> None:
        self.down.ssh_CHANNEL_REQUEST(request_packet(self.d.id, b"shell", True))
        self.up.serviceStopped()
        self.assertEqual(kinds(self.down_ssh.take()), [c.MSG_CHANNEL_FAILURE, c.MSG_CHANNEL_CLOSE])
        self.assertIsNone(self.d.peer)


class DownstreamOpenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.settings = SSHSettings(window_size=4096, max_packet=1024, max_channels=2)
        self.up_ssh = RecordingSSH()
        self.up = attach(RelayConnection(), self.up_ssh)
        self.down_ssh = RecordingSSH(SimpleNamespace(settings=self.settings))
        self.down_ssh.avatar = SimpleNamespace(upstream=self.up, login=None)  # type: ignore[attr-defined]
        self.down = attach(DownstreamConnection(), self.down_ssh)

    def user_opens(self, kind: bytes, sender: int = 5, extra: bytes = b"") -> None:
        self.down.ssh_CHANNEL_OPEN(NS(kind) + struct.pack(">3L", sender, 8000, 500) + extra)

    def test_confirmed_once_the_container_confirms(self) -> None:
        extra = NS(b"127.0.0.1") + ids(8080) + NS(b"198.51.100.1") + ids(4000)
        self.user_opens(b"direct-tcpip", extra=extra)
        [(kind, payload)] = self.up_ssh.take()
        self.assertEqual(kind, c.MSG_CHANNEL_OPEN)
        self.assertEqual(payload, NS(b"direct-tcpip") + struct.pack(">3L", 0, 4096, 1024) + extra)
        self.assertEqual(self.down_ssh.take(), [])
        self.up.ssh_CHANNEL_OPEN_CONFIRMATION(struct.pack(">4L", 0, 33, 2000, 700))
        self.assertEqual(self.down_ssh.take(),
                         [(c.MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">4L", 5, 0, 4096, 1024))])
        relayed = self.down.channels[0]
        self.assertEqual((relayed.remoteWindowLeft, relayed.remoteMaxPacket), (8000, 500))
        self.assertEqual(relayed.peer.remoteWindowLeft, 2000)

    def test_the_containers_refusal_is_passed_on(self) -> None:
        self.user_opens(b"direct-tcpip")
        self.up.ssh_CHANNEL_OPEN_FAILURE(struct.pack(">2L", 0, c.OPEN_CONNECT_FAILED) + NS(b"Connection refused"))
        self.assertEqual(self.down_ssh.take(), [(c.MSG_CHANNEL_OPEN_FAILURE,
                                                 struct.pack(">2L", 5, c.OPEN_CONNECT_FAILED)
                                                 + NS(b"Connection refused") + NS(b""))])
        self.assertEqual(self.down.channels, {})

    def test_other_channel_types_are_refused_here(self) -> None:
        for kind in (b"x11", b"forwarded-tcpip", b"auth-agent@openssh.com", b"direct-streamlocal@openssh.com"):
            self.user_opens(kind)
        self.assertEqual(self.up_ssh.take(), [])
        codes = [struct.unpack(">2L", p[:8])[1] for k, p in self.down_ssh.take() if k == c.MSG_CHANNEL_OPEN_FAILURE]
        self.assertEqual(codes, [c.OPEN_ADMINISTRATIVELY_PROHIBITED] * 4)

    def test_channel_limit(self) -> None:
        for sender in (1, 2, 3):
            self.user_opens(b"session", sender)
        self.assertEqual(kinds(self.up_ssh.take()), [c.MSG_CHANNEL_OPEN] * 2)
        [(kind, payload)] = self.down_ssh.take()
        self.assertEqual(struct.unpack(">2L", payload[:8]), (3, c.OPEN_RESOURCE_SHORTAGE))

    def test_user_gone_before_the_container_answers(self) -> None:
        self.user_opens(b"session")
        self.up_ssh.take()
        self.down.serviceStopped()
        self.up.ssh_CHANNEL_OPEN_CONFIRMATION(struct.pack(">4L", 0, 33, 2000, 700))
        self.assertEqual(self.up_ssh.take(), [(c.MSG_CHANNEL_CLOSE, ids(33))])
        self.assertEqual(self.down_ssh.take(), [])
