"""Known kernel bugs as data (harness/configs/known_bugs.toml) -> xfail reasons.

An entry applies to a kernel when the kernel is one it names, upstream had not fixed the bug
by that kernel's version (`fixed_upstream`) and the applied series carries no patch that fixes
it (`fixed_by`). Where an entry applies, the bug is expected to show: a test that passes, or
sweep forms that are all identical, make the entry *stale*, which is reported as a failure.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness import data
from harness.paths import CONFIGS_DIR

KNOWN_BUGS_FILE = CONFIGS_DIR / "known_bugs.toml"
_VERSION = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class KnownBug:
    test: tuple[str, ...]
    kernels: tuple[str, ...]
    fixed_by: tuple[str, ...]  # patch name patterns: any of them in the series fixes it
    reason: str
    link: str
    fixed_upstream: str = ""  # first upstream version known to carry the fix
    splat: str = ""  # the bug shows as a kernel splat with this in its title: a test
    # that crashes with it is an expected failure too

    @property
    def key(self) -> str:
        """The entry's name in results and reports: its first test pattern (unique)."""
        return self.test[0]

    def explains_crash(self, crash_title: str) -> bool:
        return bool(self.splat) and self.splat in crash_title

    def matches_test(self, test_name: str) -> bool:
        return any(fnmatch.fnmatchcase(test_name, pattern) for pattern in self.test)

    def applies_to_kernel(self, kernel_spec: str, patches: list[str], release: str = "") -> bool:
        if "*" not in self.kernels and kernel_spec not in self.kernels:
            return False
        if self.fixed_upstream and release:
            have, fixed = version_tuple(release), version_tuple(self.fixed_upstream)
            if have and fixed and have >= fixed:
                return False
        if any(fnmatch.fnmatch(p, pattern) for p in patches for pattern in self.fixed_by):
            return False
        return True

    def applies(
        self, test_name: str, kernel_spec: str, patches: list[str], release: str = ""
    ) -> bool:
        return self.matches_test(test_name) and self.applies_to_kernel(
            kernel_spec, patches, release
        )

    def stale_message(self, kernel_label: str) -> str:
        return (
            f"stale known-bugs entry: '{self.reason[:160]}' is expected on {kernel_label} "
            f"but did not show. If it was fixed there, record it in "
            f'{KNOWN_BUGS_FILE.name} (fixed_upstream = "<version>" or fixed_by = '
            f'"<patch pattern>").'
        )


def version_tuple(text: str) -> tuple[int, int] | None:
    match = _VERSION.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


class _Entry(data.Spec):
    test: str | list[str]  # a test name pattern or a list of them
    kernels: list[str]  # kernel specs ("*": any)
    reason: str  # a sentence
    fixed_by: str | list[str] = ""  # a patch name pattern or a list of them (any)
    fixed_upstream: str = ""  # a version such as "7.2"
    link: str = ""  # a URL or repo path
    splat: str = ""  # text of the kernel splat's title the bug causes


class _File(data.Spec):
    bug: list[_Entry] = []


def load(path: Path = KNOWN_BUGS_FILE) -> list[KnownBug]:
    raw = data.parse(path)
    bugs = []
    for number, entry in enumerate(data.convert(raw, _File, path).bug):
        where = data.entry_name(raw, f"$.bug[{number}]")
        if entry.fixed_upstream and not version_tuple(entry.fixed_upstream):
            raise data.error(
                path,
                where,
                f'fixed_upstream = {entry.fixed_upstream!r} is not a version such as "7.2"',
            )
        bugs.append(
            KnownBug(
                _as_tuple(entry.test),
                tuple(entry.kernels),
                _as_tuple(entry.fixed_by) if entry.fixed_by else (),
                entry.reason,
                entry.link,
                entry.fixed_upstream,
                entry.splat,
            )
        )
    seen: dict[str, int] = {}
    for number, bug in enumerate(bugs, start=1):
        if bug.key in seen:
            raise data.error(
                path,
                f"[[bug]] {seen[bug.key]} and {number}",
                f"both start with test = {bug.key!r}: an entry is named by its "
                f"first test pattern in results and reports; reorder or merge "
                f"them",
            )
        seen[bug.key] = number
    return bugs


def states_property(states: dict[str, str]) -> tuple[str, str]:
    """The JUnit property recording which entries applied to a test and whether their bug
    showed ("showed", "absent", or "unclear": the test failed for another reason)."""
    return ("known_bugs", json.dumps(dict(sorted(states.items()))))


def _as_tuple(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def patches_of(kernel) -> list[str]:
    if kernel.metadata and Path(kernel.metadata).is_file():
        return json.loads(Path(kernel.metadata).read_text()).get("patches", [])
    return []


def match(bugs: list[KnownBug], test_name: str, kernel) -> KnownBug | None:
    patches = patches_of(kernel)
    release = getattr(kernel, "release", "") or ""
    for bug in bugs:
        if bug.applies(test_name, kernel.spec, patches, release):
            return bug
    return None
