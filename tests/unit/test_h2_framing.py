"""
L{edd_gateway.h2.framing.FramingConnection}: the response frames it writes
itself are the bytes C{h2}'s own C{send_headers} and C{send_data} write,
and it leaves C{h2}'s books (states, windows) as they leave them.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, RequestReceived, ResponseReceived, StreamEnded
from h2.exceptions import StreamClosedError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2StreamStateMachine
from hyperframe.frame import Frame
from h2.settings import SettingCodes
from hypothesis import example, given, settings, strategies as st
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


def request(server: H2Connection, client: H2Connection, stream_id: int, ended: bool = True) -> None:
    """A request on C{stream_id}: all of it, or (not C{ended}) its head, its body still to come."""
    client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                                    (b":authority", b"app.test")], end_stream=ended)
    server.receive_data(client.data_to_send())


_heads = st.lists(st.tuples(st.sampled_from([b"content-type", b"x-request-id", b"server", b"x-long"]),
                            st.binary(max_size=40000)), max_size=4)
_bodies = st.lists(st.one_of(st.binary(max_size=100), st.integers(0, 70000).map(bytes)), max_size=4)


class SameAsH2(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([b"200", b"404", b"503"]), _heads, _bodies, st.booleans(),
                              st.booleans()), min_size=1, max_size=4))
    def test_same_bytes_and_books(self, responses: list[tuple[bytes, list[tuple[bytes, bytes]], list[bytes], bool,
                                                              bool]]) -> None:
        """
        A 100 Continue or not, a head (large ones in CONTINUATION frames),
        DATA frames, END_STREAM last; the request whole or still arriving.
        """
        stock, stock_client = pair(H2Connection)
        framing, framing_client = pair(FramingConnection)
        for number, (status, head, bodies, interim, ended) in enumerate(responses):
            stream_id = 1 + 2 * number
            for server, client in ((stock, stock_client), (framing, framing_client)):
                request(server, client, stream_id, ended)
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
            self.assertEqual(machine_books(framing.streams[stream_id].state_machine),
                             machine_books(stock.streams[stream_id].state_machine))
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


# Receiving: the same bytes, cut the same way, give the same events, the
# same answers (SETTINGS ACKs, PING replies, GOAWAY) and the same books.

_REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"app.test")]

_actions = st.lists(st.one_of(
    st.tuples(st.just("request"), st.booleans(), st.sampled_from([0, 1, 300, 20000]), st.booleans(),
              st.sampled_from([b"", b"4", b"abc"])),
    st.tuples(st.just("data"), st.booleans()),
    st.tuples(st.just("raw"), st.sampled_from(["even", "zero", "reused", "ahead", "padded", "continued",
                                                   "unfinished"])),
    st.tuples(st.just("status"), st.sampled_from([b"100", b"200"])),
    st.tuples(st.just("ping")), st.tuples(st.just("window")), st.tuples(st.just("reset")),
    st.tuples(st.just("settings")), st.tuples(st.just("goaway")),
), min_size=1, max_size=14)


def client_bytes(actions: list[tuple[object, ...]]) -> list[bytes]:
    """
    What a client (the h2 library, and raw frames where it would refuse)
    sends for C{actions}: the preface, then each action's frames.
    """
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    client = H2Connection(H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False))
    client.initiate_connection()
    pieces = [client.data_to_send()]
    next_id, open_ids = 1, []
    for action in actions:
        kind = action[0]
        if kind == "request":
            _, end, extra, priority, length = action
            # (h2 as a client cannot split a head with a priority into CONTINUATION frames)
            size = min(int(extra), 300) if priority else int(extra)  # type: ignore[call-overload]
            fields = [*_REQUEST, *([(b"x-extra", b"v" * size)] if size else []),
                      *([(b"content-length", length)] if length else [])]  # type: ignore[list-item]
            client.send_headers(next_id, fields, end_stream=bool(end), priority_weight=16 if priority else None)
            if not end:
                open_ids.append(next_id)
            next_id += 2
        elif kind == "data" and open_ids:
            stream = open_ids[-1]
            client.send_data(stream, b"body", end_stream=bool(action[1]))
            if action[1]:
                open_ids.remove(stream)
        elif kind == "raw":
            frame = HeadersFrame({"even": next_id + 1, "zero": 0, "reused": max(next_id - 2, 1),
                                  "ahead": next_id + 10, "padded": next_id, "continued": next_id,
                                  "unfinished": next_id}[str(action[1])] or 1)
            frame.data = client.encoder.encode(_REQUEST)
            frame.flags.add("END_STREAM")
            if action[1] == "padded":
                frame.flags.add("PADDED")
                frame.pad_length = 3
            if action[1] == "continued":
                more = ContinuationFrame(frame.stream_id)
                more.data, frame.data = frame.data[2:], frame.data[:2]
                more.flags.add("END_HEADERS")
                pieces.append(client.data_to_send() + frame.serialize() + more.serialize())
            elif action[1] == "unfinished":  # no END_HEADERS, and no CONTINUATION comes
                pieces.append(client.data_to_send() + frame.serialize())
            else:
                frame.flags.add("END_HEADERS")
                raw = frame.serialize()
                if action[1] == "zero":  # hyperframe refuses to build it
                    raw = raw[:5] + bytes(4) + raw[9:]
                pieces.append(client.data_to_send() + raw)
            if action[1] in ("ahead", "padded", "continued", "unfinished"):
                next_id = frame.stream_id + 2
            continue
        elif kind == "status":  # a response's pseudo-header in a request (h2 as a client will not send it)
            status = HeadersFrame(next_id)
            status.data = client.encoder.encode([(b":status", action[1]), *_REQUEST])
            status.flags.add("END_HEADERS")
            status.flags.add("END_STREAM")
            pieces.append(client.data_to_send() + status.serialize())
            next_id += 2
            continue
        elif kind == "ping":
            client.ping(b"12345678")
        elif kind == "window":
            client.increment_flow_control_window(1000)
        elif kind == "reset" and open_ids:
            client.reset_stream(open_ids.pop())
        elif kind == "settings":
            client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100000})
        elif kind == "goaway":
            client.close_connection()
            return [*pieces, client.data_to_send()]  # the client sends nothing after its GOAWAY
        pieces.append(client.data_to_send())
    return [piece for piece in pieces if piece]


def server_for(kind: type[H2Connection]) -> H2Connection:
    from edd_gateway.h2.hpack_in import RepeatingBlockDecoder
    from h2.settings import Settings

    # The gateway's configuration (H2ServerProtocol's): h1_view checks the fields.
    server = kind(H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                  normalize_outbound_headers=False, validate_inbound_headers=False,
                                  normalize_inbound_headers=False))
    server.local_settings = Settings(client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    server.decoder = RepeatingBlockDecoder(65536)
    server.encoder = StaticTableEncoder()  # type: ignore[assignment]  # as the gateway's
    server.initiate_connection()
    server.data_to_send()
    return server


def attached_ends_dropped(events: list[Event]) -> list[Event]:
    """
    C{events} without the StreamEnded that h2 lists after a request's event
    when it is attached to it too (C{stream_ended}): FramingConnection only
    attaches it, and the server reads it from there.
    """
    kept: list[Event] = []
    for event in events:
        if (isinstance(event, StreamEnded) and kept and isinstance(kept[-1], RequestReceived)
                and kept[-1].stream_ended is event):
            continue
        kept.append(event)
    return kept


def machine_books(machine: H2StreamStateMachine) -> tuple[object, ...]:
    """All a stream's state machine keeps."""
    return (machine.state, machine.client, machine.headers_sent, machine.trailers_sent, machine.headers_received,
            machine.trailers_received, machine.stream_closed_by)


def outcome(server: H2Connection, data: bytes) -> tuple[object, ...]:
    """What receiving C{data} did: the events (or the error), the bytes to send, the books."""
    try:
        result: object = [(repr(event), getattr(event, "stream_ended", None) is not None,
                           getattr(event, "priority_updated", None) is not None)
                          for event in attached_ends_dropped(server.receive_data(data))]
    except Exception as problem:  # noqa: BLE001 - the error itself is what is compared
        result = (type(problem).__name__, getattr(problem, "error_code", None), str(problem))
    books = (server.highest_inbound_stream_id, server.state_machine.state,
             # h2 forgets closed streams when it next counts the open ones, whenever that is
             sorted((sid, machine_books(s.state_machine), s.inbound_flow_control_window, s.outbound_flow_control_window,
                     s.max_outbound_frame_size, s._expected_content_length)
                    for sid, s in server.streams.items() if not s.closed),
             server.inbound_flow_control_window, server.decoder.header_table.dynamic_entries)
    return result, server.data_to_send(), books


class ReceivingSameAsH2(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(_actions, st.lists(st.integers(0, 3), max_size=16), st.integers(0, 30))
    # A 1xx :status in a request, after a first request opened the connection.
    @example([("request", True, 0, False, b""), ("status", b"100")], [], 0)
    # One stream more than the limit (3 here), each head read on its own.
    @example([("request", True, 0, False, b"")] * 4, [], 0)
    # A head that h2 holds for its CONTINUATION, then another stream's HEADERS in the same read.
    @example([("ping",), ("raw", "unfinished"), ("request", True, 0, False, b"")], [2, 0], 0)
    def test_same_events_answers_and_books(self, actions: list[tuple[object, ...]], joins: list[int],
                                           cut: int) -> None:
        """
        The reads fall on frame boundaries (one action's frames, or a few
        actions' together: the fast path's case) and, once, anywhere.
        """
        pieces = client_bytes(actions)
        reads = []
        while pieces:
            count = 1 + (joins.pop() if joins else 0)
            reads.append(b"".join(pieces[:count]))
            del pieces[:count]
        if cut and len(reads) > 1:
            last = reads.pop()
            reads += [last[:cut], last[cut:]]
        stock, framing = server_for(H2Connection), server_for(FramingConnection)
        for chunk in reads:
            if not chunk:
                continue
            expected, got = outcome(stock, chunk), outcome(framing, chunk)
            self.assertEqual(got, expected)
            if isinstance(expected[0], tuple):  # the connection is over
                break

    def test_an_opening_head_skips_h2s_frame_buffer(self) -> None:
        """The point of the fast path: a stream's opening head is not read by h2's frame buffer."""
        server = server_for(FramingConnection)
        request = ("request", True, 0, False, b"")
        preface, ping, first, second = client_bytes([("ping",), request, request])
        # The first head moves the connection from IDLE to SERVER_OPEN: h2's own path, then the fast one.
        server.receive_data(preface + ping + first)
        counting = server.incoming_buffer = CountingBuffer()  # the preface is read: none expected now
        events = server.receive_data(second)
        self.assertEqual([type(e).__name__ for e in events], ["RequestReceived"])
        self.assertIsInstance(events[0].stream_ended, StreamEnded)  # type: ignore[attr-defined]
        self.assertEqual(counting.reads, 0)
        server.receive_data(ping)
        self.assertEqual(counting.reads, 2)  # h2 reads the PING frame (and finds no more)


class CountingBuffer(FrameBuffer):
    """h2's frame buffer, counting the frames asked of it."""

    reads = 0

    def __next__(self) -> Frame:
        self.reads += 1
        return super().__next__()
