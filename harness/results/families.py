"""The scenario families and the other pytest markers (harness/configs/families.toml):
which test module is which family, what its marker means, which a mutant may declare."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from harness import data
from harness.paths import CONFIGS_DIR

FAMILIES_FILE = CONFIGS_DIR / "families.toml"


class Family(data.Spec):
    module: str  # the test module under testcases/, without .py
    help: str  # the marker's description
    mutants: bool = True  # a mutant may declare it in `breaks`


class _File(data.Spec):
    family: dict[str, Family]
    marker: dict[str, str] = {}


@lru_cache(maxsize=None)
def load(path: Path = FAMILIES_FILE) -> _File:
    spec = data.load(path, _File)
    modules = [f.module for f in spec.family.values()]
    for name, family in spec.family.items():
        if modules.count(family.module) > 1:
            where = f"[family{data.key_step(name)}]"
            raise data.error(path, where, f"module {family.module!r} is in two families")
        if name in spec.marker:
            raise data.error(path, "[marker]", f"{name!r} is a family's marker already")
    return spec


def by_module() -> dict[str, str]:
    """{test module: family name}."""
    return {f.module: name for name, f in load().family.items()}


def mutable() -> tuple[str, ...]:
    """The families a mutant may declare, in file order."""
    return tuple(name for name, f in load().family.items() if f.mutants)


def markers() -> dict[str, str]:
    """{marker: description}: every family's, then the others."""
    return {name: f.help for name, f in load().family.items()} | load().marker
