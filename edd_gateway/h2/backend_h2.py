"""
The C{h2} client state machine of one h2c backend connection
(L{edd_gateway.h2.backend_connection}), set up once: its settings in force
from the start, the larger connection window, GOAWAY that lets the streams
in flight finish, and the HPACK coders of the client side: the static-table
encoder (L{edd_gateway.h2.hpack_out}) for the request heads, the decoder
that remembers repeated blocks (L{edd_gateway.h2.hpack_in}) for the
responses' heads and trailers.

Apart from the connection's protocol because none of it is per event: it is
what the connection is made of.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, Event
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame

from edd_gateway.h2.hpack_in import RepeatingBlockDecoder
from edd_gateway.h2.hpack_out import StaticTableEncoder

__all__ = ["CONNECTION_WINDOW", "MAX_FRAME_SIZE", "backend_h2"]

#: What all of a connection's response streams may have unacknowledged (HTTP/2 starts it at 64 KiB whatever
#: SETTINGS say).
CONNECTION_WINDOW = 1 << 24
#: SETTINGS_MAX_FRAME_SIZE towards the backend (RFC 9113 allows 16 KiB to 16 MiB).
MAX_FRAME_SIZE = 1 << 18
#: The largest decoded response head or trailers (hpack's own default bound).
MAX_HEADER_LIST = 1 << 16


class _GoawayKeepsStreams(H2Connection):
    """
    h2 moves its whole connection to CLOSED on the peer's GOAWAY, after which any frame of the streams the backend
    still finishes (RFC 9113 6.8: those up to C{last_stream_id}) is a protocol error.  gRPC servers send a
    graceful GOAWAY at shutdown and at C{max_connection_age}; their streams in flight must finish.  So GOAWAY
    is only reported here, and L{H2BackendProtocol} opens no new stream.  The handler overridden is h2's
    private one; the GOAWAY tests (unit, and grpc's graceful stop) fail should h2 stop calling it.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def backend_h2(stream_window: int) -> H2Connection:
    """
    A new client connection's state machine, its preface and SETTINGS queued: each response stream's receive
    window C{stream_window}, the connection's L{CONNECTION_WINDOW}, no server push.
    """
    h2 = _GoawayKeepsStreams(H2Configuration(
        client_side=True, header_encoding=None,
        validate_outbound_headers=False, normalize_outbound_headers=False))  # see backend_connection.checked()
    # In force from the start, as h2/server.py does: h2 enforces its own local settings.
    # Frames of up to 256 KiB from the backend: a sixteenth of the frames (and of h2's work per frame) of its
    # default 16 KiB for a large response; the client's own frame size still bounds what it is sent.
    h2.local_settings = Settings(client=True, initial_values={
        SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
        SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE})
    # h2 reads its bound from the settings only at construction and at their acknowledgement: told here.
    h2.max_inbound_frame_size = MAX_FRAME_SIZE
    # The request heads, as the responses to clients: the hpack library's encoder searches its dynamic table
    # and Huffman-codes in Python, a tenth of a relayed gRPC call's time.
    h2.encoder = StaticTableEncoder()  # type: ignore[assignment]  # duck-typed: h2 calls encode() and sets header_table_size
    # A gRPC server's heads and trailers repeat call after call (":status 200", "grpc-status 0"): decoded once.
    h2.decoder = RepeatingBlockDecoder(MAX_HEADER_LIST)
    h2.initiate_connection()
    h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return h2
