"""Kill test: start a harness entry point, send it a signal at a random moment, and check
that nothing it started is left running, that the history database still opens and holds
every cell a complete shard recorded, and (at the end) that the next run of each entry point
still works from the cache. Prints kills survived / tried per entry point and signal.

    .venv/bin/python benchmarks/kill_test.py [--moments 20] [--entries main,nightly,mutate]
        [--signals KILL,TERM,INT] [--seed 1]

Each moment is drawn uniformly from [0, the entry point's usual duration]; the default
kernel must be buildable (the first run builds it)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import children  # noqa: E402

PY = sys.executable
SELECT = ["-k", "test_profile_counts_every_hit"]
MATRIX = """name = "kill-test"
[selection]
one = ["-k", "test_profile_counts_every_hit"]
[[kernel]]
name = "k61"
kernel = "debian:6.1"
smp = ["1"]
selection = ["one"]
"""


def commands(work: Path) -> dict[str, tuple[list[str], float]]:
    """entry point -> (argv, its usual duration in s on this machine with a warm cache)."""
    matrix = work / "matrix.toml"
    matrix.write_text(MATRIX)
    return {
        "main": ([PY, "-m", "harness", "main", "--smp", "1", "--results",
                  str(work / "main"), "--", *SELECT], 25.0),
        "nightly": ([PY, "-m", "harness", "nightly", "--matrix", str(matrix), "--results-dir",
                     str(work / "nightly"), "--fail-on", "never"], 25.0),
        "mutate": ([PY, "-m", "harness", "mutate", "trace-nhit-fold-assign", "--scope",
                    "declared", "--results", str(work / "mutate")], 90.0),
    }


def history_ok(results_dir: Path) -> str:
    """The nightly history opens, and every shard marked complete holds its cells."""
    db_path = results_dir / "results.db"
    if not db_path.exists():
        return ""
    try:
        db = sqlite3.connect(db_path)
        shards = db.execute("SELECT run_id, shard, status FROM shards").fetchall()
        for run_id, shard, status in shards:
            cells = db.execute("SELECT COUNT(*) FROM cells WHERE run_id=? AND shard=?",
                               (run_id, shard)).fetchone()[0]
            if status == "complete" and cells == 0:
                return f"shard {run_id}/{shard} complete without cells"
        db.close()
    except sqlite3.Error as error:
        return f"history does not open: {error}"
    return ""


def one_kill(argv: list[str], moment: float, signum: int, results: Path) -> str:
    """'' when nothing was left behind, else what was."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    below: set[int] = set()
    deadline = time.monotonic() + moment
    while time.monotonic() < deadline and proc.poll() is None:
        below |= children.descendants(proc.pid)
        time.sleep(0.1)
    if proc.poll() is not None:
        return "ended before the signal"
    below |= children.descendants(proc.pid)
    os.kill(proc.pid, signum)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "did not exit within 90 s of the signal"
    end = time.monotonic() + 45
    while time.monotonic() < end and any(children.running(p) for p in below):
        time.sleep(0.2)
    left = [p for p in below if children.running(p)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        return f"left {len(left)} process(es)"
    return history_ok(results)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moments", type=int, default=20)
    parser.add_argument("--entries", default="main,nightly,mutate")
    parser.add_argument("--signals", default="KILL,TERM,INT")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="uph-kill-") as tmp:
        work = Path(tmp)
        table = commands(work)
        print(f"{'entry':<8} {'signal':<7} {'survived':>9}  failures")
        total = survived_all = 0
        for entry in args.entries.split(","):
            argv, duration = table[entry]
            for name in args.signals.split(","):
                signum = getattr(signal, f"SIG{name}")
                survived, failures = 0, []
                for _ in range(args.moments):
                    moment = rng.uniform(0.5, duration)
                    problem = one_kill(argv, moment, signum, work / entry)
                    if problem in ("", "ended before the signal"):
                        survived += 1
                    else:
                        failures.append(f"{moment:.1f}s: {problem}")
                total += args.moments
                survived_all += survived
                print(f"{entry:<8} {name:<7} {survived:>4}/{args.moments:<4}  "
                      f"{'; '.join(failures) or '-'}", flush=True)
            status = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
            ok = status.returncode in (0, 1) and not history_ok(work / entry)
            print(f"{entry:<8} then a full run: exit {status.returncode} "
                  f"({'ok' if ok else 'BROKEN: ' + status.stderr[-400:]})", flush=True)
            if not ok:
                survived_all -= 1
        print(f"kills survived: {survived_all}/{total}")
        return 0 if survived_all == total else 1


if __name__ == "__main__":
    sys.exit(main())
