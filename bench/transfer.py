"""
Large transfers: the big file downloaded and then uploaded (``curl -T``, a
streamed PUT with a Content-Length) through each peer with curl, after one
warm-up each way, repeated with the peers interleaved, giving the median
MB/s (10^6 bytes per second) and every sample, plus the proxy's peak RSS and
CPU seconds per GiB while it streamed.

A transfer counts only if curl saw a 200 and moved every byte.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
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


@dataclass
class _Tally:
    """One peer's figures for one direction, gathered over interleaved repeats."""

    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    peak_rss_kib: int = 0
    error: str | None = None

    def summary(self, peer: Peer, size: int) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        found: dict[str, Any] = {
            "mb_per_s": round(statistics.median(self.samples), 1),
            "samples_mb_per_s": [round(sample, 1) for sample in self.samples],
        }
        if peer.pid is not None:
            found["peak_rss_mib"] = round(self.peak_rss_kib / 1024, 1)
            found["proxy_cpu_s_per_gib"] = round(self.cpu_s / (len(self.samples) * size / (1 << 30)), 3)
        return found


def _once(
    peer: Peer, transfer: Callable[[Peer, TransferSettings], float], settings: TransferSettings, tally: _Tally
) -> None:
    if peer.pid is None:
        tally.samples.append(transfer(peer, settings))
        return
    cpu_before = cpu_seconds(peer.pid)
    with RssSampler(peer.pid) as rss:
        tally.samples.append(transfer(peer, settings))
    tally.cpu_s += cpu_seconds(peer.pid) - cpu_before
    tally.peak_rss_kib = max(tally.peak_rss_kib, rss.peak_kib)


def run_transfer(peers: dict[str, Peer], settings: TransferSettings) -> dict[str, dict[str, Any]]:
    """Each repeat goes through every peer in turn, so a busy moment on the machine hits them alike."""
    chosen = {name: peers[name] for name in TRANSFER_PEERS if name in peers}
    tallies = {name: {"download": _Tally(), "upload": _Tally()} for name in chosen}
    for name, peer in chosen.items():
        # Warm-up, both ways: page cache, connection pools, the allocators of
        # the proxy and of the backend (whose first 256 MiB body is slow).
        for direction, transfer in (("download", download), ("upload", upload)):
            try:
                transfer(peer, settings)
            except (RuntimeError, ValueError, OSError) as error:
                tallies[name][direction].error = f"warm-up: {error}"
    for direction, transfer in (("download", download), ("upload", upload)):
        for repeat in range(1, settings.repeats + 1):
            print(
                f"  transfer: {direction} {repeat}/{settings.repeats}, "
                f"{settings.size >> 20} MiB through {', '.join(chosen)} ...",
                flush=True,
            )
            for name, peer in chosen.items():
                tally = tallies[name][direction]
                if tally.error is None:
                    try:
                        _once(peer, transfer, settings, tally)
                    except (RuntimeError, ValueError, OSError) as error:
                        tally.error = str(error)
    return {
        name: {direction: tally.summary(chosen[name], settings.size) for direction, tally in directions.items()}
        for name, directions in tallies.items()
    }


def ratios(results: dict[str, dict[str, Any]], subject: str = "gateway", reference: str = "nginx") -> dict[str, float]:
    """The subject's MB/s over the reference's, per direction."""
    mine, theirs = results.get(subject, {}), results.get(reference, {})
    found = {}
    for direction in ("download", "upload"):
        if mine.get(direction, {}).get("mb_per_s") and theirs.get(direction, {}).get("mb_per_s"):
            found[direction] = round(mine[direction]["mb_per_s"] / theirs[direction]["mb_per_s"], 3)
    return found
