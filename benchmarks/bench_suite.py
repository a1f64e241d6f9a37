"""Scenario-suite benchmark: wall time of `pytest -m smp` and of the full scenario suite on
a built kernel (median of N runs), and each family's share of the full suite.

  python benchmarks/bench_suite.py [--runs 3] [-- EXTRA PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.results import report  # noqa: E402


def run(selection: list[str], extra: list[str]) -> tuple[float, list[report.TestResult]]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "testcases",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            *selection,
            *extra,
        ]
        started = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        return elapsed, report.read_junit(junit)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    run([], args.extra)  # warm-up: kernel and targets built, keys made
    smp = [run(["-m", "smp"], args.extra)[0] for _ in range(args.runs)]
    full, shares = [], defaultdict(list)
    for _ in range(args.runs):
        elapsed, results = run([], args.extra)
        full.append(elapsed)
        per_family = defaultdict(float)
        for result in results:
            per_family[result.family] += result.seconds
        total = sum(per_family.values()) or 1.0
        for family, seconds in per_family.items():
            shares[family].append(100 * seconds / total)
    print(
        f"pytest -m smp: median {statistics.median(smp):.1f}s "
        f"({', '.join(f'{s:.1f}' for s in smp)})"
    )
    print(
        f"full suite:    median {statistics.median(full):.1f}s "
        f"({', '.join(f'{s:.1f}' for s in full)})"
    )
    for family in sorted(shares):
        print(f"  {family:<8} {statistics.median(shares[family]):5.1f}% of test time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
