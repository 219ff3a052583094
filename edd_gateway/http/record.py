"""
What observers of endings read from an HTTP request
(L{edd_gateway.ops.observe.HTTPRequestRecord}), shared by the proxied
L{edd_gateway.http.exchange.Exchange} and the gateway's own
L{edd_gateway.http.answer.LocalAnswer}: computed only when an observer
asks, so the request path pays nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edd_gateway.ops.observe import route_label

if TYPE_CHECKING:
    from edd_gateway.http.clientside import ClientContext
    from edd_gateway.http.headers import RequestInfo
    from edd_gateway.routes.model import Route

__all__ = ["RequestRecordFields"]


class RequestRecordFields:
    """
    Needs C{context} (the client connection's), C{info} (the request head, or
    L{None} when the head itself was refused) and C{route} (or L{None}).
    """

    context: ClientContext
    info: RequestInfo | None
    route: Route | None
    #: The id of a response to a head that could not be read (no C{info}).
    _request_id = "-"
    #: A gRPC call's status (edd_gateway.h2.backend_exchange sets it); "" for other requests.
    grpc_status = ""

    def _report(self) -> None:
        """Tell the listener's observer (metrics, the access log) that this request ended."""
        context = self.context
        observer = context.observer
        if observer is not None:
            # Subclasses supply the rest of HTTPRequestRecord (status, bytes_in, ...).
            observer.http_request(self, context.clock.seconds())  # type: ignore[arg-type]  # a subclass is a record

    @property
    def client_ip(self) -> str:
        return self.context.client_ip

    @property
    def scheme(self) -> str:
        return self.context.scheme

    @property
    def method(self) -> bytes:
        return self.info.method if self.info is not None else b"-"

    @property
    def host(self) -> bytes | None:
        return self.info.host if self.info is not None else None

    @property
    def request_target(self) -> bytes:
        return self.info.target if self.info is not None else b"-"

    @property
    def request_id(self) -> str:
        return self.info.request_id if self.info is not None else self._request_id

    @property
    def proto(self) -> str:
        return self.context.protocol

    @property
    def route_label(self) -> str:
        return route_label(self.route)

    @property
    def backend(self) -> str:
        return "-" if self.route is None else str(self.route.target)
