"""Build benchmark: cache hit, one-file incremental rebuild, and (with --scratch) a
from-scratch build, for one kernel source. Prints medians; run on an idle machine.

  python benchmarks/bench_build.py [--kernel debian:6.1] [--runs 3] [--scratch | --scratch-only]

Incremental: each run applies a one-line patch to kernel/trace/trace_uprobe.c with a new
comment, so the artefact key changes and make recompiles that file and relinks.
From scratch: a fresh build directory (temporary cache), ccache disabled, sources already
extracted (extraction is reported separately by the harness as prepare_s).

With --scratch-only, --against REV interleaves REV's own from-scratch builds (its
bench_build.py in a worktree of REV: its config) with this tree's, and --record appends
make's seconds to benchmarks/figures.jsonl as the figure scratch_build (REV's too). A REV
whose bench_build.py has no --scratch-only (before the speed work) gets this script's
scratch builds run with REV's harness and config (against.script_for)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import figures
from against import script_for  # (the import puts this tree's or REV's harness on sys.path)

from harness.build import kernel  # noqa: E402
from harness.paths import cache_root  # noqa: E402
from harness.progress import Progress  # noqa: E402

PATCH = """--- a/kernel/trace/trace_uprobe.c
+++ b/kernel/trace/trace_uprobe.c
@@ -1,3 +1,4 @@
+// bench {stamp}
"""


def timed(request: kernel.BuildRequest) -> tuple[float, kernel.Kernel]:
    started = time.monotonic()
    built = kernel.build(request, Progress.quiet())
    return time.monotonic() - started, built


def one_line_series(directory: Path, stamp: str, source_tree: Path) -> Path:
    import subprocess  # the work tree may still carry the previous run's patch: read HEAD

    pristine = subprocess.run(
        ["git", "show", "HEAD:kernel/trace/trace_uprobe.c"],
        cwd=source_tree,
        capture_output=True,
        text=True,
        check=True,
    )
    first_lines = pristine.stdout.splitlines()[:3]
    body = PATCH.format(stamp=stamp) + "".join(f" {line}\n" for line in first_lines)
    series_dir = directory / f"bench-{stamp}"
    series_dir.mkdir()
    (series_dir / "0001-bench.patch").write_text(body)
    (series_dir / "series").write_text("0001-bench.patch\n")
    return series_dir


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scratch", action="store_true", help="also a from-scratch build")
    parser.add_argument(
        "--scratch-only", action="store_true", help="only the from-scratch build(s), --runs of them"
    )
    parser.add_argument("--against", metavar="REV", help="with --scratch-only: REV's too")
    parser.add_argument("--record", action="store_true", help="with --scratch-only: record")
    args = parser.parse_args()
    if (args.against or args.record) and not args.scratch_only:
        print("bench_build.py: --against and --record go with --scratch-only", file=sys.stderr)
        return 2
    if args.record and args.kernel != "debian:6.1":
        print("bench_build.py: --record measures the default kernel, debian:6.1", file=sys.stderr)
        return 2
    if args.against:
        return scratch_against(args.kernel, args.runs, args.against, args.record)
    if args.scratch_only:
        makes = scratch(args.kernel, args.runs)
        if args.record:
            figures.record("scratch_build", makes)
        return 0

    baseline_s, base = timed(kernel.BuildRequest(kernel=args.kernel, series="none"))
    print(f"{args.kernel}: baseline build {baseline_s:.1f}s (cached={base.cached})")

    hits = [
        timed(kernel.BuildRequest(kernel=args.kernel, series="none"))[0] for _ in range(args.runs)
    ]
    print(
        f"cache hit: median {statistics.median(hits):.2f}s of {args.runs} "
        f"({', '.join(f'{h:.2f}' for h in hits)})"
    )

    from harness.build import sources

    tree = sources.cache_dir("sources") / ("debian-" + args.kernel.split(":")[1])
    incremental = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            series_dir = one_line_series(Path(tmp), f"{os.getpid()}-{time.time_ns()}-{run}", tree)
            seconds, built = timed(kernel.BuildRequest(kernel=args.kernel, series=str(series_dir)))
            incremental.append((seconds, built.durations.get("make_s", 0.0)))
    print(
        f"one-file incremental: median {statistics.median(s for s, _ in incremental):.1f}s "
        f"total, make {statistics.median(m for _, m in incremental):.1f}s "
        f"({', '.join(f'{s:.1f}' for s, _ in incremental)})"
    )
    # back to the stock tree so the build directory matches the cached artefact again
    timed(kernel.BuildRequest(kernel=args.kernel, series="none"))

    if args.scratch:
        scratch(args.kernel, 1)
    return 0


def scratch(kernel_spec: str, runs: int) -> list[float]:
    """From-scratch builds: a fresh cache each (sources extracted again), ccache disabled;
    make's seconds of each."""
    makes = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            # a fetched Debian tarball (debian:7.x) is reused, not downloaded again
            for reused in ("debian", "apt"):
                if (cache_root() / reused).is_dir():
                    shutil.copytree(
                        cache_root() / reused, Path(cache) / reused, copy_function=os.link
                    )
            scratch_env = {"UPROBE_HARNESS_CACHE": cache, "CCACHE_DISABLE": "1"}
            with mock.patch.dict(os.environ, scratch_env):
                seconds, built = timed(kernel.BuildRequest(kernel=kernel_spec, series="none"))
            d = built.durations
            makes.append(d["make_s"])
            objects = sum(1 for _ in (Path(cache) / "builds").rglob("*.o"))
            print(
                f"from scratch: {seconds:.0f}s total (extract+commit {d['prepare_s']:.0f}s, "
                f"config {d['config_s']:.0f}s, make {d['make_s']:.0f}s), {objects} objects, "
                f"bzImage {built.bzimage.stat().st_size / 1e6:.1f} MB",
                flush=True,
            )
    if runs > 1:
        print(f"from scratch: make median {statistics.median(makes):.0f}s of {runs}")
    return makes


def scratch_against(kernel_spec: str, runs: int, rev: str, record: bool) -> int:
    """From-scratch builds of REV (its own bench_build.py in a worktree) and of this tree,
    one at a time, interleaved."""
    import re
    import subprocess

    from against import medians, worktree

    makes: dict[str, list[float]] = {rev: [], "current": []}
    with worktree(rev) as before:
        script, env = script_for(before, __file__, "--scratch-only")
        for _ in range(runs):
            done = subprocess.run(
                [sys.executable, str(script), "--kernel", kernel_spec]
                + ["--scratch-only", "--runs", "1"],
                cwd=before,
                env=env,
                capture_output=True,
                text=True,
            )
            found = re.search(r"make (\d+)s\)", done.stdout)
            if done.returncode != 0 or not found:
                raise SystemExit(f"bench_build.py in {before} failed:\n{done.stderr[-2000:]}")
            print(f"{rev}: {done.stdout.strip()}", flush=True)
            makes[rev].append(float(found[1]))
            makes["current"] += [round(m) for m in scratch(kernel_spec, 1)]  # as REV's
        before_rev = figures.current_rev(before)
    print("\n".join(medians(makes, "from scratch, make", digits=0)))
    if record:
        figures.record_against("scratch_build", makes[rev], before_rev, makes["current"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
