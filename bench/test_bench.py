"""
Tests of the benchmark's pure pieces -- wrk and curl output parsing, the
slow reader's rate, combining rounds, ratios and the acceptance verdicts --
so a change of tool output or of a target fails here instead of silently
mis-reporting a run. Run with: python -m unittest discover -s bench
"""

from __future__ import annotations

import unittest

from keepalive import _combine, cpu_ratios, parse_wrk, ratios as keepalive_ratios
from report import acceptance, keepalive_table
from slowreader import slow_rate
from transfer import parse_curl, ratios as transfer_ratios

WRK_CLEAN = """Running 10s test @ http://127.0.0.1:41234/small
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    2.01ms  40.11ms   93.10%
    Req/Sec    20.36k     6.36k   44.19k    66.67%
  Latency Distribution
     50%  630.00us
     75%    1.01ms
     90%    2.50ms
     99%   11.20ms
  405123 requests in 10.00s, 70.00MB read
Requests/sec:  40512.30
Transfer/sec:      7.00MB
"""

WRK_ERRORS = """Running 1s test @ http://127.0.0.1:18095/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   839.61us    1.10ms  13.88ms   93.55%
    Req/Sec     6.08k     1.35k    7.90k    70.00%
  Latency Distribution
     50%  585.00us
     75%  772.00us
     90%    1.29ms
     99%     1.02s
  6052 requests in 1.00s, 756.50KB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 6052
Requests/sec:   6045.78
Transfer/sec:    755.72KB
"""


class ParseWrkTests(unittest.TestCase):
    def test_clean_run(self) -> None:
        parsed = parse_wrk(WRK_CLEAN)
        self.assertEqual(parsed["requests_per_s"], 40512.30)
        self.assertEqual(parsed["requests"], 405123)
        self.assertAlmostEqual(parsed["p50_ms"], 0.63)
        self.assertAlmostEqual(parsed["p99_ms"], 11.2)
        self.assertEqual(parsed["non_2xx_3xx"], 0)
        self.assertEqual(parsed["socket_errors"], {"connect": 0, "read": 0, "write": 0, "timeout": 0})

    def test_errors_and_seconds(self) -> None:
        parsed = parse_wrk(WRK_ERRORS)
        self.assertEqual(parsed["non_2xx_3xx"], 6052)
        self.assertEqual(parsed["socket_errors"], {"connect": 0, "read": 3, "write": 1, "timeout": 7})
        self.assertAlmostEqual(parsed["p99_ms"], 1020.0)

    def test_no_summary_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


class CombineRoundsTests(unittest.TestCase):
    def test_medians_and_summed_errors(self) -> None:
        rounds = []
        for rps, errors in ((100.0, 0), (300.0, 2), (200.0, 1)):
            parsed = parse_wrk(WRK_CLEAN)
            parsed.update(requests_per_s=rps, non_2xx_3xx=errors, errors_seen=bool(errors), wrk_output="x")
            rounds.append(parsed)
        combined = _combine(rounds)
        self.assertEqual(combined["requests_per_s"], 200.0)
        self.assertEqual(combined["non_2xx_3xx"], 3)
        self.assertTrue(combined["errors_seen"])
        self.assertNotIn("wrk_output", combined["rounds"][0])
        self.assertIn("wrk_output", combined["rounds"][1])


class ParseCurlTests(unittest.TestCase):
    def test_fields(self) -> None:
        result = parse_curl("200 268435456 1086189556 0 0 0.247135")
        self.assertEqual((result.status, result.downloaded), (200, 268435456))
        self.assertEqual(result.download_speed, 1086189556.0)
        self.assertEqual(result.seconds, 0.247135)


class SlowRateTests(unittest.TestCase):
    def test_a_tenth_of_direct_when_that_is_slow_enough(self) -> None:
        self.assertEqual(slow_rate(100.0, 256 << 20, 20.0), 10_000_000)

    def test_slower_still_to_last_the_chosen_time(self) -> None:
        self.assertEqual(slow_rate(1000.0, 256 << 20, 20.0), (256 << 20) // 20)


class RatioAndAcceptanceTests(unittest.TestCase):
    def results(self, gateway_rps: float, p99: float, growth: float) -> dict:
        peers = {
            "gateway": {**parse_wrk(WRK_CLEAN), "requests_per_s": gateway_rps, "p99_ms": p99},
            "nginx": {**parse_wrk(WRK_CLEAN), "requests_per_s": 10_000.0},
            "twisted": {**parse_wrk(WRK_CLEAN), "requests_per_s": 500.0},
        }
        transfer = {
            "gateway": {"download": {"mb_per_s": 400.0}, "upload": {"error": "status 400"}},
            "nginx": {"download": {"mb_per_s": 500.0}, "upload": {"mb_per_s": 300.0}},
        }
        return {
            "keepalive": {"peers": peers, "gateway_ratio": keepalive_ratios(peers)},
            "transfer": {"peers": transfer, "gateway_ratio": transfer_ratios(transfer)},
            "slow": {"complete": True, "growth_mib": growth},
        }

    def verdicts(self, results: dict) -> dict:
        return {check["target"]: check["passed"] for check in acceptance(results)}

    def test_ratios(self) -> None:
        results = self.results(3_500.0, 5.0, 1.0)
        self.assertEqual(results["keepalive"]["gateway_ratio"], {"nginx": 0.35, "twisted": 7.0})
        self.assertEqual(results["transfer"]["gateway_ratio"], {"download": 0.8})

    def test_cpu_ratios(self) -> None:
        peers = {
            "gateway": {"proxy_cpu_us_per_request": 100.0},
            "nginx": {"proxy_cpu_us_per_request": 30.0},
            "direct": {},
        }
        self.assertEqual(cpu_ratios(peers), {"nginx": 0.3})

    def test_passing(self) -> None:
        verdicts = self.verdicts(self.results(3_500.0, 5.0, 1.0))
        self.assertTrue(verdicts["keep-alive rps vs nginx"])
        self.assertTrue(verdicts["keep-alive rps vs twisted.web.proxy"])
        self.assertTrue(verdicts["download MB/s vs nginx"])
        self.assertIsNone(verdicts["upload MB/s vs nginx"])
        self.assertTrue(verdicts["slow reader RSS growth (MiB)"])

    def test_failing(self) -> None:
        verdicts = self.verdicts(self.results(2_000.0, 12.0, 40.0))
        self.assertFalse(verdicts["keep-alive rps vs nginx"])
        self.assertFalse(verdicts["keep-alive rps vs twisted.web.proxy"])
        self.assertFalse(verdicts["keep-alive p99 latency (ms)"])
        self.assertFalse(verdicts["slow reader RSS growth (MiB)"])

    def test_table_lists_every_peer(self) -> None:
        table = keepalive_table(self.results(3_500.0, 5.0, 1.0)["keepalive"])
        for name in ("gateway", "nginx", "twisted"):
            self.assertIn(name, table)


if __name__ == "__main__":
    unittest.main()
