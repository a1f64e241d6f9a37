"""Kill test: start a harness entry point, send it a signal at a random moment, and check
that nothing it started is left running, that the history database still opens and holds
every cell a complete shard recorded, that a bisected repository is untouched, that the
kernel cache still answers, and (at the end) that the next full run of each entry point still
works. Prints kills survived / tried per entry point and signal.

    .venv/bin/python benchmarks/kill_test.py [--moments 20] [--entries main,nightly,mutate,bisect]
        [--signals KILL,TERM,INT] [--every-signal] [--seed 1]

Each entry point gets --moments moments drawn uniformly from [0.5 s, 90 % of its usual
duration]; the signals take turns over them (--every-signal: every signal at every moment).
A run that ends before its signal is redrawn, not counted. The default kernel must be
buildable (the first run builds it); bisect uses the history of tests/test_integration_bisect.py
(built by that test, kept in the cache)."""

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


def bisect_repo() -> tuple[Path, str, str] | None:
    """The bisect history of the integration test: (repo, good, bad), or None if not built."""
    from harness.paths import cache_dir

    repo = cache_dir("e2e") / "bisect-linux"
    try:
        log = subprocess.run(
            ["git", "log", "--format=%H %s", "e2e-complete"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    by_subject = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in log}
    return repo, log[-1].split(" ", 1)[0], by_subject["tracing: comment 8"]


def repo_state(repo: Path) -> tuple[str, ...]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True
        ).stdout.strip()

    return (
        git("rev-parse", "HEAD"),
        git("symbolic-ref", "-q", "HEAD"),
        git("status", "--porcelain"),
        str((repo / ".git" / "BISECT_LOG").exists()),
    )


def commands(work: Path) -> dict[str, tuple[list[str], float]]:
    """entry point -> (argv, its usual duration in s on this machine with a warm cache)."""
    matrix = work / "matrix.toml"
    matrix.write_text(MATRIX)
    table = {
        "main": (
            [
                PY,
                "-m",
                "harness",
                "main",
                "--smp",
                "1",
                "--results",
                str(work / "main"),
                "--",
                *SELECT,
            ],
            25.0,
        ),
        "nightly": (
            [
                PY,
                "-m",
                "harness",
                "nightly",
                "--matrix",
                str(matrix),
                "--results-dir",
                str(work / "nightly"),
                "--fail-on",
                "never",
            ],
            25.0,
        ),
        "mutate": (
            [
                PY,
                "-m",
                "harness",
                "mutate",
                "trace-nhit-fold-assign",
                "--scope",
                "declared",
                "--results",
                str(work / "mutate"),
            ],
            90.0,
        ),
    }
    found = bisect_repo()
    if found:
        repo, good, bad = found
        table["bisect"] = (
            [
                PY,
                "-m",
                "harness",
                "bisect",
                "--kernel",
                str(repo),
                "--series",
                "none",
                "--smp",
                "1",
                "--results",
                str(work / "bisect"),
                "--good",
                good,
                "--bad",
                bad,
                "--",
                "-k",
                "test_riprel_instruction_transparent and load_rax",
            ],
            50.0,
        )
    return table


def cache_answers() -> str:
    """The kernel cache still answers after a kill: the default kernel builds (or is found)."""
    status = subprocess.run(
        [PY, "-m", "harness", "build"], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    if status.returncode != 0:
        return f"the next build failed: {status.stderr.strip()[-300:]}"
    return ""


def history_ok(results_dir: Path) -> str:
    """The nightly history opens, and every shard marked complete holds its cells."""
    db_path = results_dir / "results.db"
    if not db_path.exists():
        return ""
    try:
        db = sqlite3.connect(db_path)
        shards = db.execute("SELECT run_id, shard, status FROM shards").fetchall()
        for run_id, shard, status in shards:
            cells = db.execute(
                "SELECT COUNT(*) FROM cells WHERE run_id=? AND shard=?", (run_id, shard)
            ).fetchone()[0]
            if status == "complete" and cells == 0:
                return f"shard {run_id}/{shard} complete without cells"
        db.close()
    except sqlite3.Error as error:
        return f"history does not open: {error}"
    return ""


def default_signals() -> None:
    """The entry point gets SIGINT/SIGTERM with their default action, as from a terminal: a
    background job of a non-interactive shell (this script under `cmd &`) ignores SIGINT,
    and the ignoring is inherited, so SIGINT would test nothing."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def one_kill(argv: list[str], moment: float, signum: int, results: Path) -> str:
    """'' when nothing was left behind, else what was."""
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=default_signals,
    )
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
    parser.add_argument("--entries", default="main,nightly,mutate,bisect")
    parser.add_argument("--signals", default="KILL,TERM,INT")
    parser.add_argument("--every-signal", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    names = args.signals.split(",")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="uph-kill-") as tmp:
        work = Path(tmp)
        table = commands(work)
        repo = bisect_repo()
        print(f"{'entry':<8} {'signal':<7} {'survived':>9}  failures")
        total = survived_all = redrawn = 0
        for entry in args.entries.split(","):
            if entry not in table:
                print(
                    f"{entry}: not available (bisect: run tests/test_integration_bisect.py "
                    "once to build its history)"
                )
                return 2
            argv, duration = table[entry]
            before = repo_state(repo[0]) if entry == "bisect" and repo else None
            tally: dict[str, list] = {name: [0, 0, []] for name in names}
            for index in range(args.moments):
                for name in names if args.every_signal else [names[index % len(names)]]:
                    signum = getattr(signal, f"SIG{name}")
                    while True:
                        moment = rng.uniform(0.5, 0.9 * duration)
                        problem = one_kill(argv, moment, signum, work / entry)
                        if problem != "ended before the signal":
                            break
                        redrawn += 1
                    problem = problem or cache_answers()
                    if not problem and repo and before and repo_state(repo[0]) != before:
                        problem = "the bisected repository changed"
                    tally[name][1] += 1
                    if problem:
                        tally[name][2].append(f"{moment:.1f}s: {problem}")
                    else:
                        tally[name][0] += 1
            for name, (survived, tried, failures) in tally.items():
                total += tried
                survived_all += survived
                print(
                    f"{entry:<8} {name:<7} {survived:>4}/{tried:<4}  {'; '.join(failures) or '-'}",
                    flush=True,
                )
            status = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
            ok = status.returncode in (0, 1) and not history_ok(work / entry)
            print(
                f"{entry:<8} then a full run: exit {status.returncode} "
                f"({'ok' if ok else 'BROKEN: ' + status.stderr[-400:]})",
                flush=True,
            )
            if not ok:
                survived_all -= 1
        print(
            f"kills survived: {survived_all}/{total} ({redrawn} moment(s) redrawn: the run "
            f"had ended; {(time.monotonic() - started) / 60:.1f} min)"
        )
        return 0 if survived_all == total else 1


if __name__ == "__main__":
    sys.exit(main())
