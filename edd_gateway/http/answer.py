"""
A request the gateway answers itself, without a backend: its own error
pages, redirects and internal targets.
"""

from __future__ import annotations

from edd_gateway.http.clientside import ClientSide
from edd_gateway.http.headers import BODY_NONE, RequestInfo
from edd_gateway.http.record import RequestRecordFields
from edd_gateway.routes.model import Route

__all__ = ["LocalAnswer"]


class LocalAnswer(RequestRecordFields):
    """
    A request the gateway answers itself (its own error pages, redirects and
    internal targets): the response is written when its turn comes, and the
    request body, if any, is dropped.
    """

    def __init__(self, client: ClientSide, info: RequestInfo | None, response: bytes, keep_alive: bool,
                 status: int, request_id: str = "-", *, route: Route | None = None) -> None:
        self.client = client
        self.context = client.context
        self._request_id = request_id
        self.route = route
        self.info = info
        self.response = response
        self.keep_alive = keep_alive
        self.status = status
        self.finished = False
        self.request_done = info is None or info.body == BODY_NONE
        self.started = self.context.clock.seconds()
        self.bytes_in = 0

    def start(self) -> None:
        client = self.client
        client.write(self.response)
        self.finished = True
        self._report()
        client.job_finished(self)

    # What observers read beyond RequestRecordFields.
    responded = None
    completed = True

    @property
    def bytes_out(self) -> int:
        # The gateway's own page: the whole response, head included.
        return len(self.response)

    def request_body(self, data: bytes) -> None:
        pass

    def request_complete(self) -> None:
        self.request_done = True

    def client_lost(self) -> None:
        self.finished = True
