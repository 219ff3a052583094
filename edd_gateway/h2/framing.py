"""
The client connection's C{h2} state machine, with the response's HEADERS
and DATA frames written here as bytes.

C{h2}'s own C{send_headers} and C{send_data} build a frame object per frame
(flags as a set, the header list re-encoded to UTF-8, validation flags
worked out) and serialize it; for a response the gateway has already
checked, that was about a sixth of an HTTP/2 request's instructions.
L{FramingConnection} keeps C{h2}'s bookkeeping exactly (the connection's and
the stream's state machines are given the same inputs, the same windows
are spent) and writes the frames' nine-byte headers itself (RFC 9113 4.1).
Informational heads and trailers, which C{h2}'s stream treats apart, still
go through C{h2}.

Receiving is the same the other way: a HEADERS frame that opens a stream in
one frame (END_HEADERS, no padding, no priority) is read from its nine
bytes and handed to the same C{h2} steps (the HPACK decoder, the
connection's and the new stream's state machines, which make the events);
C{h2}'s frame buffer builds a frame object with a set of flags per frame
and counts the open streams by walking them all, which was about a tenth of
an HTTP/2 request's instructions.  Every other frame, and any frame while
C{h2}'s buffer holds part of one, goes to C{h2}'s own C{receive_data}.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection, _decode_headers
from h2.events import Event, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError
from h2.stream import H2Stream, H2StreamStateMachine, StreamClosedBy, StreamInputs, StreamState
from h2.settings import SettingCodes

__all__ = ["FramingConnection"]

_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20


# Settings that always have a value in force, read from h2's table of them
# (Settings._settings: code -> values, the one in force first), as its
# properties and __getitem__ do in two Python calls.
_MAX_STREAMS, _INITIAL_WINDOW = SettingCodes.MAX_CONCURRENT_STREAMS, SettingCodes.INITIAL_WINDOW_SIZE


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame (RFC 9113 4.1): 24-bit length, type, flags, 31-bit stream identifier, payload."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")) + payload


class FramingConnection(H2Connection):
    """An C{H2Connection} (server side) whose final response heads and DATA are written without frame objects."""

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config)
        settings = self.config
        #: h2 neither checks nor re-encodes received fields (the gateway's configuration: h1_view checks them).
        #: Read once: h2's configuration options are descriptors, Python code at each read.
        self._fields_as_sent = not (settings.validate_inbound_headers or settings.normalize_inbound_headers
                                    or settings.header_encoding)

    def send_response_head(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                           end_stream: bool = False) -> None:
        """
        Send a stream's head: a final response's (C{:status} first, 2xx to
        5xx) here, anything else (1xx, trailers) by C{h2}'s C{send_headers}.
        """
        stream = self.streams.get(stream_id)
        if (stream is None or not headers or headers[0][0] != b":status" or headers[0][1][:1] == b"1"
                or stream.state_machine.headers_sent):
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        self._sent(stream.state_machine, end_stream, head=True)
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        end = _END_STREAM if end_stream else 0
        if len(block) <= size:
            self._data_to_send += frame(_HEADERS, end | _END_HEADERS, stream_id, block)
            return
        # RFC 9113 6.10: the rest of a large block in CONTINUATION frames.
        pieces = [block[start:start + size] for start in range(0, len(block), size)]
        self._data_to_send += frame(_HEADERS, end, stream_id, pieces[0])
        for piece in pieces[1:-1]:
            self._data_to_send += frame(_CONTINUATION, 0, stream_id, piece)
        self._data_to_send += frame(_CONTINUATION, _END_HEADERS, stream_id, pieces[-1])

    def send_data_frame(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """
        One DATA frame, which the caller has fitted to the windows and the
        peer's frame size (C{local_flow_control_window},
        C{max_outbound_frame_size}); C{h2}'s C{send_data} otherwise.
        """
        stream = self.streams[stream_id]
        self._sent(stream.state_machine, end_stream, head=False)
        size = len(data)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._data_to_send += frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)

    def _sent(self, machine: H2StreamStateMachine, end_stream: bool, *, head: bool) -> None:
        """
        C{h2}'s inputs for a response's head (C{head}) or DATA, and then
        END_STREAM: on a server connection's open stream done in place, in
        any other state given to C{h2}'s own C{process_input}, errors and
        all.  Its state
        machines look each input up in a table keyed by two enums, whose
        hashing is Python code: with the events made and dropped, those
        eight lookups per request were a fifteenth of its calls.  The
        transitions are RFC 9113 5.1's, as C{h2} writes them (C{h2.stream}'s
        C{_transitions}); C{tests/unit/test_h2_framing.py} checks the books
        against C{h2}'s.
        """
        state = machine.state
        if (self.state_machine.state is not ConnectionState.SERVER_OPEN or machine.client is not False
                or not (state is StreamState.HALF_CLOSED_REMOTE or state is StreamState.OPEN)):
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS if head else ConnectionInputs.SEND_DATA)
            machine.process_input(StreamInputs.SEND_HEADERS if head else StreamInputs.SEND_DATA)
            if end_stream:
                machine.process_input(StreamInputs.SEND_END_STREAM)
            return
        if head:
            machine.headers_sent = True  # response_sent; a head after the head is trailers, h2's
        if end_stream:
            if state is StreamState.HALF_CLOSED_REMOTE:
                machine.state = StreamState.CLOSED
                machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
            else:
                machine.state = StreamState.HALF_CLOSED_LOCAL

    def receive_data(self, data: bytes) -> list[Event]:  # type: ignore[override]  # h2 takes any buffer; the gateway passes bytes
        """C{h2}'s C{receive_data}, with the HEADERS frames that open a stream read here."""
        buffered = self.incoming_buffer
        if buffered._preamble_len or buffered._data or buffered._headers_buffer:
            return super().receive_data(data)
        events: list[Event] = []
        start, size = 0, len(data)
        while size - start >= 9:
            length = int.from_bytes(data[start:start + 3], "big")
            end = start + 9 + length
            if end > size:
                break
            flags = data[start + 4]
            stream_id = int.from_bytes(data[start + 5:start + 9], "big") & 0x7FFFFFFF
            if (data[start + 3] == _HEADERS and flags & (_END_HEADERS | _PADDED | _PRIORITY) == _END_HEADERS
                    and stream_id & 1 and stream_id > self.highest_inbound_stream_id
                    and length <= self.max_inbound_frame_size
                    and len(self.streams) < self.local_settings._settings[_MAX_STREAMS][0]):
                try:
                    events += self._receive_request_head(stream_id, data[start + 9:end], flags & _END_STREAM)
                except ProtocolError as problem:  # as h2's receive_data: GOAWAY queued, then raised
                    self._terminate_connection(problem.error_code)
                    raise
            else:
                events += super().receive_data(data[start:end])
            start = end
            if buffered._headers_buffer:  # a head continued in CONTINUATION frames: h2 reads the rest
                break
        if start < size:
            events += super().receive_data(data[start:])
        return events

    def _receive_request_head(self, stream_id: int, block: bytes, end_stream: int) -> list[Event]:
        """
        What C{h2}'s C{_receive_headers_frame} does for a stream's opening
        head (the stream count is under the limit: fewer streams are kept
        than that, open or not).
        """
        headers = _decode_headers(self.decoder, block)
        # h2.utilities.is_informational_response, in place: a :status among
        # the leading pseudo-header fields, 1xx (h2 refuses that request).
        informational = False
        for field_name, field_value in headers:
            if field_name[:1] != b":":
                break
            if field_name == b":status":
                informational = field_value[:1] == b"1"
                break
        if self.state_machine.state is not ConnectionState.SERVER_OPEN or not self._fields_as_sent or informational:
            opened = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
            stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
            _, stream_events = stream.receive_headers(headers, bool(end_stream), self.config.header_encoding)
            return opened + stream_events
        # The gateway's case: what h2's receive_headers does when it neither
        # checks nor re-encodes the fields, the transitions in place as in
        # _sent: IDLE -> OPEN (request_received), then HALF_CLOSED_REMOTE
        # with END_STREAM (stream_half_closed).  The StreamEnded event is
        # only attached to the request's (h2 also lists it after): the
        # server reads the end from there.
        # _begin_new_stream's work, less its three debug lines (h2 formats
        # the stream table for one of them) and the checks receive_data made.
        stream = H2Stream(stream_id, config=self.config,
                          inbound_window_size=self.local_settings._settings[_INITIAL_WINDOW][0],
                          outbound_window_size=self.remote_settings._settings[_INITIAL_WINDOW][0])
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        self.highest_inbound_stream_id = stream_id
        machine = stream.state_machine
        machine.client = False
        machine.headers_received = True
        request = RequestReceived(stream_id=stream_id)
        if end_stream:
            machine.state = StreamState.HALF_CLOSED_REMOTE
            request.stream_ended = StreamEnded(stream_id=stream_id)
        else:
            machine.state = StreamState.OPEN
        stream._initialize_content_length(headers)
        request.headers = list(headers)
        return [request]
