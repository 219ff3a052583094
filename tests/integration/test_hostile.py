"""
The real ``twistd edd-gateway`` under slowhttptest's attacks from four
addresses (127.0.0.2, .3, .5, .6: 250 connections each, see
L{edd_gateway.testing.AttackSettings}) while a client on 127.0.0.4 (curl
bound there) asks the same route 50 times: every answer 200, the median
under 3 x the median it saw before the attack.  Slow bodies of 8 KiB (read
whole before a backend connection is taken) and of 1 MiB (streamed, at most
--body-streams-per-client per address), 10 bytes a second; slowloris; slow
read.
"""

from __future__ import annotations

import statistics
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    AttackSettings,
    EndToEndMixin,
    poll_until,
    require_tool,
    run_process,
    start_attack,
)

HOST = "app.test"
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6")
VICTIM = "127.0.0.4"


class SlowAttackTests(EndToEndMixin, TestCase):
    timeout = 240

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.curl_path = require_tool("curl")
        self.backend, self.echo = self.serve_echo()
        self.gateway = await self.start_gateway(
            routes=[{"host": HOST, "path": "/", "target": self.backend.target}])

    async def victim(self, count: int) -> tuple[list[str], list[float]]:
        """C{count} requests one after another from 127.0.0.4: statuses and curl's own timings (s)."""
        statuses, times = [], []
        for _ in range(count):
            done = await run_process([self.curl_path, "-s", "-o", "/dev/null", "--interface", VICTIM,
                                      "--max-time", "20", "-H", f"Host: {HOST}", "-w", "%{http_code} %{time_total}",
                                      self.gateway.url("/victim")], timeout=30).result()
            status, seconds = bytes(done.out).decode().split()
            statuses.append(status)
            times.append(float(seconds))
        return statuses, times

    async def check(self, kind: str, holding: int, **settings: Any) -> None:
        _, quiet = await self.victim(20)
        answered_before = len(self.echo.requests)
        attack = start_attack(reactor, self.gateway.port, AttackSettings(kind, ATTACKERS, **settings))
        self.addCleanup(attack.stop)
        await poll_until(lambda: attack.holding() >= holding, f"{holding} {kind} connections", timeout=60)
        if kind == "slow-read":
            # Each slow reader opens with a burst of pipelined GETs: 32,000
            # requests while the attack's 1,000 connections open, a request
            # flood the victim would be measured against (its median was 3-4 x
            # the quiet one until the backlog drained, a few seconds later).
            # The slow read itself starts once the gateway has answered the
            # burst of every connection opened so far, the attack fully open.
            full = attack.settings.per_address * len(ATTACKERS)
            pipelined = attack.settings.pipelined

            def burst_answered() -> bool:
                opened = sum(attack.opened.values())
                return opened >= full and len(self.echo.requests) >= answered_before + opened * pipelined

            await poll_until(burst_answered, "every slow reader's pipelined requests answered", timeout=60)
        statuses, times = await self.victim(50)
        quiet_median, median = statistics.median(quiet), statistics.median(times)
        print(f"{kind} {settings}: holding {attack.holding()}, opened {sum(attack.opened.values())}, "
              f"answers {dict(attack.answers)}; victim median {median * 1000:.1f} ms (quiet "
              f"{quiet_median * 1000:.1f} ms), slowest {max(times) * 1000:.1f} ms")
        self.assertEqual(statuses, ["200"] * 50, self.gateway.log_text()[-3000:])
        self.assertLess(median, 3 * quiet_median, f"{times}")

    async def test_slow_bodies_of_8_kib(self) -> None:
        await self.check("slow-body", 900, body_size=8192)

    async def test_slow_bodies_of_1_mib(self) -> None:
        await self.check("slow-body", 900, body_size=1 << 20)

    async def test_slow_bodies_past_the_buffer(self) -> None:
        # 70,000 bytes at once, then 10 a second: each body streams, and
        # each address holds at most --body-streams-per-client (8) of the
        # backend's connections; the others are told 429.
        await self.check("slow-body", 32, body_size=1 << 20, first=70_000)
        self.assertIn("http: 429 to 127.0.0.2", self.gateway.log_text())
        self.assertLessEqual(len(self.backend.tracker.protocols), 4 * 8 + 1)

    async def test_slowloris(self) -> None:
        await self.check("slowloris", 900)

    async def test_slow_read(self) -> None:
        await self.check("slow-read", 900, path="/victim")
