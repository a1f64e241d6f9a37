"""Edit -> verdict: a developer changes one line of arch/x86/kernel/uprobes.c in their own
git tree, commits, and runs one scenario family on it:

  pytest testcases/test_riprel.py --kernel TREE@HEAD

timed from the edit to pytest's exit (the incremental build, the boot, the family). The
tree is a git clone of Debian's 6.1 source kept in the cache (a developer's checkout); a
first, untimed run builds it (ccache shares the objects of debian:6.1, built at the same
place in the sandbox). Each timed run adds another function to uprobes.c, so make
recompiles it and relinks. Prints the median and every run; run on an idle machine.

  python benchmarks/bench_edit_verdict.py [--runs 3] [--family riprel] [--record] [-- PYTEST ARGS]

--against REV runs REV's pytest (a worktree of REV: its harness, config and family) on the
same tree, edits interleaved with this tree's (each harness has its own build directory of
the tree, so every timed run is one edited file for either). --record appends the runs to
benchmarks/figures.jsonl as the figure edit_verdict (the riprel family, no pytest arguments,
REV's too; see benchmarks/figures.py).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import figures
from against import medians, worktree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import children  # noqa: E402
from harness.build import sources  # noqa: E402
from harness.paths import REPO_ROOT, cache_dir  # noqa: E402

EDITED = "arch/x86/kernel/uprobes.c"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def developer_tree() -> Path:
    """The clone, at Debian's pristine 6.1 (made once, reset on every invocation)."""
    tree = cache_dir("bench") / "edit-verdict-linux"
    pristine = sources.prepare(sources.parse_spec("debian:6.1")).tree
    if not (tree / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", "--shared", str(pristine), str(tree)], check=True)
    base = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    subprocess.run(["git", "reset", "-q", "--hard", base], cwd=tree, check=True)
    return tree


def edit_and_commit(tree: Path, number: int) -> None:
    with open(tree / EDITED, "a") as handle:
        handle.write(f"int uph_bench_edit_{number}(void) {{ return {number}; }}\n")
    subprocess.run([*GIT, "commit", "-qam", f"bench: edit {number}"], cwd=tree, check=True)


def verdict(
    tree: Path, family: str, extra: list[str], harness: Path = REPO_ROOT
) -> tuple[float, str]:
    """Seconds from now to pytest's exit in `harness` (this tree or REV's worktree), and
    pytest's summary line (it must pass)."""
    started = time.monotonic()
    result = children.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(harness / "testcases" / f"test_{family}.py"),
            f"--kernel={tree}@HEAD",
            "-q",
            "-p",
            "no:cacheprovider",
            *extra,
        ],
        cwd=harness,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.monotonic() - started
    summary = next(
        (line for line in reversed(result.stdout.splitlines()) if re.search(r" in [\d.]+s", line)),
        result.stdout[-300:],
    )
    if result.returncode != 0:
        raise SystemExit(f"pytest failed (exit {result.returncode}): {summary}")
    return seconds, summary.strip("= ")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--family", default="riprel")
    parser.add_argument("--against", metavar="REV", help="also REV's harness, interleaved")
    parser.add_argument("--record", action="store_true", help="record the figure (see above)")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.record and (args.family != "riprel" or args.pytest_args):
        print("bench_edit_verdict.py: --record measures the riprel family alone", file=sys.stderr)
        return 2
    with worktree(args.against) if args.against else contextlib.nullcontext() as before:
        harnesses = [(args.against, before)] if before else []
        harnesses.append(("current", REPO_ROOT))
        tree = developer_tree()
        edits = itertools.count()
        for label, harness in harnesses:
            edit_and_commit(tree, next(edits))
            seconds, summary = verdict(tree, args.family, args.pytest_args, harness)
            print(f"{label}: warm-up (the tree's first build): {seconds:.1f}s, {summary}")
        runs: dict[str, list[float]] = {label: [] for label, _ in harnesses}
        for number in range(1, args.runs + 1):
            for label, harness in harnesses:
                started = time.monotonic()
                edit_and_commit(tree, next(edits))
                _, summary = verdict(tree, args.family, args.pytest_args, harness)
                runs[label].append(time.monotonic() - started)
                print(f"{label}: run {number}: {runs[label][-1]:.1f}s, {summary}", flush=True)
        print("\n".join(medians(runs, f"edit -> verdict ({args.family})")))
        if args.record and before is not None:
            figures.record_against(
                "edit_verdict", runs[args.against], figures.current_rev(before), runs["current"]
            )
        elif args.record:
            figures.record("edit_verdict", runs["current"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
