"""End to end: two consecutive nightly runs of a one-cell matrix on the real default kernel.
The cell's series is the default series in the first run and a known-bad series (one CPU's
hits shown instead of the sum) in the second: the second run must name exactly the
uprobe_profile test as a new failure and exit 1. A third run (good series again) is
SIGKILLed after its first cell is stored, while its second runs: the fourth run (bad
series) must still compare with the second (still failing, exit 0), not with the third
(which would make it a new failure, exit 1)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from harness.paths import PATCHES_DIR, REPO_ROOT

pytestmark = pytest.mark.slow

TEST = "threads::test_profile_counts_every_hit[smp4]"
MATRIX = """
name = "integration"
[selection]
profile = ["-k", "test_profile_counts_every_hit"]
again = ["-k", "test_profile_counts_every_hit"]
[[kernel]]
name = "k"
kernel = "debian:6.1"
smp = "4"
selection = {selection}
series = [{{name = "series-under-test", series = "{series}"}}]
"""


def nightly(tmp_path, series, run_id, selection=("profile",), **popen):
    matrix = tmp_path / f"matrix-{run_id}.toml"
    matrix.write_text(MATRIX.format(series=series, selection=json.dumps(list(selection))))
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "nightly",
        "--matrix",
        str(matrix),
        "--results-dir",
        str(tmp_path / "nightly"),
        "--run-id",
        run_id,
    ]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, **popen)
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)


def test_a_known_bad_series_is_a_new_failure_and_a_killed_run_is_not_history(tmp_path):
    good = PATCHES_DIR / "uprobes-6.1-fixes"
    bad = PATCHES_DIR / "known-bad" / "trace-nhit-fold-assign"

    first = nightly(tmp_path, good, "n1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 new failure" in first.stdout

    second = nightly(tmp_path, bad, "n2")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    run_dir = tmp_path / "nightly" / "runs" / "n2"
    summary = (run_dir / "summary.txt").read_text()
    new = [line for line in summary.splitlines() if "NEW FAILURE" in line]
    assert len(new) == 1 and TEST in new[0] and "(passed -> failed)" in new[0], summary
    kcidb = json.loads((run_dir / "kcidb.json").read_text())
    assert [t["status"] for t in kcidb["tests"]] == ["FAIL"]
    assert "new-failures" in (run_dir / "report.html").read_text()

    # a run killed after storing its first cell leaves a shard marked running
    third = nightly(
        tmp_path,
        good,
        "n3",
        selection=("profile", "again"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    db = sqlite3.connect(tmp_path / "nightly" / "results.db", timeout=60)
    deadline = time.monotonic() + 900
    stored = []
    while not stored and third.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = db.execute(
            "SELECT res.outcome FROM results res WHERE res.run_id='n3' AND "
            "res.cell='k/series-under-test/smp4/profile'"
        ).fetchall()
    os.killpg(third.pid, signal.SIGKILL)
    third.wait()
    assert stored == [("passed",)], "the killed run's first cell (good series) was not stored"
    assert db.execute("SELECT status FROM shards WHERE run_id='n3'").fetchone() == ("running",)
    db.close()

    fourth = nightly(tmp_path, bad, "n4")  # compared with n2 (bad), not n3: still failing
    summary = (tmp_path / "nightly" / "runs" / "n4" / "summary.txt").read_text()
    assert fourth.returncode == 0, summary
    assert any("STILL FAILING" in line and TEST in line for line in summary.splitlines())
