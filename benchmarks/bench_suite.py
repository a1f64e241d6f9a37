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

With --against REV, the same selection in a worktree of REV (its config, machine definition
and code: "before") and in this tree ("after"), interleaved, with the ratio after/before;
--machines may then name one machine type for both:

  python benchmarks/bench_suite.py --against HEAD~1 --runs 3 -- -m realcode

With --workers, the same selection with each number of pytest-xdist workers (1: no xdist;
N: `-n N --dist loadfile`, each test file on one worker, each worker with its own VMs),
interleaved, with the ratio against the first:

  python benchmarks/bench_suite.py --workers 1,2 --runs 1 --no-warmup -- -m "not sweep"

--no-warmup skips the first, unmeasured run of each variant (for long selections on a
kernel that is built and targets that are compiled already).

--record (without a selection of tests, with or without --against REV) appends the
figures pytest_smp and full_suite to benchmarks/figures.jsonl (see benchmarks/figures.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import figures  # noqa: E402
from against import worktree  # noqa: E402

from harness.jobs import scenario_run  # noqa: E402
from harness.results import report  # noqa: E402


def run(
    selection: list[str], extra: list[str], cwd: Path = ROOT
) -> tuple[float, list[report.TestResult]]:
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
        # stopped with its VMs when this benchmark gets SIGINT or SIGTERM
        finished = scenario_run.run(cmd, junit, log=Path(tmp) / "pytest.log", cwd=cwd)
        return finished.seconds, report.read_junit(junit)


PROBLEMS = ("failed", "crashed", "error")


def unexpected(results: list[report.TestResult]) -> str:
    """The tests of a run that failed, crashed or errored, named (the run keeps no JUnit)."""
    bad = [f"{r.module}::{r.name} ({r.outcome})" for r in results if r.outcome in PROBLEMS]
    return f"\n    unexpected: {'; '.join(bad)}" if bad else ""


def workers_arguments(workers: int) -> list[str]:
    return [] if workers <= 1 else ["-n", str(workers), "--dist", "loadfile"]


def compare(
    variants: list[tuple[str, Path, list[str]]], runs: int, extra: list[str], warmup: bool = True
) -> int:
    """variants: (label, tree, selection arguments); the first is the ratios' base."""
    walls: dict[str, list[float]] = defaultdict(list)
    family_seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, tree, selection in variants if warmup else []:  # kernels, targets, keys made
        run(selection, extra, tree)
    for _ in range(runs):
        for label, tree, selection in variants:
            elapsed, results = run(selection, extra, tree)
            walls[label].append(elapsed)
            per_family: dict[str, float] = defaultdict(float)
            for result in results:
                per_family[result.family] += result.seconds
            for family, seconds in per_family.items():
                family_seconds[label][family].append(seconds)
            outcomes = Counter(r.outcome for r in results)
            print(
                f"  {label}: {elapsed:.1f}s, {len(results)} results "
                f"({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))})"
                + unexpected(results),
                flush=True,
            )
    base = statistics.median(walls[variants[0][0]])
    for label, _, _ in variants:
        median = statistics.median(walls[label])
        print(
            f"{label:<8} wall median {median:.1f}s "
            f"({', '.join(f'{w:.1f}' for w in walls[label])}), ratio {median / base:.2f}"
        )
        for family, times in sorted(family_seconds[label].items()):
            print(f"  {family:<10} test time median {statistics.median(times):.1f}s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--machines", help="e.g. pc,microvm: compare machine types")
    parser.add_argument("--against", metavar="REV", help="compare with a worktree of REV")
    parser.add_argument("--workers", help="e.g. 1,2: compare numbers of pytest-xdist workers")
    parser.add_argument("--no-warmup", action="store_true", help="no unmeasured first run")
    parser.add_argument(
        "--record",
        action="store_true",
        help="no selection: record pytest_smp and full_suite (with --against, REV's too)",
    )
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    machines = args.machines.split(",") if args.machines else []
    warmup = not args.no_warmup
    selecting = [
        a for a in args.extra if a in ("-m", "-k") or a.startswith(("-m=", "-k=", "testcases"))
    ]
    configuring = [a for a in args.extra if a.startswith(("--kernel", "--series"))]
    if args.record and (selecting or configuring or args.workers or len(machines) > 1):
        print(
            "bench_suite.py: --record measures the two figures (`-m smp` and the full suite) "
            "on the default kernel and one machine type, without a selection, --kernel, "
            "--series or --workers",
            file=sys.stderr,
        )
        return 2
    if args.record and not args.against:
        selection = [f"--machine={m}" for m in machines]
        return suite_figures([("current", ROOT)], args.runs, args.extra + selection, warmup, True)
    if args.workers:
        if args.against or machines:
            print("bench_suite.py: --workers goes alone", file=sys.stderr)
            return 2
        counts = [int(n) for n in args.workers.split(",")]
        return compare(
            [(f"{n} worker{'s' * (n > 1)}", ROOT, workers_arguments(n)) for n in counts],
            args.runs,
            args.extra,
            warmup,
        )
    if args.against:
        if len(machines) > 1:
            print("bench_suite.py: --against takes one machine type at most", file=sys.stderr)
            return 2
        selection = [f"--machine={m}" for m in machines]
        with worktree(args.against) as before:
            if args.record:  # the two figures, for REV and for this tree
                return suite_figures(
                    [(args.against, before), ("current", ROOT)],
                    args.runs,
                    args.extra + selection,
                    warmup,
                    record=True,
                )
            return compare(
                [(args.against, before, selection), ("current", ROOT, selection)],
                args.runs,
                args.extra,
                warmup,
            )
    if machines:
        return compare(
            [(m, ROOT, [f"--machine={m}"]) for m in machines], args.runs, args.extra, warmup
        )
    if selecting:
        print(
            f"bench_suite.py: {' '.join(selecting)} would replace the full suite with a "
            f"selection; measure a selection with --machines M (one machine type is enough)",
            file=sys.stderr,
        )
        return 2
    return suite_figures([("current", ROOT)], args.runs, args.extra, warmup, args.record)


def suite_figures(
    trees: list[tuple[str, Path]], runs: int, extra: list[str], warmup: bool, record: bool
) -> int:
    """The figures pytest_smp and full_suite for each tree (the last is this one), runs
    interleaved; with `record`, appended to benchmarks/figures.jsonl."""
    for _, tree in trees if warmup else []:  # kernel and targets built, keys made
        run([], extra, tree)
    smp: dict[str, list[float]] = defaultdict(list)
    full: dict[str, list[float]] = defaultdict(list)
    shares: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(runs):
        for label, tree in trees:
            smp[label].append(run(["-m", "smp"], extra, tree)[0])
            print(f"  {label}: pytest -m smp {smp[label][-1]:.1f}s", flush=True)
    for _ in range(runs):
        for label, tree in trees:
            elapsed, results = run([], extra, tree)
            full[label].append(elapsed)
            outcomes = Counter(r.outcome for r in results)
            print(
                f"  {label}: full suite {elapsed:.1f}s, {len(results)} results "
                f"({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))})"
                + unexpected(results),
                flush=True,
            )
            per_family: dict[str, float] = defaultdict(float)
            for result in results:
                per_family[result.family] += result.seconds
            total = sum(per_family.values()) or 1.0
            for family, seconds in per_family.items():
                shares[label][family].append(100 * seconds / total)
    for label, tree in trees:
        for name, walls in (("pytest -m smp", smp[label]), ("full suite", full[label])):
            print(
                f"{label}: {name}: median {statistics.median(walls):.1f}s "
                f"({', '.join(f'{s:.1f}' for s in walls)})"
            )
        for family in sorted(shares[label]):
            print(f"  {family:<10} {statistics.median(shares[label][family]):5.1f}% of test time")
        if record:
            which = figures.NOW if tree == ROOT else figures.BEFORE
            figures.record("pytest_smp", smp[label], which, figures.current_rev(tree))
            figures.record("full_suite", full[label], which, figures.current_rev(tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
