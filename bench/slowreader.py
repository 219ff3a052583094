"""
The slow reader: a client reading at most a tenth as fast as the backend can
write (``curl --limit-rate``) pulls the big file through the gateway while
the gateway's RSS (``VmRSS``) is sampled every 100 ms. A proxy with working
backpressure holds roughly flat; one that buffers grows by what the backend
wrote ahead of the client.

The rate is a tenth of the direct download speed, lowered further so that
the read takes about C{seconds} (bounded run time, and a slower client gives
an unbounded buffer more time to grow).
"""

from __future__ import annotations

import time
from typing import Any

from _procs import RssSampler, rss_kib
from proxies import Peer
from transfer import TransferSettings, curl

SLOWER_THAN_BACKEND = 10


def slow_rate(direct_mb_per_s: float, size: int, seconds: float) -> int:
    """Bytes per second for the slow client: at most 1/10 of direct, and slow enough to last C{seconds}."""
    return int(min(direct_mb_per_s * 1e6 / SLOWER_THAN_BACKEND, size / seconds))


def run_slow_reader(
    subject: Peer, direct_mb_per_s: float, settings: TransferSettings, seconds: float
) -> dict[str, Any]:
    assert subject.pid is not None
    rate = slow_rate(direct_mb_per_s, settings.size, seconds)
    print(
        f"  slow reader: {subject.name}, {settings.size >> 20} MiB at {rate / 1e6:.1f} MB/s "
        f"(direct {direct_mb_per_s:.0f} MB/s) ...",
        flush=True,
    )
    time.sleep(0.5)  # let the previous part's connections settle before the baseline
    baseline_kib = rss_kib(subject.pid) or 0
    slow = TransferSettings(
        settings.size, settings.upload_path, 1, settings.load_cpus, max_seconds=settings.size / rate * 2 + 30
    )
    started = time.monotonic()
    with RssSampler(subject.pid, interval=0.1) as rss:
        result = curl(subject, "/big", slow, ["--limit-rate", str(rate)])
    elapsed = time.monotonic() - started
    complete = result.status == 200 and result.downloaded == settings.size
    peak_kib = max(rss.peak_kib, baseline_kib)
    return {
        "peer": subject.name,
        "direct_mb_per_s": round(direct_mb_per_s, 1),
        "limit_mb_per_s": round(rate / 1e6, 2),
        "achieved_mb_per_s": round(result.download_speed / 1e6, 2),
        "seconds": round(elapsed, 1),
        "status": result.status,
        "bytes": result.downloaded,
        "complete": complete,
        "baseline_rss_mib": round(baseline_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "growth_mib": round((peak_kib - baseline_kib) / 1024, 1),
        "rss_samples_kib": rss.samples_kib,
    }
