"""The scenario suite as a pytest subprocess: one command line and one way to run it for
every caller (the main job, bisect steps, mutation runs, nightly cells).

`run` starts pytest through `children` (it dies with us, even on SIGKILL; its QEMUs die with
it), in its own session (a terminal's Ctrl-C reaches only us), and stops it cleanly when we
are interrupted by SIGINT or SIGTERM: one SIGINT to pytest, which shuts its VMs down, then
SIGKILL after `children.STOP_TIMEOUT`; the interruption then goes on as KeyboardInterrupt."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import children
from harness.paths import REPO_ROOT


def pytest_command(
    kernel: str,
    junit: Path,
    *,
    series: str | None = None,
    fragments: tuple[str, ...] = (),
    smp: str = "1,4",
    accel: str = "auto",
    extra: tuple[str, ...] = (),
    targets: tuple[str, ...] = ("testcases",),
) -> list[str]:
    """Run from the repository root (the rootdir with conftest.py and pytest.ini); `targets`
    are pytest's paths or node ids (the whole scenario suite by default)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        f"--kernel={kernel}",
        f"--smp={smp}",
        f"--accel={accel}",
    ]
    if series is not None:
        cmd.append(f"--series={series}")
    cmd += [f"--config-fragment={fragment}" for fragment in fragments]
    return cmd + list(extra)


@dataclass(frozen=True)
class Finished:
    """A pytest run that ended: its exit status (0 passed, 1 failures, 2 interrupted, 3
    internal error, 4 usage, 5 no tests; negative: killed by that signal), wall time, and
    where its JUnit file (if pytest wrote one) and its output went."""

    status: int
    seconds: float
    junit: Path
    log: Path | None

    @property
    def has_results(self) -> bool:
        return self.junit.is_file()


def run(cmd: list[str], junit: Path, *, log: Path | None = None, cwd: Path = REPO_ROOT) -> Finished:
    """Run `cmd` (a pytest_command writing `junit`) to its end. Output goes to `log`, or to
    our own stdout/stderr without one. A stale `junit` from an earlier run is removed first."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    started = time.monotonic()
    out = open(log, "wb") if log else None
    try:
        status = children.run(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None
        ).returncode
    finally:
        if out:
            out.close()
    return Finished(status, time.monotonic() - started, junit, log)
