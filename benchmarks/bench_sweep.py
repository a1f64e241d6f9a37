"""Sweep benchmark: wall time of `python -m harness sweep` (the whole corpus, the default
number of guests) on one kernel, from the command's start to its exit. Prints the median and
every run; run on an idle machine.

  python benchmarks/bench_sweep.py [--kernel debian:6.1] [--series S] [--runs 3]
                                   [--against REV] [--no-warmup] [--record]

A first, unmeasured run builds the kernel and the sweep's programs (--no-warmup: they are
built already). --against REV runs REV's harness (a worktree of REV) interleaved with this
tree's. The sweep exits 1 when it finds an unexpected difference: the run still counts (its
summary is printed), any other exit stops the benchmark. --record appends the runs to
benchmarks/figures.jsonl as the figure sweep_<kernel> (REV's too).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from subprocess import PIPE

import figures
from against import ROOT, medians, worktree

from harness import children  # noqa: E402 (against put this tree's harness on sys.path)


def one_sweep(tree: Path, kernel: str, series: str | None) -> tuple[float, str]:
    """Seconds of one whole-corpus sweep in `tree`, and its summary line."""
    cmd = [sys.executable, "-m", "harness", "sweep", "--kernel", kernel]
    cmd += ["--series", series] if series else []
    started = time.monotonic()
    # stopped with its guests when this benchmark gets SIGINT or SIGTERM
    done = children.run(cmd, cwd=tree, stdout=PIPE, stderr=PIPE, text=True)
    seconds = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(
            f"harness sweep in {tree} exited {done.returncode}:\n{done.stderr[-2000:]}"
        )
    lines = done.stdout.strip().splitlines()
    summary = [line for line in lines if " forms in " in line or line.startswith("total ")]
    return seconds, "; ".join(" ".join(line.split()) for line in summary)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--series", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="compare with a worktree of REV")
    parser.add_argument("--no-warmup", action="store_true", help="no unmeasured first run")
    parser.add_argument("--record", action="store_true", help="record the figure (see above)")
    args = parser.parse_args()
    # SIGTERM unwinds: the running command is killed, clones and worktrees are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figure = f"sweep_{args.kernel.replace(':', '_')}"
    if args.record and (args.series or not figures.defined(figure)):
        print(
            f"bench_sweep.py: --record measures a kernel of figures.toml with its default "
            f"series (no figure {figure!r}, or --series given)",
            file=sys.stderr,
        )
        return 2
    with worktree(args.against) if args.against else contextlib.nullcontext() as before:
        trees = [(args.against, before)] if before else []
        trees.append(("current", ROOT))
        for label, tree in trees if not args.no_warmup else []:
            seconds, summary = one_sweep(tree, args.kernel, args.series)
            print(f"  warm-up {label}: {seconds:.1f}s, {summary}", flush=True)
        walls: dict[str, list[float]] = {label: [] for label, _ in trees}
        for _ in range(args.runs):
            for label, tree in trees:
                seconds, summary = one_sweep(tree, args.kernel, args.series)
                walls[label].append(seconds)
                print(f"  {label}: {seconds:.1f}s, {summary}", flush=True)
        print("\n".join(medians(walls, f"sweep of {args.kernel}")))
        if args.record and before is not None:
            figures.record_against(
                figure, walls[args.against], figures.current_rev(before), walls["current"]
            )
        elif args.record:
            figures.record(figure, walls["current"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
