"""The benchmarks' harness commands (`./run main`, `harness sweep`) never outlive a benchmark
stopped with SIGTERM: the command's whole session goes, grandchildren included."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie not yet reaped is gone too
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_to_a_benchmark_stops_the_command_and_its_grandchildren(tmp_path):
    pids = tmp_path / "pids"
    command = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"
    bench = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        from against import run_stoppable
        run_stoppable(["sh", "-c", {command!r}], cwd={str(tmp_path)!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", bench], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(pids.read_text().split() if pids.exists() else []) < 2:
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    grandchild, command_pid = (int(p) for p in pids.read_text().split())
    assert _alive(grandchild) and _alive(command_pid)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=40) != 0
    deadline = time.monotonic() + 5
    while _alive(grandchild) or _alive(command_pid):
        assert time.monotonic() < deadline, "the command or its child outlived the benchmark"
        time.sleep(0.05)
