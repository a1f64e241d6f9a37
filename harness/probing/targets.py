"""Programs that get probed: compiled statically on the host from testcases/targets,
cached by content hash, uploaded to each guest once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness import data
from harness.errors import HarnessError
from harness.paths import TARGETS_DIR, cache_dir

RECIPES_FILE = TARGETS_DIR / "targets.toml"


class Recipe(data.Spec):
    sources: list[str]  # relative to testcases/targets; headers are hashed, not compiled
    flags: list[str] = []


class _Recipes(data.Spec):
    target: dict[str, Recipe]


@lru_cache(maxsize=None)
def recipes(path: Path = RECIPES_FILE) -> dict[str, Recipe]:
    """{target name: recipe} from testcases/targets/targets.toml; every source must exist."""
    found = data.load(path, _Recipes).target
    for name, recipe in found.items():
        missing = [s for s in recipe.sources if not (path.parent / s).is_file()]
        if missing:
            where = f"[target{data.key_step(name)}]"
            raise data.error(path, where, f"no such source file: {', '.join(missing)}")
    return found


@dataclass(frozen=True)
class Target:
    name: str
    binary: Path  # on the host
    digest: str

    @property
    def guest_path(self) -> str:
        return f"/tmp/targets/{self.digest}/{self.name}"


def compile_target(name: str) -> Target:
    known = recipes()
    if name not in known:
        raise HarnessError(f"unknown target '{name}'; known: {', '.join(sorted(known))}")
    sources, flags = known[name].sources, known[name].flags
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
