"""Child processes that never outlive the harness.

Every process the harness starts and waits for (QEMU, the pytest child of main, bisect,
mutate and nightly) is forked from one long-lived thread with PR_SET_PDEATHSIG=SIGKILL: the
signal fires when the *thread* that forked the child ends, so the child dies with the harness
even when the harness is killed with SIGKILL, and never with a short-lived helper thread.
A pytest child in turn starts its QEMUs the same way, so one SIGKILL takes the whole tree
down. The graceful path (SIGINT/SIGTERM to the harness) is `stop`: one SIGINT to the child's
session, which lets pytest shut its VMs down, and SIGKILL when that takes too long.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 30.0  # seconds between the SIGINT and the SIGKILL of a stopped child


HELD = {signal.SIGINT, signal.SIGTERM}


def set_pdeathsig() -> None:
    """preexec_fn of every child: SIGKILL when the forking thread (the spawner) ends; the
    signals the spawner thread blocks are unblocked again (a mask is inherited), and they get
    their default action back: a harness started with SIGINT ignored (a background job of a
    script) would hand the ignoring down, and `stop` could then only SIGKILL pytest, whose
    VMs would not be shut down cleanly."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    for signum in HELD:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


class Spawner:
    """Runs the functions that fork children on one long-lived daemon thread."""

    def __init__(self):
        self._requests: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _serve(self) -> None:
        # SIGINT/SIGTERM go to the main thread only, so that stop() can hold them back by
        # blocking them there (a signal to the process picks any thread not blocking it)
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
        while True:
            fn, done = self._requests.get()
            try:
                done.append((True, fn()))
            except BaseException as error:  # handed back to the caller
                done.append((False, error))

    def call(self, fn):
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True, name="uph-spawner")
                self._thread.start()
        done: list = []
        self._requests.put((fn, done))
        try:
            while not done:
                time.sleep(0.005)
        except BaseException:
            # interrupted while the spawner forks: wait for it, and stop what it started
            while not done:
                time.sleep(0.005)
            ok, value = done[0]
            if ok and isinstance(value, subprocess.Popen):
                value.kill()
                value.wait()
            elif ok and hasattr(value, "terminate"):  # a pexpect child
                value.terminate(force=True)
            raise
        ok, value = done[0]
        if not ok:
            raise value
        return value


SPAWNER = Spawner()


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen of a child that dies with the harness (see the module's doc)."""
    return SPAWNER.call(lambda: subprocess.Popen(cmd, preexec_fn=set_pdeathsig, **kwargs))


def stop(child: subprocess.Popen, timeout: float | None = None) -> None:
    """Stop a child started in its own session: SIGINT to the session (pytest shuts its VMs
    down), SIGKILL to it after `timeout` s (default STOP_TIMEOUT). Further SIGINT/SIGTERM
    to us are held back meanwhile (delivered afterwards): the child never outlives us."""
    if child.poll() is not None:
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        try:
            os.killpg(child.pid, signal.SIGINT)
            child.wait(STOP_TIMEOUT if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run of a child in its own session that never outlives us: it dies with us
    (`popen`), and SIGINT or SIGTERM to us stop its whole session (`stop`: pytest shuts its
    VMs down) before the signal unwinds our caller. `kwargs` go to Popen (stdout, stderr,
    text, cwd, ...); output not sent to a pipe is None in the result."""
    child = popen(cmd, start_new_session=True, **kwargs)
    with sigterm_interrupts():
        try:
            out, err = child.communicate()
        finally:
            stop(child)
    return subprocess.CompletedProcess(cmd, child.returncode, out, err)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block SIGTERM raises KeyboardInterrupt like SIGINT does, so that `finally`
    clauses (stopping children) run. Only the main thread can set handlers; elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the process tree, read from /proc (the kill tests: what is left after a signal) --------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever adopted it."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
