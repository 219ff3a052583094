"""
Conch logs every packet type, channel and key exchange step at debug and
info level (and a client's ordinary goodbye at error level), and twistd
prints every level: one login would be dozens of lines.  The gateway's SSH
classes replace Conch's loggers with L{conch_logger}, which keeps warnings
and worse; the gateway logs what matters (logins, refusals) itself.
"""

from __future__ import annotations

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

_WARNINGS_AND_WORSE = FilteringLogObserver(
    globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
)


def conch_logger() -> Logger:
    """A class-level Logger for a Conch subclass that drops debug and info events."""
    return Logger(observer=_WARNINGS_AND_WORSE)


__all__ = ["conch_logger"]
