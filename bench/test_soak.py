"""
Tests of the soak's pure pieces: reading the gateway's log (access lines by
kind and outcome, problem lines) and comparing memory probes, so a change of
the log format fails here instead of the soak silently counting nothing.
Run with: python -m unittest discover -s bench
"""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

from soak import read_gateway_log, type_growth

LOG = """\
2026-11-27T20:06:22+0000 [-] SniffingFactory starting on 58995
2026-11-27T20:06:23+0000 [edd_gateway.access#info] 127.0.0.1 ssh root relayed up=2545 down=814 370.3ms container=soak1 backend=127.0.0.1:36139
2026-11-27T20:06:42+0000 [edd_gateway.access#info] 127.0.0.8 "POST soak.local/echo?c=952&n=10" 200 15158 1.0ms route=soak.local/ backend=127.0.0.1:50883 id=7e580557fc0cac63c1b59885
2026-11-27T20:06:42+0000 [edd_gateway.access#info] 127.0.0.2 "GET soak.local/small?c=1&n=1" 502 15 1.0ms route=soak.local/ backend=127.0.0.1:50883 id=7e580557fc0cac63c1b59886
2026-11-27T20:06:43+0000 [edd_gateway.access#info] 127.0.0.2 "GET soak.local/ws/echo?c=1" 101 0 1.0ms route=soak.local/ws backend=127.0.0.1:42195 id=37419d025ca5459e5acd1d41
2026-11-27T20:06:51+0000 [edd_gateway.access#info] 127.0.0.7 websocket up=121216 down=121100 15271.4ms route=soak.local/ws backend=127.0.0.1:42195 id=37419d025ca5459e5acd1d41
2026-11-27T20:06:52+0000 [edd_gateway.access#info] 127.0.0.9 ssh - refused up=0 down=0 842.0ms container=- backend=-
2026-11-27T20:06:53+0000 [edd_gateway.http#error] Unhandled error in Deferred:
Traceback (most recent call last):
2026-11-27T20:06:54+0000 [edd_gateway.ssh.auth#info] ssh: login accepted from 127.0.0.3:44361 user 'soak1'
"""


class ReadGatewayLogTests(unittest.TestCase):
    def test_counts(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "gateway.log"
            path.write_text(LOG)
            found, end = read_gateway_log(path, 0)
        self.assertEqual(end, len(LOG.encode()))
        self.assertEqual(found["http_status"], {"200": 1, "502": 1, "101": 1})
        self.assertEqual(found["tunnels"], {"websocket": 1})
        self.assertEqual(found["ssh_outcomes"], {"relayed": 1, "refused": 1})
        self.assertEqual(found["client_addresses"], 5)
        self.assertEqual(sum(found["problem_lines"].values()), 2)

    def test_from_an_offset(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "gateway.log"
            path.write_text(LOG)
            _, end = read_gateway_log(path, 0)
            with open(path, "a") as log:
                log.write('2026-11-27T20:07:00+0000 [edd_gateway.access#info] 127.0.0.1 "GET soak.local/small" '
                          "200 98 0.5ms route=soak.local/ backend=127.0.0.1:1 id=x\n")
            found, _ = read_gateway_log(path, end)
        self.assertEqual(found["http_status"], {"200": 1})
        self.assertEqual(found["problem_lines"], {})


class TypeGrowthTests(unittest.TestCase):
    def test_largest_growth_first(self) -> None:
        first = {"types": {"dict": 100, "Deferred": 5, "gone": 3}}
        last = {"types": {"dict": 130, "Deferred": 50, "new": 1}}
        self.assertEqual(type_growth(first, last), {"Deferred": 45, "dict": 30, "new": 1, "gone": -3})


if __name__ == "__main__":
    unittest.main()
