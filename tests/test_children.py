"""Children never outlive the harness: a driver process (standing in for `harness main`,
bisect, mutate or nightly) runs a fake pytest through scenario_run.run; the fake starts a
fake QEMU through children.popen, as the VM code does. Then the driver is killed (SIGKILL),
terminated (SIGTERM) or interrupted (SIGINT), and every process below it must be gone."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness import children
from harness.paths import REPO_ROOT

FAKE_PYTEST = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {repo!r})
    from harness import children
    mode, pids = sys.argv[1], sys.argv[2]
    qemu = children.popen(["sleep", "300"])
    with open(pids, "w") as out:
        out.write(f"{{qemu.pid}}\\n")
    def on_sigint(signum, frame):
        with open(pids + ".sigint", "w") as out:
            out.write("1")
        qemu.kill()
        sys.exit(2)
    signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "stubborn" else on_sigint)
    time.sleep(300)
""")

DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from harness import children
    from harness.jobs import scenario_run
    children.STOP_TIMEOUT = 2
    fake, mode, pids, junit = sys.argv[1:5]
    print("running", flush=True)
    finished = scenario_run.run([sys.executable, fake, mode, pids], Path(junit),
                                log=Path(pids + ".log"))
    print(f"RUN-ENDED {{finished.status}}", flush=True)
""")


def _gone(pid: int) -> bool:
    return not children.running(pid)


def _wait_until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def driver(tmp_path):
    fake = tmp_path / "fake_pytest.py"
    fake.write_text(FAKE_PYTEST.format(repo=str(REPO_ROOT)))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(repo=str(REPO_ROOT)))
    started: list[subprocess.Popen] = []

    def start(mode: str):
        pids = tmp_path / "pids"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(fake), mode, str(pids), str(tmp_path / "junit.xml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(proc)
        assert _wait_until(lambda: pids.exists() and pids.read_text().endswith("\n"), 20), (
            "the fake pytest did not start its fake QEMU"
        )
        qemu = int(pids.read_text())
        pytest_pid = int(
            subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()[0]
        )
        return proc, pytest_pid, qemu, pids

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("mode", ["graceful", "stubborn"])
def test_sigkill_of_the_driver_takes_pytest_and_qemu_down(driver, mode):
    proc, pytest_pid, qemu, _ = driver(mode)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_until(lambda: _gone(pytest_pid), 5), "pytest outlived a SIGKILLed harness"
    assert _wait_until(lambda: _gone(qemu), 5), "QEMU outlived a SIGKILLed harness"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_pytest_with_one_sigint(driver, signum):
    proc, pytest_pid, qemu, pids = driver("graceful")
    os.kill(proc.pid, signum)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "RUN-ENDED" not in out, out
    assert (pids.parent / "pids.sigint").exists(), "pytest was not sent SIGINT"
    assert _gone(pytest_pid) and _wait_until(lambda: _gone(qemu), 5)


def test_a_child_that_ignores_sigint_is_killed_after_the_timeout(driver):
    proc, pytest_pid, qemu, _ = driver("stubborn")
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=20)
    elapsed = time.monotonic() - started
    assert 15 > elapsed > 1.5, f"stopped after {elapsed:.1f} s; STOP_TIMEOUT is 2 s there"
    assert _gone(pytest_pid) and _wait_until(lambda: _gone(qemu), 5)


def test_children_get_sigint_back_when_the_harness_ignores_it():
    """A harness started as a background job of a script ignores SIGINT (inherited): its
    children must not, or the stop protocol (one SIGINT to pytest) cannot work."""
    script = textwrap.dedent(f"""
        import signal, subprocess, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from harness import children
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child = children.popen(["cat", "/proc/self/status"], stdout=subprocess.PIPE, text=True)
        print(child.communicate()[0])
    """)
    status = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    ).stdout
    ignored = int(
        next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16
    )
    assert not ignored & (1 << (signal.SIGINT - 1)), "the child inherited an ignored SIGINT"
    assert not ignored & (1 << (signal.SIGTERM - 1))


def test_sigterm_unwinds_every_command_like_ctrl_c():
    """SIGTERM to `python -m harness ...` runs the command's `finally` clauses (guests shut
    down, their work directories removed) and exits 130 like Ctrl-C."""
    script = textwrap.dedent("""
        import sys, time
        from harness import cli
        def slow(args):
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                print("unwound", flush=True)
        cli.cmd_console = slow
        sys.exit(cli.main(["console", "any.log"]))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out == "unwound\n"
    assert "uprobe-harness: interrupted" in err


def test_sigterm_during_children_run_takes_the_whole_session_down(tmp_path):
    """children.run (pytest from main, the benchmarks' harness commands): SIGTERM to us stops
    the command and what it started in the background, which ignores SIGINT (a background
    job of `sh`), SIGKILLed with the session after the command itself has gone."""
    pids = tmp_path / "pids"
    command = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from harness import children
        children.run(["sh", "-c", {command!r}], cwd={str(tmp_path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    assert _wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 20)
    background, command_pid = (int(p) for p in pids.read_text().split())
    assert not _gone(background) and not _gone(command_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) != 0
    assert _wait_until(lambda: _gone(background) and _gone(command_pid), 5), (
        "the command or its background child outlived us"
    )
