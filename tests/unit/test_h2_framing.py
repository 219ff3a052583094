"""
L{edd_gateway.h2.framing.FramingConnection}: the response frames it writes
itself are the bytes C{h2}'s own C{send_headers} and C{send_data} write,
and it leaves C{h2}'s books (states, windows) as they leave them.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.framing import FramingConnection
from edd_gateway.h2.hpack_out import StaticTableEncoder

_WINDOW = 1 << 24
_CONFIG = dict(client_side=False, header_encoding=None, validate_outbound_headers=False,
               normalize_outbound_headers=False)


def pair(kind: type[H2Connection]) -> tuple[H2Connection, H2Connection]:
    """A server connection of C{kind} and a stock client, the prefaces exchanged."""
    server = kind(H2Configuration(**_CONFIG))
    server.encoder = StaticTableEncoder()  # type: ignore[assignment]  # as the gateway's
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    # Windows larger than any test's bodies: what is compared is how they are spent.
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW})
    client.increment_flow_control_window(_WINDOW)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server, client


def request(server: H2Connection, client: H2Connection, stream_id: int) -> None:
    client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                                    (b":authority", b"app.test")], end_stream=True)
    server.receive_data(client.data_to_send())


_heads = st.lists(st.tuples(st.sampled_from([b"content-type", b"x-request-id", b"server", b"x-long"]),
                            st.binary(max_size=40000)), max_size=4)
_bodies = st.lists(st.one_of(st.binary(max_size=100), st.integers(0, 70000).map(bytes)), max_size=4)


class SameAsH2(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([b"200", b"404", b"503"]), _heads, _bodies, st.booleans()),
                    min_size=1, max_size=4))
    def test_same_bytes_and_books(self, responses: list[tuple[bytes, list[tuple[bytes, bytes]], list[bytes], bool]]
                                  ) -> None:
        """A 100 Continue or not, a head (large ones in CONTINUATION frames), DATA frames, END_STREAM last."""
        stock, stock_client = pair(H2Connection)
        framing, framing_client = pair(FramingConnection)
        for number, (status, head, bodies, interim) in enumerate(responses):
            stream_id = 1 + 2 * number
            for server, client in ((stock, stock_client), (framing, framing_client)):
                request(server, client, stream_id)
            fields = [(b":status", status), *head]
            if interim:
                stock.send_headers(stream_id, [(b":status", b"100")])
                framing.send_response_head(stream_id, [(b":status", b"100")])  # type: ignore[attr-defined]
            stock.send_headers(stream_id, fields, end_stream=not bodies)
            framing.send_response_head(stream_id, fields, end_stream=not bodies)  # type: ignore[attr-defined]
            for index, body in enumerate(bodies):
                for start in range(0, max(len(body), 1), stock.max_outbound_frame_size):
                    piece = body[start:start + stock.max_outbound_frame_size]
                    last = index == len(bodies) - 1 and start + stock.max_outbound_frame_size >= len(body)
                    stock.send_data(stream_id, piece, end_stream=last)
                    framing.send_data_frame(stream_id, piece, end_stream=last)  # type: ignore[attr-defined]
            self.assertEqual(framing.data_to_send(), stock.data_to_send())
            self.assertEqual(framing.streams[stream_id].state_machine.state,
                             stock.streams[stream_id].state_machine.state)
            self.assertEqual(framing.streams[stream_id].outbound_flow_control_window,
                             stock.streams[stream_id].outbound_flow_control_window)
            self.assertEqual(framing.outbound_flow_control_window, stock.outbound_flow_control_window)
            self.assertEqual(framing.state_machine.state, stock.state_machine.state)


class FramingTests(SynchronousTestCase):
    def test_a_client_reads_the_response(self) -> None:
        server, client = pair(FramingConnection)
        request(server, client, 1)
        server.send_response_head(1, [(b":status", b"200"), (b"content-type", b"text/plain")])  # type: ignore[attr-defined]
        server.send_data_frame(1, b"hello", end_stream=True)  # type: ignore[attr-defined]
        events = client.receive_data(server.data_to_send())
        [head] = [e for e in events if isinstance(e, ResponseReceived)]
        self.assertEqual(head.headers, [(b":status", b"200"), (b"content-type", b"text/plain")])
        self.assertEqual(b"".join(e.data for e in events if isinstance(e, DataReceived)), b"hello")
        self.assertEqual(len([e for e in events if isinstance(e, StreamEnded)]), 1)

    def test_trailers_go_through_h2(self) -> None:
        server, client = pair(FramingConnection)
        request(server, client, 1)
        server.send_response_head(1, [(b":status", b"200")])  # type: ignore[attr-defined]
        server.send_response_head(1, [(b"grpc-status", b"0")], end_stream=True)  # type: ignore[attr-defined]
        self.assertTrue(server.streams[1].state_machine.trailers_sent)

    def test_a_closed_stream_refuses_data(self) -> None:
        server, client = pair(FramingConnection)
        request(server, client, 1)
        server.send_response_head(1, [(b":status", b"204")], end_stream=True)  # type: ignore[attr-defined]
        self.assertRaises(StreamClosedError, server.send_data_frame, 1, b"late")  # type: ignore[attr-defined]
