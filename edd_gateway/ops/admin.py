"""
The admin endpoint (C{--admin}): C{/healthz}, C{/readyz} and C{/metrics}.

C{/healthz} answers 200 while the process serves its reactor: a liveness
probe that fails only when the gateway is stuck.  C{/readyz} answers 200
when the gateway should get traffic — routes loaded, containers known
(with a database: its first full read done), not draining — and 503
otherwise; its JSON body lists every part and whether it is degraded
(database or NATS down, certificates expiring), which does not by itself
turn readiness off: the last good state is still served.  C{/metrics} is
the Prometheus text format (or OpenMetrics when the scraper asks),
rendered by prometheus-client in the reactor thread: its own Twisted
resource runs the collection in a thread pool, beside the reactor thread
that changes the counters it reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["Part", "Readiness", "admin_site"]

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@dataclass(frozen=True)
class Part:
    """One part of the gateway as C{/readyz} shows it."""

    state: str
    detail: str = ""
    #: A part that is not ok keeps the gateway out of rotation.
    required: bool = False


@dataclass
class Readiness:
    """The parts C{/readyz} reports, each read at request time."""

    parts: dict[str, Callable[[], Part]] = field(default_factory=dict)

    def report(self) -> tuple[bool, dict[str, Part]]:
        parts = {name: check() for name, check in self.parts.items()}
        ready = all(part.state == OK for part in parts.values() if part.required)
        return ready, parts


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"


class _Ready(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        ready, parts = self.readiness.report()
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {
            "ready": ready,
            "parts": {name: {"state": part.state, **({"detail": part.detail} if part.detail else {})}
                      for name, part in parts.items()},
        }
        return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)


def admin_site(registry: CollectorRegistry, readiness: Readiness) -> Site:
    """The admin endpoint's site: C{/healthz}, C{/readyz}, C{/metrics}."""
    root = Resource()
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(readiness))
    root.putChild(b"metrics", _Metrics(registry))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    # Probes and scrapes every few seconds would fill the log.
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log for it
    return site
