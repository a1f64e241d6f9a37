"""Scenario-suite benchmark: wall time of `pytest -m smp` and of the full scenario suite on
a built kernel (median of N runs), and each family's share of the full suite.

  python benchmarks/bench_suite.py [--runs 3] [-- EXTRA PYTEST ARGS]

The extra arguments go to every run, the `-m smp` ones and the full-suite ones alike (e.g.
`-- --kernel debian:7.3`); a selection of its own (`-m`, `-k`, test paths) is refused there,
since the full-suite figure would silently measure that selection instead.

With --machines, the same selection on each machine type instead, runs interleaved (so
a slow minute of the host hits every machine alike), medians, each family's test time, and
the ratio against the first machine:

  python benchmarks/bench_suite.py --machines pc,microvm --runs 3 -- -m "threads or sweep"
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


def compare_machines(machines: list[str], runs: int, extra: list[str]) -> int:
    walls: dict[str, list[float]] = defaultdict(list)
    family_seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    run([f"--machine={machines[0]}"], extra)  # warm-up: kernel and targets built, keys made
    for _ in range(runs):
        for machine in machines:
            elapsed, results = run([f"--machine={machine}"], extra)
            walls[machine].append(elapsed)
            per_family: dict[str, float] = defaultdict(float)
            for result in results:
                per_family[result.family] += result.seconds
            for family, seconds in per_family.items():
                family_seconds[machine][family].append(seconds)
            print(f"  {machine}: {elapsed:.1f}s, {len(results)} results", flush=True)
    base = statistics.median(walls[machines[0]])
    for machine in machines:
        median = statistics.median(walls[machine])
        print(
            f"{machine:<8} wall median {median:.1f}s "
            f"({', '.join(f'{w:.1f}' for w in walls[machine])}), ratio {median / base:.2f}"
        )
        for family, seconds in sorted(family_seconds[machine].items()):
            print(f"  {family:<10} test time median {statistics.median(seconds):.1f}s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--machines", help="e.g. pc,microvm: compare machine types")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    if args.machines:
        return compare_machines(args.machines.split(","), args.runs, args.extra)
    selecting = [
        a for a in args.extra if a in ("-m", "-k") or a.startswith(("-m=", "-k=", "testcases"))
    ]
    if selecting:
        print(
            f"bench_suite.py: {' '.join(selecting)} would replace the full suite with a "
            f"selection; measure a selection with --machines M (one machine type is enough)",
            file=sys.stderr,
        )
        return 2
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
