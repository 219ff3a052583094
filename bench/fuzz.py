"""
The long fuzz run: tests/unit/test_fuzz.py under the C{long} hypothesis profile
(10,000 examples per unit of weight, about 205,000 in all), with a count of
the examples each property ran and how many failed, and the time it took.

    python bench/fuzz.py                  # the long profile, about 10 minutes on 2 cores
    python bench/fuzz.py --examples 2000  # another base count

Prints one line per property and a total, writes the same figures to
bench/results/fuzz-<timestamp>.json, and exits 1 when a property failed
(trial's report above says which example, shrunk).  Run it with the
interpreter that has the gateway's test dependencies installed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="long", choices=["ci", "long"])
    parser.add_argument("--examples", type=int, default=0, help="base example count (overrides the profile's)")
    parser.add_argument("tests", nargs="*", default=["tests.unit.test_fuzz"], help="trial test names")
    options = parser.parse_args()

    os.environ["EDD_GATEWAY_FUZZ"] = options.profile
    if options.examples:
        os.environ["EDD_GATEWAY_FUZZ_EXAMPLES"] = str(options.examples)
    # Observations without line coverage: coverage tracing would slow every example tenfold.
    os.environ["HYPOTHESIS_EXPERIMENTAL_OBSERVABILITY_NOCOVER"] = "1"
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    from hypothesis.internal.observability import add_observability_callback

    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def observe(observation: object) -> None:
        if getattr(observation, "type", None) == "test_case":
            counts[getattr(observation, "property")][getattr(observation, "status")] += 1

    add_observability_callback(observe)

    from twisted.scripts import trial

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edd-fuzz-") as temporary:
        sys.argv = ["trial", "--reactor=asyncio", f"--temp-directory={temporary}/trial", *options.tests]
        try:
            trial.run()
            code = 0
        except SystemExit as exit:
            code = int(exit.code or 0)
    elapsed = time.monotonic() - started

    rows = sorted(counts.items())
    total = sum(sum(c.values()) for _, c in rows)
    failed = sum(c["failed"] for _, c in rows)
    print(f"\n{'property':<72} {'examples':>9} {'failed':>7}")
    for name, count in rows:
        print(f"{name:<72} {sum(count.values()):>9} {count['failed']:>7}")
    print(f"{'total':<72} {total:>9} {failed:>7}\nprofile {options.profile}, {elapsed:.0f} s, trial exit {code}")

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    report = results / time.strftime("fuzz-%Y%m%d-%H%M%S.json")
    report.write_text(json.dumps({
        "profile": options.profile, "base_examples": options.examples or None, "seconds": round(elapsed, 1),
        "trial_exit": code, "examples": total, "failed": failed,
        "properties": {name: dict(count) for name, count in rows},
    }, indent=2))
    print(f"figures: {report.relative_to(ROOT)}")
    return 1 if code or failed else 0


if __name__ == "__main__":
    sys.exit(main())
