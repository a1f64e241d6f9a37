"""Integration: a user kills the harness while its guests run, and nothing it started stays
behind. `python -m harness main` (pytest child, QEMU grandchildren) and `python -m harness
sweep` (QEMU child) on the default kernel, killed with SIGKILL or SIGTERM as soon as a QEMU
process runs below them."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import children
from harness.paths import REPO_ROOT

pytestmark = pytest.mark.slow

COMMANDS = {
    "main": ["main", "--smp", "1", "--", "-k", "test_profile_counts_every_hit"],
    "sweep": ["sweep", "--filter", "onebyte"],
}


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
@pytest.mark.parametrize("entry", sorted(COMMANDS))
def test_killing_the_harness_leaves_no_process_behind(tmp_path, entry, signum):
    argv = [sys.executable, "-m", "harness", *COMMANDS[entry]]
    if entry == "main":
        argv[4:4] = ["--results", str(tmp_path / "results")]
    # the sweep's guests work in the temporary directory (main's under its --results)
    workdirs = set(Path(tempfile.gettempdir()).glob("uph-sweep-*"))
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 1500  # a cold cache builds the kernel first
        while time.monotonic() < deadline and proc.poll() is None:
            below = children.descendants(proc.pid)
            if any("qemu-system" in children.command_line(pid) for pid in below):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"harness {entry} ended before any guest ran"
        assert any("qemu-system" in children.command_line(pid) for pid in below), "no QEMU seen"
        time.sleep(1.0)
        below = children.descendants(proc.pid)
        os.kill(proc.pid, signum)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 45  # SIGTERM: pytest gets 30 s to stop
        while time.monotonic() < deadline and any(children.running(pid) for pid in below):
            time.sleep(0.2)
        left = {pid: children.command_line(pid) for pid in below if children.running(pid)}
        assert not left, (
            f"left behind after {signal.Signals(signum).name} of harness {entry}: {left}"
        )
        new_workdirs = set(Path(tempfile.gettempdir()).glob("uph-sweep-*")) - workdirs
        if signum == signal.SIGTERM:  # unwinds: the guests' work directories go too
            assert not new_workdirs, f"work directories left after SIGTERM: {new_workdirs}"
    finally:
        for leftover in set(Path(tempfile.gettempdir()).glob("uph-sweep-*")) - workdirs:
            shutil.rmtree(leftover, ignore_errors=True)  # SIGKILL: nothing can clean up
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in below:  # adopted by init if left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
