"""The host's TSC frequency, for guests whose machine has no timer to calibrate their TSC
against (see tsc_khz.c). Measured once per process by a small C program compiled on the
host and cached by its source's hash."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

from harness.paths import cache_dir

SOURCE = Path(__file__).with_name("tsc_khz.c")


@functools.cache
def host_tsc_khz() -> int | None:
    """The host TSC's frequency in kHz; None where it cannot be measured (not x86-64, no
    compiler): the guest then calibrates on its own."""
    if platform.machine() != "x86_64":
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = cache_dir("host-tools", f"tsc_khz-{digest}") / "tsc_khz"
    if not binary.exists():
        tmp = binary.with_name(f".tsc_khz.{os.getpid()}.tmp")
        built = subprocess.run(
            ["gcc", "-O2", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True
        )
        if built.returncode != 0:
            return None
        os.replace(tmp, binary)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10)
    try:
        khz = int(run.stdout.strip())
    except ValueError:
        return None
    return khz if khz > 0 else None
