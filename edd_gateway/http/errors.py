"""
The gateway's own answers: a small page naming the status and the reason.

Every refusal the gateway makes itself (400, 404, 408, 413, 431, 502, 503,
504, ...) goes through L{render_error}, so clients, logs and tests see one
shape.
"""

from __future__ import annotations

from html import escape
from http import HTTPStatus


class GatewayError(Exception):
    """
    A request the gateway answers itself.

    @ivar status: the HTTP status code.
    @ivar detail: a sentence for the page and the log line.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {reason_phrase(self.status)}: {self.detail}"


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_error(
    status: int,
    detail: str,
    request_id: str = "",
    close: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """
    A complete HTTP/1.1 response: head and a small HTML body.
    """
    phrase = reason_phrase(status)
    body = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{status} {escape(phrase)}</title></head>\n"
        f"<body><h1>{status} {escape(phrase)}</h1>\n<p>{escape(detail)}</p>\n"
        f"<hr><p><small>edd-gateway"
        + (f" &middot; request {escape(request_id)}" if request_id else "")
        + "</small></p></body></html>\n"
    ).encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/html; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if request_id:
        lines.append(f"X-Request-ID: {request_id}")
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
