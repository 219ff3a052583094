"""
Admission: whether a new connection may be served at all, decided once per
connection before anything reads from it, and the count of every limit the
gateway enforces.

L{Admission} is shared by every listener.  L{Admission.admit} checks, in
order: the allow-list (never refused), the ban list (L{edd_gateway.front.bans}),
the global cap on open connections, the per-client cap, and the per-client
rate of new connections (a token bucket).  A refused connection is aborted
at once: nothing has been read from it yet, so no protocol is known in
which to answer (an HTTP 503 to an SSH client would be garbage); the client
sees a reset, the operator a (rate-limited) log line and a metric.

The connection paths report limit hits (L{Admission.hit}), protocol
garbage (L{Admission.garbage}) and refused SSH logins
(L{Admission.ssh_login_refused}) here; the ones that count as strikes go to
the ban list.  Counters are plain dictionary increments read at scrape time.
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.usage import UsageError

from edd_gateway.front.bans import DEFAULT_ALLOW, BanList, BanSettings, client_key, parse_allow
from edd_gateway.front.connections import is_open

__all__ = [
    "LIMITS",
    "OPTIONS",
    "REFUSAL_REASONS",
    "STRIKING_LIMITS",
    "Admission",
    "AdmissionLimits",
    "AdmissionService",
    "NO_ADMISSION",
    "NoAdmission",
    "build_admission",
    "check_options",
    "peer_host",
]

log = Logger()

#: Why a connection is refused at admission.
REFUSAL_REASONS = ("banned", "max-connections", "max-connections-per-ip", "rate")

#: Every limit the gateway enforces, as C{edd_gateway_limit_hits_total}
#: labels them.  C{idle} is a keep-alive connection closed after
#: C{--keepalive-timeout}: counted, never a strike.
LIMITS = (
    "max-connections", "max-connections-per-ip", "rate",
    "sniff-timeout", "tls-hello-timeout", "tls-handshake-timeout",
    "header-timeout", "request-line", "header-size", "header-count", "body-size", "body-timeout", "body-streams",
    "idle", "stream-idle", "websocket-idle", "tcp-idle",
    "backend-connect-timeout", "backend-response-timeout", "ssh-login-grace",
    "h2-rapid-reset", "h2-ping-flood", "h2-settings-flood", "h2-window-update-flood", "h2-empty-frames",
)  # fmt: skip

#: The limits whose hits are strikes of kind C{limit} against the client: a
#: client that keeps opening too many connections, or keeps stalling in the
#: opening of one (slowloris).  Idle closes, oversized bodies, backend
#: timeouts (not the client's doing) and the global cap (everyone's) are not.
STRIKING_LIMITS = frozenset({
    "max-connections-per-ip", "rate", "sniff-timeout", "tls-hello-timeout", "tls-handshake-timeout",
    "header-timeout", "request-line", "header-size", "header-count", "body-timeout",
    # HTTP/2 floods (edd_gateway.h2.guard): no browser comes near them.
    "h2-rapid-reset", "h2-ping-flood", "h2-settings-flood", "h2-window-update-flood", "h2-empty-frames",
})  # fmt: skip

#: Seconds between two refusal log lines for one client (the lines between
#: are counted and reported in the next).
LOG_INTERVAL = 60.0
#: Refusal log lines per second at most, all clients together: a flood from
#: many addresses writes no more than this.
LOG_LINES_PER_SECOND = 20
#: Seconds between two sweeps of the per-client state.
SWEEP_INTERVAL = 5.0
#: Seconds between two sweeps forced by a global refusal or a full table.
FORCED_SWEEP_INTERVAL = 1.0


@dataclass(frozen=True)
class AdmissionLimits:
    """
    @ivar max_connections: open connections on all listeners together (0: no cap).
    @ivar max_per_client: open connections from one client (0: no cap).
    @ivar rate_per_client: new connections per second from one client,
        sustained (0: no limit).
    @ivar burst_per_client: new connections one client may open at once
        after a quiet spell (the token bucket's size).
    """

    max_connections: int = 20000
    max_per_client: int = 256
    rate_per_client: float = 50.0
    burst_per_client: float = 100.0


class _Client:
    """One client's connections, rate bucket and log throttle."""

    __slots__ = ("connections", "tokens", "stamp", "logged", "suppressed")

    def __init__(self, tokens: float, now: float) -> None:
        # Weakly held: a closed connection is not kept alive until a sweep.
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.tokens = tokens
        self.stamp = now
        self.logged = -LOG_INTERVAL
        self.suppressed = 0

    def prune(self) -> int:
        """Forget the closed connections; how many are open."""
        closed = [connection for connection in self.connections if not is_open(connection)]
        for connection in closed:
            self.connections.discard(connection)
        return len(self.connections)


def peer_host(transport: Any) -> str:
    """The client's address as text (C{""} when the peer is no IP endpoint)."""
    return str(getattr(transport.getPeer(), "host", ""))


class Admission:
    """
    The gateway's door policy and limit counters, shared by every listener.

    Open connections are counted without a close callback: a connection
    changes protocol several times (sniffer, TLS, HTTP, relay) and none of
    them could report its end without a wrapper in the data path or a call
    in every protocol's connectionLost.  Instead each client's connections
    are held (weakly) and the closed ones pruned when that client reaches its
    cap, and the global count, raised by each admission, is corrected to the
    truth by a periodic sweep and by a sweep before any global refusal (at
    most one a second, so that a flood at the cap does not sweep per
    connection).  Between sweeps the global count can only be too high, so
    the cap errs on the safe side.

    @ivar refused: connections refused, by reason (L{REFUSAL_REASONS}).
    @ivar hits: limit hits, by limit (L{LIMITS}).
    @ivar active: open connections as last counted (exact after a sweep,
        an upper bound between sweeps).
    """

    def __init__(self, clock: IReactorTime, limits: AdmissionLimits = AdmissionLimits(),
                 bans: BanList | None = None) -> None:
        self.clock = clock
        self.limits = limits
        self.bans = bans if bans is not None else BanList(clock, BanSettings())
        self.refused: collections.Counter[str] = collections.Counter()
        self.hits: collections.Counter[str] = collections.Counter()
        self.active = 0
        self._clients: dict[str, _Client] = {}
        self._last_sweep = -FORCED_SWEEP_INTERVAL
        self._log_second = -1.0
        self._log_lines = 0
        # A full sweep when the table holds more clients than this, so a
        # flood of distinct addresses is forgotten as fast as it comes.
        self._table_bound = max(1024, 2 * limits.max_connections)

    # Admission

    def admit(self, host: str, connection: Any, listener: str = "") -> str | None:
        """
        Whether C{connection} from C{host} may be served: L{None}, or the
        reason it is refused (the caller closes it at once).  An admitted
        connection is counted until it closes.
        """
        key = client_key(host)
        now = self.clock.seconds()
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= self._table_bound:
                self._forced_sweep(now)
            client = self._clients[key] = _Client(self.limits.burst_per_client, now)
        bans = self.bans
        if bans.settings.allow and bans.allowed(host):
            self._admitted(client, connection)
            return None
        if bans.banned(key):
            return self._refuse("banned", host, key, client, listener, now,
                                f"for {bans.ends_in(key):.0f} s more")
        limits = self.limits
        if limits.max_connections and self.active >= limits.max_connections:
            self._forced_sweep(now)
            if self.active >= limits.max_connections:
                return self._refuse("max-connections", host, key, client, listener, now,
                                    f"{self.active} connections open on the gateway")
        if limits.max_per_client and len(client.connections) >= limits.max_per_client:
            if client.prune() >= limits.max_per_client:
                return self._refuse("max-connections-per-ip", host, key, client, listener, now,
                                    f"{len(client.connections)} connections open from it")
        rate = limits.rate_per_client
        if rate:
            tokens = min(limits.burst_per_client, client.tokens + (now - client.stamp) * rate)
            client.stamp = now
            if tokens < 1.0:
                client.tokens = tokens
                return self._refuse("rate", host, key, client, listener, now,
                                    f"more than {rate:g} new connections a second")
            client.tokens = tokens - 1.0
        self._admitted(client, connection)
        return None

    def admit_transport(self, transport: Any, listener: str = "") -> bool:
        """L{admit} the connection of C{transport}, aborting it when refused; whether admitted."""
        if self.admit(peer_host(transport), transport, listener) is None:
            return True
        transport.abortConnection()
        return False

    def _admitted(self, client: _Client, connection: Any) -> None:
        client.connections.add(connection)
        self.active += 1
        return None

    def _refuse(self, reason: str, host: str, key: str, client: _Client, listener: str, now: float,
                detail: str) -> str:
        self.refused[reason] += 1
        if reason != "banned":
            self.hit(reason, host)
        if now - client.logged < LOG_INTERVAL or not self._log_budget(now):
            client.suppressed += 1
            return reason
        more, client.suppressed, client.logged = client.suppressed, 0, now
        log.info("admission: refused {client} on {listener}: {reason} ({detail}){more}", client=key,
                 listener=listener or "-", reason=reason, detail=detail,
                 more=f"; {more} more refused since the last line" if more else "")
        return reason

    def _log_budget(self, now: float) -> bool:
        second = float(int(now))
        if second != self._log_second:
            self._log_second, self._log_lines = second, 0
        self._log_lines += 1
        return self._log_lines <= LOG_LINES_PER_SECOND

    # What the connection paths report

    def hit(self, limit: str, host: str | None = None) -> None:
        """A connection from C{host} hit C{limit} (one of L{LIMITS}); a strike when the limit is one."""
        self.hits[limit] += 1
        if host and limit in STRIKING_LIMITS:
            self.bans.strike(host, "limit")

    def garbage(self, host: str) -> None:
        """C{host} sent bytes no protocol served here accepts."""
        self.bans.strike(host, "garbage")

    def ssh_login_refused(self, host: str) -> None:
        """An SSH connection from C{host} ended with its login refused."""
        self.bans.strike(host, "ssh-auth")

    # Sweeping

    def sweep(self) -> None:
        """Count open connections exactly; forget clients with nothing left to remember."""
        now = self.clock.seconds()
        self._last_sweep = now
        limits = self.limits
        active = 0
        forget = []
        for key, client in self._clients.items():
            open_now = client.prune()
            active += open_now
            if open_now:
                continue
            full = not limits.rate_per_client or \
                client.tokens + (now - client.stamp) * limits.rate_per_client >= limits.burst_per_client
            if full and now - client.logged >= LOG_INTERVAL:
                forget.append((key, client))
        for key, client in forget:
            if client.suppressed:
                log.info("admission: refused {client} {count} more times since the last line",
                         client=key, count=client.suppressed)
            del self._clients[key]
        self.active = active
        self.bans.sweep()

    def _forced_sweep(self, now: float) -> None:
        if now - self._last_sweep >= FORCED_SWEEP_INTERVAL:
            self.sweep()

    def tracked(self) -> int:
        """Clients with state held (open connections, a bucket refilling, a log throttle)."""
        return len(self._clients)


class NoAdmission:
    """
    Admission for a listener built without one (tests, tools): every
    connection admitted, nothing counted.  Given instead of L{None}, so that
    no connection path checks for it.
    """

    def admit(self, host: str, connection: Any, listener: str = "") -> str | None:
        return None

    def admit_transport(self, transport: Any, listener: str = "") -> bool:
        return True

    def hit(self, limit: str, host: str | None = None) -> None:
        pass

    def garbage(self, host: str) -> None:
        pass

    def ssh_login_refused(self, host: str) -> None:
        pass


NO_ADMISSION = NoAdmission()


class AdmissionService(TimerService):
    """Sweeps an L{Admission}'s state every C{interval} seconds while running."""

    def __init__(self, admission: Admission, clock: IReactorTime, interval: float = SWEEP_INTERVAL) -> None:
        super().__init__(interval, admission.sweep)
        self.admission = admission
        self.clock = clock


#: The command line's limit and ban options (a part of the tap's C{Options}).
OPTIONS: list[list[Any]] = [
    ["max-connections", None, AdmissionLimits.max_connections,
     "Open client connections on all listeners together (0: no cap).", int],
    ["max-connections-per-ip", None, AdmissionLimits.max_per_client,
     "Open connections from one client address (an IPv6 client's /64) (0: no cap).", int],
    ["connection-rate-per-ip", None, AdmissionLimits.rate_per_client,
     "New connections a second from one client address, sustained (0: no limit).", float],
    ["connection-burst-per-ip", None, AdmissionLimits.burst_per_client,
     "New connections one client address may open at once above that rate.", float],
    ["ban-ssh-failures", None, 10, "SSH connections refused a login within --ban-window that ban "
     "their address (0: never).", int],
    ["ban-garbage", None, 20, "Connections of protocol garbage within --ban-window that ban their address "
     "(0: never).", int],
    ["ban-limit-hits", None, 100, "Limit hits (refusals, slow or oversized request heads) within --ban-window "
     "that ban their address (0: never).", int],
    ["ban-window", None, 60.0, "Seconds from a client's first strike of a kind over which its strikes count.",
     float],
    ["ban-duration", None, 600.0, "Seconds a ban lasts.", float],
]


def check_options(config: Any) -> None:
    """Validate the L{OPTIONS} of C{config} and parse C{--ban-allow} (a list) into networks."""
    for name in ("max-connections", "max-connections-per-ip", "connection-rate-per-ip", "ban-ssh-failures",
                 "ban-garbage", "ban-limit-hits"):
        if config[name] < 0:
            raise UsageError(f"--{name} must not be negative")
    if config["connection-rate-per-ip"] and config["connection-burst-per-ip"] < 1:
        raise UsageError("--connection-burst-per-ip must be at least 1")
    if config["ban-window"] <= 0 or config["ban-duration"] <= 0:
        raise UsageError("--ban-window and --ban-duration must be positive")
    try:
        config["ban-allow"] = parse_allow(config["ban-allow"] or DEFAULT_ALLOW)
    except ValueError as problem:
        raise UsageError(f"--ban-allow: {problem}") from None


def build_admission(config: Any, clock: IReactorTime) -> Admission:
    """The gateway's L{Admission} from checked options (L{check_options})."""
    limits = AdmissionLimits(max_connections=config["max-connections"],
                             max_per_client=config["max-connections-per-ip"],
                             rate_per_client=config["connection-rate-per-ip"],
                             burst_per_client=config["connection-burst-per-ip"])
    bans = BanSettings(thresholds={"ssh-auth": config["ban-ssh-failures"], "garbage": config["ban-garbage"],
                                   "limit": config["ban-limit-hits"]},
                       window=config["ban-window"], duration=config["ban-duration"], allow=config["ban-allow"])
    return Admission(clock, limits, BanList(clock, bans))
