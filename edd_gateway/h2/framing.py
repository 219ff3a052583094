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
"""

from __future__ import annotations

from h2.connection import ConnectionInputs, H2Connection
from h2.stream import StreamInputs

__all__ = ["FramingConnection"]

_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame (RFC 9113 4.1): 24-bit length, type, flags, 31-bit stream identifier, payload."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")) + payload


class FramingConnection(H2Connection):
    """An C{H2Connection} (server side) whose final response heads and DATA are written without frame objects."""

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
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
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
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        size = len(data)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._data_to_send += frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)
