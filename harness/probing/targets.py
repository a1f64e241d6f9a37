"""Programs that get probed: compiled statically on the host from testcases/targets,
cached by content hash, uploaded to each guest once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import TARGETS_DIR, cache_dir

# target name -> sources (relative to testcases/targets; headers are hashed, not passed to
# gcc) and extra flags; data, not code
RECIPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hits": (("hits.c", "hits_sites.S"), ("-pthread",)),
    "xmc_canary": (("xmc_canary.c",), ("-pthread",)),
    # a uprobe consumer through perf_event_open (the uprobe PMU)
    "perf_uprobe": (("perf_uprobe.c", "held_child.h", "uprobe_pmu.h"), ()),
    # a uprobe consumer through BPF (perf-event attach, uprobe_multi links, sessions)
    "bpf_uprobe": (("bpf_uprobe.c", "held_child.h", "uprobe_pmu.h"), ()),
    # how often code addresses run, counted with ptrace breakpoints (no uprobes)
    "bpcount": (("bpcount.c",), ()),
    "xol_many": (("xol_many.c", "xol_sites.S", "hits_sites.S"), ("-pthread",)),
    "stack": (("stack.c", "stack_sites.S"), ("-pthread",)),
    # the same sites in a 32-bit (compat) task: static i386 libc from gcc-multilib
    "stack32": (("stack.c", "stack_sites.S"), ("-pthread", "-m32")),
    "opt": (("opt.c", "opt_env.c", "opt.h", "opt_sites.S", "hits_sites.S"), ("-pthread",)),
    # a 32-bit (compat) task, freestanding: no 32-bit libc on the host
    "opt32": (("opt32.c",), ("-m32", "-ffreestanding", "-nostdlib", "-fno-stack-protector")),
}


@dataclass(frozen=True)
class Target:
    name: str
    binary: Path  # on the host
    digest: str

    @property
    def guest_path(self) -> str:
        return f"/tmp/targets/{self.digest}/{self.name}"


def compile_target(name: str) -> Target:
    if name not in RECIPES:
        raise HarnessError(f"unknown target '{name}'; known: {', '.join(sorted(RECIPES))}")
    sources, flags = RECIPES[name]
    paths = [TARGETS_DIR / s for s in sources]
    h = hashlib.sha256(" ".join(flags).encode())
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    digest = h.hexdigest()[:16]
    binary = cache_dir("targets", f"{name}-{digest}") / name
    if not binary.exists():
        # a name of its own per compile: concurrent workers (pytest-xdist) must not write
        # one file; the rename publishes the first complete one
        tmp = binary.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        cmd = [
            "gcc",
            "-static",
            "-no-pie",
            "-O2",
            "-g",
            *flags,
            "-o",
            str(tmp),
            *(str(p) for p in paths if p.suffix != ".h"),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(
                f"target {name} did not compile: {' '.join(cmd)}\n{result.stderr[-3000:]}"
            )
        os.replace(tmp, binary)
    return Target(name, binary, digest)


def target_from_binary(name: str, binary: Path, digest: str) -> Target:
    return Target(name, binary, digest)
