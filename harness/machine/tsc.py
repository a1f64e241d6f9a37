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


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def host_tsc_khz() -> int | None:
    """The host TSC's frequency in kHz; None where it cannot be measured (not x86-64, no
    compiler): the guest then calibrates on its own. The measurement takes 0.2 s, which
    every first boot of a process paid (a benchmark's boot, a bisect step, a pytest run):
    it is kept per host boot (the kernel's boot_id), for which the frequency is fixed."""
    if platform.machine() != "x86_64":
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    tools = cache_dir("host-tools", f"tsc_khz-{digest}")
    try:
        boot_id = BOOT_ID.read_text().strip()
    except OSError:
        boot_id = ""
    known = tools / f"khz-{boot_id}" if boot_id else None
    if known is not None:
        try:
            return int(known.read_text())
        except (OSError, ValueError):
            pass
    khz = _measure(tools / "tsc_khz")
    if khz is not None and known is not None:
        for stale in tools.glob("khz-*"):
            stale.unlink(missing_ok=True)  # other host boots'
        tmp = known.with_name(f".{known.name}.{os.getpid()}.tmp")
        tmp.write_text(str(khz))
        os.replace(tmp, known)
    return khz


def _measure(binary: Path) -> int | None:
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


def loops_per_jiffy(khz: int, hz: int) -> int:
    """The delay loop's calibration (lpj=) for a TSC of KHZ and a kernel of CONFIG_HZ=HZ: the
    value the kernel derives from its TSC frequency (x86 delays count TSC cycles). The boot
    CPU takes it from tsc_early_khz= by itself, but each AP calibrates its delay loop against
    the timer tick (calibrate_delay_direct) unless lpj= presets it: ~0.1 s per AP under TCG."""
    return khz * 1000 // hz
