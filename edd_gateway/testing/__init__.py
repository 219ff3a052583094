"""
What end-to-end tests share: the real gateway as a subprocess
(L{GatewayProcess}), throwaway backends listening on loopback in the test
process (echo, event stream, large download, silent, closing, garbage,
WebSocket echo), bounded runners for real clients (curl, raw sockets), the
compute service's writes to its tables (L{ComputeService}), and the rule
that a missing tool skips a test unless integration is required
(C{EDD_GATEWAY_REQUIRE_INTEGRATION=1}, as in CI).  Everything waits with a
bound and fails with the gateway's log attached (L{EndToEndMixin}).  The
pieces live in private modules by concern; import them from here.
"""

from ._attacks import AttackSettings, SlowAttack, start_attack
from .backends import (
    BackendServer,
    DownloadResource,
    EchoResource,
    EventStream,
    EventStreamResource,
    WebSocketEcho,
    behaviour_factory,
    download_data,
    download_sha256,
    echo_header,
    start_backend,
    start_websocket_echo,
    web_factory,
)
from ._clients import CurlResponse, MetricsScrape, RawConnection, RawResponse, curl, parse_responses
from .compute import ComputeService, NewContainer, NewSSHKey, md5_fingerprint, start_compute
from ._gateway import GatewayProcess, routes_yaml
from ._mixin import EndToEndMixin
from .tools import (
    REQUIRE_INTEGRATION,
    ProcessRun,
    as_deferred,
    free_port,
    integration_required,
    poll_until,
    require_asyncio_reactor,
    require_module,
    require_tool,
    run_process,
)

__all__ = [
    "REQUIRE_INTEGRATION", "AttackSettings", "SlowAttack", "start_attack",
    "BackendServer", "ComputeService", "CurlResponse", "MetricsScrape", "DownloadResource", "EchoResource",
    "EndToEndMixin", "EventStream", "EventStreamResource", "GatewayProcess", "NewContainer", "NewSSHKey",
    "ProcessRun", "RawConnection", "RawResponse", "WebSocketEcho",
    "as_deferred", "behaviour_factory", "curl", "download_data", "download_sha256", "echo_header", "free_port",
    "integration_required", "md5_fingerprint", "parse_responses", "poll_until", "require_asyncio_reactor",
    "require_module", "require_tool", "routes_yaml",
    "run_process", "start_backend", "start_compute", "start_websocket_echo", "web_factory",
]
