"""The scenario suite as a pytest subprocess: one command line for every caller
(the main job, bisect steps)."""

from __future__ import annotations

import sys
from pathlib import Path


def pytest_command(kernel: str, junit: Path, *, series: str | None = None,
                   fragments: tuple[str, ...] = (), smp: str = "1,4", accel: str = "auto",
                   extra: tuple[str, ...] = ()) -> list[str]:
    """Run from the repository root (the rootdir with conftest.py and pytest.ini)."""
    cmd = [sys.executable, "-m", "pytest", "testcases", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit1", f"--kernel={kernel}",
           f"--smp={smp}", f"--accel={accel}"]
    if series is not None:
        cmd.append(f"--series={series}")
    cmd += [f"--config-fragment={fragment}" for fragment in fragments]
    return cmd + list(extra)
