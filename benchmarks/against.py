"""`--against REV` for the benchmarks: the same measurement in a detached git worktree of
REV (the configuration, machine definition and code before a change), runs interleaved
with the current tree's so that the host's load hits both alike; the worktree is removed
afterwards. REV's own benchmark script does its runs (it must know the flags used)."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmarks that import this module import its harness


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
