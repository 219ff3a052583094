"""
Temporary bans: a client address that keeps failing SSH logins, sending
protocol garbage or hitting limits is refused on every listener and protocol
for a while.

L{BanList} counts strikes per (client, kind) in a window that opens at the
first strike, bans the client when a kind reaches its threshold, and lets
the ban expire after its duration.  It never acts itself: admission
(L{edd_gateway.front.admission}) asks L{BanList.banned} for every new connection
and refuses the banned ones.  Clients are keyed by L{client_key}: an IPv4
address, or an IPv6 client's /64 (one subscriber's allocation, which a
client can spread over at will).  Everything is kept in memory per process
and swept, so a flood of distinct addresses cannot grow it without bound.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = [
    "BAN_KINDS",
    "DEFAULT_ALLOW",
    "BanList",
    "BanSettings",
    "client_key",
    "parse_allow",
]

log = Logger()

#: What a strike is for: a refused SSH login (one per connection that ends
#: without one), protocol garbage, a limit hit.
BAN_KINDS = ("ssh-auth", "garbage", "limit")

#: Never banned nor refused unless the operator says otherwise: the
#: gateway's own host (local health checks, sidecars, benchmarks).  Only
#: 127.0.0.1, so that tests can play other clients from 127.0.0.2 and up.
DEFAULT_ALLOW = ("127.0.0.1/32", "::1/128")

Network = IPv4Network | IPv6Network


#: Most addresses whose allow-list answer is remembered.
_ALLOWED_CACHE_SIZE = 4096


def client_key(host: str) -> str:
    """
    The key limits and bans count a client by: its IPv4 address (an
    IPv4-mapped IPv6 address included), or its IPv6 /64; anything that is
    not an IP address (a UNIX socket peer) as it is.
    """
    if ":" not in host:
        return host
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    try:
        network = ip_network(f"{host}/64", strict=False)
    except ValueError:
        return host
    return str(network)


def parse_allow(values: Iterable[str]) -> tuple[Network, ...]:
    """C{--ban-allow} values (addresses or CIDR blocks); C{none} alone is the empty list."""
    values = list(values)
    if values == ["none"]:
        return ()
    return tuple(ip_network(value, strict=False) for value in values)


@dataclass(frozen=True)
class BanSettings:
    """
    @ivar thresholds: strikes of each kind within C{window} seconds that ban
        a client; 0 (or a missing kind) never bans for that kind.
    @ivar window: seconds from a client's first strike of a kind within
        which its strikes of that kind count together.
    @ivar duration: seconds a ban lasts.
    @ivar allow: networks never banned (nor refused by admission).
    """

    thresholds: Mapping[str, int] = field(default_factory=lambda: {"ssh-auth": 10, "garbage": 20, "limit": 100})
    window: float = 60.0
    duration: float = 600.0
    allow: tuple[Network, ...] = field(default_factory=lambda: parse_allow(DEFAULT_ALLOW))


class BanList:
    """
    The banned clients and the strikes that may ban more.

    @ivar totals: bans started since start, by kind.
    """

    def __init__(self, clock: IReactorTime, settings: BanSettings = BanSettings()) -> None:
        self.clock = clock
        self.settings = settings
        self.totals: collections.Counter[str] = collections.Counter()
        # key -> (until, kind)
        self._bans: dict[str, tuple[float, str]] = {}
        # (key, kind) -> [window start, strikes]
        self._strikes: dict[tuple[str, str], list[float]] = {}
        self._allowed: dict[str, bool] = {}

    def allowed(self, host: str) -> bool:
        """Whether C{host} is on the allow-list (never banned nor refused)."""
        allow = self.settings.allow
        if not allow:
            return False
        # Asked for every connection: parsing the address each time was a
        # visible part of a TLS handshake's CPU.  Bounded by clearing.
        known = self._allowed.get(host)
        if known is not None:
            return known
        if len(self._allowed) >= _ALLOWED_CACHE_SIZE:
            self._allowed.clear()
        answer = self._allowed[host] = self._on_allow_list(host, allow)
        return answer

    @staticmethod
    def _on_allow_list(host: str, allow: Iterable[IPv4Network | IPv6Network]) -> bool:
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        try:
            address = ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in allow)

    def banned(self, key: str) -> bool:
        """Whether the client keyed C{key} is banned now (an expired ban ends here)."""
        ban = self._bans.get(key)
        if ban is None:
            return False
        if self.clock.seconds() < ban[0]:
            return True
        self._expire(key, ban[1])
        return False

    def ends_in(self, key: str) -> float:
        """Seconds until the ban of C{key} ends (0 when it is not banned)."""
        ban = self._bans.get(key)
        return max(0.0, ban[0] - self.clock.seconds()) if ban is not None else 0.0

    def strike(self, host: str, kind: str) -> bool:
        """
        Count one strike of C{kind} against C{host}; ban it when that makes
        the threshold.  Whether C{host} is banned now.
        """
        threshold = self.settings.thresholds.get(kind, 0)
        if threshold <= 0 or not host:
            return False
        key = client_key(host)
        if self.banned(key):
            return True
        if self.allowed(host):
            return False
        now = self.clock.seconds()
        slot = self._strikes.get((key, kind))
        if slot is None or now - slot[0] >= self.settings.window:
            slot = self._strikes[(key, kind)] = [now, 0]
        slot[1] += 1
        if slot[1] < threshold:
            return False
        del self._strikes[(key, kind)]
        self._ban(key, kind, int(slot[1]), now)
        return True

    def active(self) -> int:
        """Bans in force now (expiring the ones that ended)."""
        self.sweep()
        return len(self._bans)

    def sweep(self) -> None:
        """End expired bans and forget strike windows that closed."""
        now = self.clock.seconds()
        for key, (until, kind) in list(self._bans.items()):
            if now >= until:
                self._expire(key, kind)
        window = self.settings.window
        stale = [slot for slot, (start, _) in self._strikes.items() if now - start >= window]
        for slot in stale:
            del self._strikes[slot]

    def tracked(self) -> int:
        """Entries held (bans and open strike windows): what the sweep keeps bounded."""
        return len(self._bans) + len(self._strikes)

    def _ban(self, key: str, kind: str, count: int, now: float) -> None:
        duration = self.settings.duration
        self._bans[key] = (now + duration, kind)
        self.totals[kind] += 1
        log.warn("ban: {client} banned for {duration:g} s after {count} {kind} strikes within {window:g} s",
                 client=key, duration=duration, count=count, kind=kind, window=self.settings.window)

    def _expire(self, key: str, kind: str) -> None:
        del self._bans[key]
        log.info("ban: {client}'s {kind} ban expired", client=key, kind=kind)
