"""
Large transfers: the big file downloaded and then uploaded (``curl -T``, a
streamed PUT with a Content-Length) through each peer with curl, repeated a
few times after one warm-up download, giving the median MB/s (10^6 bytes per
second) and every sample, plus the proxy's peak RSS and CPU seconds per GiB while it streamed.

A transfer counts only if curl saw a 200 and moved every byte.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from _procs import LOOPBACK, RssSampler, cpu_seconds, run_tool
from proxies import BENCH_HOST, Peer

TRANSFER_PEERS = ("direct", "gateway", "nginx", "haproxy")
_CURL_FORMAT = "%{http_code} %{size_download} %{speed_download} %{size_upload} %{speed_upload} %{time_total}"


@dataclass
class TransferSettings:
    size: int
    upload_path: Path
    repeats: int
    load_cpus: Sequence[int] | None
    max_seconds: float = 180.0


@dataclass
class CurlResult:
    status: int
    downloaded: int
    download_speed: float
    uploaded: int
    upload_speed: float
    seconds: float


def parse_curl(written_out: str) -> CurlResult:
    status, downloaded, download_speed, uploaded, upload_speed, seconds = written_out.split()
    return CurlResult(
        int(status), int(downloaded), float(download_speed), int(uploaded), float(upload_speed), float(seconds)
    )


def curl(peer: Peer, path: str, settings: TransferSettings, extra: Sequence[str] = ()) -> CurlResult:
    argv = [
        "curl", "--silent", "--show-error", "--output", "/dev/null",
        "--max-time", str(int(settings.max_seconds)),
        "--header", f"Host: {BENCH_HOST}",
        "--write-out", _CURL_FORMAT,
        *extra,
        f"http://{LOOPBACK}:{peer.port}{path}",
    ]  # fmt: skip
    return parse_curl(run_tool(argv, cpus=settings.load_cpus, timeout=settings.max_seconds + 30))


def download(peer: Peer, settings: TransferSettings) -> float:
    """MB/s of one complete download of C{/big}."""
    result = curl(peer, "/big", settings)
    if result.status != 200 or result.downloaded != settings.size:
        raise RuntimeError(f"status {result.status}, {result.downloaded} of {settings.size} bytes")
    return result.download_speed / 1e6


def upload(peer: Peer, settings: TransferSettings) -> float:
    """MB/s of one complete upload of the big file to C{/upload}."""
    result = curl(peer, "/upload", settings, ["--upload-file", str(settings.upload_path)])
    if result.status != 200 or result.uploaded != settings.size:
        raise RuntimeError(f"status {result.status}, {result.uploaded} of {settings.size} bytes")
    return result.upload_speed / 1e6


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"mb_per_s": round(statistics.median(samples), 1), "samples_mb_per_s": [round(s, 1) for s in samples]}


def _measure_direction(peer: Peer, transfer: Callable[[Peer, TransferSettings], float], settings: TransferSettings) -> dict[str, Any]:
    if peer.pid is None:
        return _summary([transfer(peer, settings) for _ in range(settings.repeats)])
    cpu_before = cpu_seconds(peer.pid)
    with RssSampler(peer.pid) as rss:
        samples = [transfer(peer, settings) for _ in range(settings.repeats)]
    gib_moved = settings.repeats * settings.size / (1 << 30)
    return {
        **_summary(samples),
        "peak_rss_mib": round(rss.peak_kib / 1024, 1),
        "proxy_cpu_s_per_gib": round((cpu_seconds(peer.pid) - cpu_before) / gib_moved, 3),
    }


def measure_peer(peer: Peer, settings: TransferSettings) -> dict[str, Any]:
    """Download then upload; a failing direction is recorded as that direction's error."""
    result: dict[str, Any] = {}
    for direction, transfer in (("download", download), ("upload", upload)):
        try:
            if direction == "download":
                transfer(peer, settings)  # warm-up: page cache, pools, allocator
            result[direction] = _measure_direction(peer, transfer, settings)
        except (RuntimeError, ValueError, OSError) as error:
            result[direction] = {"error": str(error)}
    return result


def run_transfer(peers: dict[str, Peer], settings: TransferSettings) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in TRANSFER_PEERS:
        if name in peers:
            print(f"  transfer: {name} ({settings.size >> 20} MiB down and up, x{settings.repeats}) ...", flush=True)
            results[name] = measure_peer(peers[name], settings)
    return results


def ratios(results: dict[str, dict[str, Any]], subject: str = "gateway", reference: str = "nginx") -> dict[str, float]:
    """The subject's MB/s over the reference's, per direction."""
    mine, theirs = results.get(subject, {}), results.get(reference, {})
    found = {}
    for direction in ("download", "upload"):
        if mine.get(direction, {}).get("mb_per_s") and theirs.get(direction, {}).get("mb_per_s"):
            found[direction] = round(mine[direction]["mb_per_s"] / theirs[direction]["mb_per_s"], 3)
    return found
