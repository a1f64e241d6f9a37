"""Newcomer benchmark: the README's first command, `./run main`, in a fresh clone, from the
command's start to its exit: the virtualenv made and filled from PyPI, the default kernel
and series (a cache hit: this machine's cache is warm, the Debian packages installed), the
boot, every scenario, the report. Prints the median and every run with its outcome line.

  python benchmarks/bench_main.py [--runs 3] [--against REV] [--record]

Each run clones this repository afresh (HEAD: committed work only) into a temporary
directory, which is removed afterwards; --against REV clones REV for runs interleaved with
HEAD's. `./run main` must exit 0. --record appends the runs to benchmarks/figures.jsonl as
the figure run_main (REV's too).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import STDOUT

import figures
from against import ROOT, medians, resolve

from harness import children  # noqa: E402 (against put this tree's harness on sys.path)


def one_main(commit: str) -> tuple[float, str]:
    """Seconds of `./run main` in a fresh clone at `commit`, and pytest's outcome line."""
    work = Path(tempfile.mkdtemp(prefix="uph-bench-main-"))
    clone = work / "uprobe-harness"
    log = work / "run-main.log"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(
            ["git", "-C", str(clone), "-c", "advice.detachedHead=false", "checkout", "-q"]
            + ["--detach", commit],
            check=True,
        )
        started = time.monotonic()
        with open(log, "w") as handle:
            done = children.run(["./run", "main"], cwd=clone, stdout=handle, stderr=STDOUT)
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        if done.returncode != 0:
            kept = Path(tempfile.gettempdir()) / f"uph-bench-main-{commit[:12]}.log"
            shutil.copy(log, kept)
            raise SystemExit(f"./run main at {commit[:12]} exited {done.returncode}; log: {kept}")
        outcome = re.findall(r"=+ (.*(?:passed|failed).* in [\d.]+s.*?) =+", text)
        return seconds, outcome[-1] if outcome else "(no pytest summary line)"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also fresh clones of REV")
    parser.add_argument("--record", action="store_true", help="record the figure (see above)")
    args = parser.parse_args()
    # SIGTERM unwinds: the running command is killed, clones and worktrees are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trees = [(args.against, resolve(args.against))] if args.against else []
    trees.append(("current", resolve("HEAD")))
    walls: dict[str, list[float]] = {label: [] for label, _ in trees}
    for _ in range(args.runs):
        for label, commit in trees:
            seconds, outcome = one_main(commit)
            walls[label].append(seconds)
            print(f"  {label} ({commit[:12]}): {seconds:.0f}s, {outcome}", flush=True)
    print("\n".join(medians(walls, "./run main in a fresh clone", digits=0)))
    if args.record:
        for label, commit in trees:
            which = figures.NOW if label == "current" else figures.BEFORE
            figures.record("run_main", walls[label], which, commit[:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
