"""
The gateway's own answers to gRPC requests, gRPC-shaped: a gRPC client reads
the status of a call from C{grpc-status} and C{grpc-message}, never from the
HTTP status, and reports an HTML error page as "unexpected content-type"
with the page thrown away.  So a refusal of a request whose content-type is
C{application/grpc...} is HTTP 200, C{content-type: application/grpc}, and
one HEADERS frame ending the stream ("trailers-only") carrying the status
the HTTP one maps to (L{grpc_code}).

Pure, but for L{refusal}, the job the HTTP/2 server answers a refused
request with (gRPC-shaped, or the gateway's usual page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edd_gateway.http.answer import LocalAnswer
from edd_gateway.http.errors import render_error

if TYPE_CHECKING:
    from edd_gateway.http.clientside import ClientSide

Headers = list[tuple[bytes, bytes]]

__all__ = ["GRPC_CODES", "grpc_answer", "grpc_code", "is_grpc", "refusal", "trailers_only"]

#: The codes the gateway answers with (grpc/grpc doc/statuscodes.md).
GRPC_CODES = {
    "UNKNOWN": 2, "DEADLINE_EXCEEDED": 4, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "UNAUTHENTICATED": 16,
}

# What each of the gateway's own HTTP statuses says to a gRPC client.  From
# grpc/grpc doc/http-grpc-status-mapping.md where it has one, except that the
# gateway's limits are RESOURCE_EXHAUSTED (the client is told to slow down,
# not that the server is gone) and its timeouts DEADLINE_EXCEEDED.  421 (a
# route that is not gRPC, on a prior-knowledge connection, or a TLS
# connection set up for another host) is UNIMPLEMENTED: the method is not
# served there.
_BY_STATUS = {
    400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
    405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 421: "UNIMPLEMENTED",
    429: "RESOURCE_EXHAUSTED", 431: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 505: "UNIMPLEMENTED",
}


def grpc_code(status: int) -> int:
    """The gRPC status code the gateway's own HTTP C{status} is answered with."""
    return GRPC_CODES[_BY_STATUS.get(status, "UNKNOWN")]


def is_grpc(headers: Headers) -> bool:
    """Whether an HTTP/2 request head (names lower-case) is a gRPC call: its content-type says so."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == b"application/grpc"
    return False


def _encoded(message: str) -> bytes:
    # The gRPC spec's percent-encoding: printable ASCII but '%' as is, the rest of the UTF-8 as %XX.
    return b"".join(bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
                    for byte in message.encode("utf-8"))


def trailers_only(code: int, message: str, request_id: str = "") -> Headers:
    """The one HEADERS frame of a gRPC call answered with C{code}: sent with END_STREAM."""
    head = [(b":status", b"200"), (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % code), (b"grpc-message", _encoded(message))]
    if request_id:
        head.append((b"x-request-id", request_id.encode("ascii")))
    return head


def grpc_answer(status: int, detail: str, request_id: str = "") -> bytes:
    """
    The gateway's own C{status} answer as an HTTP/1.1 response for the
    stream's reframer: its head becomes the trailers-only HEADERS frame (no
    body, and no Content-Length: gRPC clients expect none).
    """
    lines = [b"HTTP/1.1 200 OK"] + [name + b": " + value for name, value
                                      in trailers_only(grpc_code(status), detail, request_id)[1:]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def refusal(client: ClientSide, headers: Headers, status: int, detail: str, request_id: str) -> LocalAnswer:
    """The job answering a request refused with C{status}: gRPC-shaped when C{headers} are a gRPC call's."""
    if is_grpc(headers):
        answer = LocalAnswer(client, None, grpc_answer(status, detail, request_id), True, 200, request_id)
        answer.grpc_status = str(grpc_code(status))
        return answer
    return LocalAnswer(client, None, render_error(status, detail, request_id), True, status, request_id)
