"""`--against REV` for the benchmarks: the same measurement in a detached git worktree of
REV (the configuration, machine definition and code before a change), runs interleaved
with the current tree's so that the host's load hits both alike; the worktree is removed
afterwards. REV's own benchmark script does its runs (it must know the flags used)."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# UPH_BENCH_HARNESS=TREE: the harness (code, kernel config, machine definition, image) of
# TREE instead of this one's, for `--against REV` where REV's own benchmark script predates
# the interface this one drives it by: this script's measurement is then run with REV's code
HARNESS_ENV = "UPH_BENCH_HARNESS"
# the benchmarks that import this module import its harness, or the one HARNESS_ENV names
sys.path.insert(0, os.environ.get(HARNESS_ENV) or str(ROOT))


def script_for(tree: Path, this_script: str, needs: str) -> tuple[Path, dict[str, str]]:
    """(script, environment) measuring TREE (a worktree of REV): TREE's own copy of
    this_script (a benchmark's __file__) if its text has NEEDS (the flag this script passes
    it), else this script run with TREE's harness."""
    script, env = tree / "benchmarks" / Path(this_script).name, dict(os.environ)
    if needs not in script.read_text():
        script, env[HARNESS_ENV] = Path(this_script).resolve(), str(tree)
    return script, env


def resolve(rev: str) -> str:
    """REV's commit id (a commit, tag or branch of this repository)."""
    resolved = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if resolved.returncode != 0:
        raise SystemExit(f"--against {rev}: not a commit of {ROOT}")
    return resolved.stdout.strip()


def medians(walls: dict[str, list[float]], what: str, digits: int = 1) -> list[str]:
    """One line per variant: the median and every run of `what`, and the ratio against
    the first variant (the runs were interleaved)."""
    base = statistics.median(next(iter(walls.values())))
    lines = []
    for label, runs in walls.items():
        median = statistics.median(runs)
        lines.append(
            f"{label}: {what}, median {median:.{digits}f}s "
            f"({', '.join(f'{s:.{digits}f}' for s in runs)}), x{median / base:.2f}"
        )
    return lines


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached checkout of REV (a commit, tag or branch of this repository)."""
    parent = Path(tempfile.mkdtemp(prefix="uph-bench-against-"))
    path = parent / resolve(rev)[:12]
    git = ["git", "-C", str(ROOT), "worktree"]
    try:
        subprocess.run([*git, "add", "--detach", "--quiet", str(path), rev], check=True)
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run([*git, "prune"], check=False)  # whatever `remove` could not
