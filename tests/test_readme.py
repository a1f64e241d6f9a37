"""The README's Layout tree names every module of the package where it lives, and nothing
that does not exist (a newcomer finds a thing from the tree alone)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout_modules(readme: str) -> set[str]:
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    modules: set[str] = set()
    package, in_harness = "", False
    for line in block.splitlines():
        if re.match(r"^\S", line):  # a top-level entry: harness/, patches/...
            package = ""
            in_harness = line.startswith("harness/")
            continue
        entry = re.match(r"^  (\w+)/\s", line)
        if entry:
            package = entry[1]
        elif re.match(r"^  \S", line):
            package = ""
        if not in_harness:
            continue
        for name in re.findall(r"\b(\w+\.py)\b", line):
            modules.add(f"{package}/{name}" if package else name)
    return modules


def test_the_layout_tree_matches_the_package():
    readme = (ROOT / "README.md").read_text()
    actual = {
        str(p.relative_to(ROOT / "harness"))
        for p in (ROOT / "harness").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    named = _layout_modules(readme)
    assert not actual - named, f"modules the README's Layout does not name: {actual - named}"
    assert not named - actual, f"the README's Layout names what does not exist: {named - actual}"


def test_the_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in head.strip().splitlines()]
    assert commands == ["./run main", "./run tests"]
