"""
Listening services that say which option asked for them.

A port already in use ended the start in a 48-line traceback (``twistd
-n``), or, daemonised, in twistd's status line cut at 100 bytes: neither
said which option's port it was.  L{listener_service} is
C{strports.service} whose failure to listen is one short line naming the
option, its endpoint and the system's reason (L{StartFailure}), and
L{check_endpoint} refuses a malformed endpoint string at option parsing,
naming the option.  L{install_start_failure_hook} makes an uncaught
L{StartFailure} print as that one line (``twistd -n`` lets exceptions out
of start-up; daemonised, twistd itself reports the exception's text).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

log = Logger()


class StartFailure(Exception):
    """The gateway cannot start; the text is what the operator is told (short: twistd cuts at 100 bytes)."""


# What twistd prints before the text, daemonised: short, and the product's name.
StartFailure.__module__ = "edd_gateway"


class _NamedListener(StreamServerEndpointService):
    option = ""
    description = ""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as problem:
            reason = getattr(problem.socketError, "strerror", None) or str(problem.socketError)
            # Short: daemonised, twistd passes on 100 bytes of
            # "<exception's qualified name>: <text>".
            message = f"{self.option} {self.description}: {reason}"
            log.error("{message}", message=message)
            raise StartFailure(message) from None


def listener_service(option: str, description: str, factory: IProtocolFactory, reactor: Any) -> _NamedListener:
    """C{strports.service(description, factory)}, telling C{option} when it cannot listen."""
    service = strports.service(description, factory, reactor=reactor)
    service.__class__ = _NamedListener
    service.option, service.description = option, description  # type: ignore[attr-defined]  # now a _NamedListener
    return service  # type: ignore[return-value]  # now a _NamedListener


def check_endpoint(option: str, description: str) -> str:
    """C{description} if it is a server endpoint string; else a UsageError naming C{option}."""
    from twisted.internet import reactor
    from twisted.python import usage

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as problem:
        why = str(problem) or type(problem).__name__
        raise usage.UsageError(f"{option} {description!r} is not an endpoint ({why}); "
                               "e.g. tcp:8080:interface=127.0.0.1") from None
    return description


def install_start_failure_hook() -> None:
    """An uncaught L{StartFailure} prints as its one line, not a traceback."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        if isinstance(value, StartFailure):
            print(f"edd-gateway: {value}", file=sys.stderr)
            return
        previous(kind, value, traceback)

    sys.excepthook = hook


__all__ = ["StartFailure", "check_endpoint", "install_start_failure_hook", "listener_service"]
