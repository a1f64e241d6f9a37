"""Known kernel bugs as data (harness/configs/known_bugs.toml) -> xfail reasons."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .paths import CONFIGS_DIR


@dataclass(frozen=True)
class KnownBug:
    test: tuple[str, ...]
    kernels: tuple[str, ...]
    fixed_by: str
    reason: str
    link: str

    def applies(self, test_name: str, kernel_spec: str, patches: list[str]) -> bool:
        if not any(fnmatch.fnmatchcase(test_name, pattern) for pattern in self.test):
            return False
        if "*" not in self.kernels and kernel_spec not in self.kernels:
            return False
        if self.fixed_by and any(fnmatch.fnmatch(p, self.fixed_by) for p in patches):
            return False
        return True


def load(path: Path = CONFIGS_DIR / "known_bugs.toml") -> list[KnownBug]:
    data = tomllib.loads(path.read_text())
    return [KnownBug(_as_tuple(b["test"]), tuple(b["kernels"]), b.get("fixed_by", ""), b["reason"],
                     b.get("link", "")) for b in data.get("bug", [])]


def _as_tuple(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def patches_of(kernel) -> list[str]:
    if kernel.metadata and Path(kernel.metadata).is_file():
        return json.loads(Path(kernel.metadata).read_text()).get("patches", [])
    return []


def match(bugs: list[KnownBug], test_name: str, kernel) -> KnownBug | None:
    patches = patches_of(kernel)
    for bug in bugs:
        if bug.applies(test_name, kernel.spec, patches):
            return bug
    return None
