"""Config fragments: parse, merge onto tinyconfig with the kernel's merge_config.sh, verify.

kunit_tool's lesson: after olddefconfig, name every requested option that did not land.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.build import sandbox
from harness.errors import ConfigError
from harness.paths import CONFIGS_DIR

BASE_FRAGMENT = CONFIGS_DIR / "base.config"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Option:
    symbol: str  # CONFIG_FOO
    value: str  # 'y', 'm', '"text"', '64', or 'n' for "is not set"
    origin: str  # "file:line"


@dataclass(frozen=True)
class Fragment:
    path: Path
    options: tuple[Option, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def parse_fragment(path: Path) -> Fragment:
    path = Path(path).absolute()  # merge_config.sh runs in the source tree, not here
    if not path.is_file():
        raise ConfigError(f"Config fragment {path} does not exist.")
    options = []
    for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        origin = f"{path}:{line_no}"
        if not line:
            continue
        unset = _UNSET.match(line)
        if unset:
            options.append(Option(unset.group(1), "n", origin))
            continue
        if line.startswith("#"):
            continue
        match = _SET.match(line)
        if not match:
            raise ConfigError(
                f"{origin}: '{line}' is not a Kconfig assignment. A fragment line is "
                f"'CONFIG_FOO=y', 'CONFIG_FOO=\"text\"', '# CONFIG_FOO is not set', or a comment."
            )
        options.append(Option(match.group(1), match.group(2), origin))
    return Fragment(path, tuple(options))


def fragments_digest(fragments: list[Fragment]) -> str:
    h = hashlib.sha256()
    for fragment in fragments:
        h.update(fragment.path.name.encode() + b"\0" + bytes.fromhex(fragment.digest))
    return h.hexdigest()


def read_config(config_file: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in config_file.read_text().splitlines():
        match = _SET.match(line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def missing_options(fragments: list[Fragment], config: dict[str, str]) -> list[Option]:
    """Requested options whose final value differs from the request (last request wins)."""
    wanted: dict[str, Option] = {}
    for fragment in fragments:
        for option in fragment.options:
            wanted[option.symbol] = option
    missing = []
    for symbol, option in wanted.items():
        actual = config.get(symbol, "n")
        if actual != option.value:
            missing.append(option)
    return missing


def kconfig_dependencies(source: Path, symbol: str) -> list[str]:
    """'depends on' lines of a symbol and the `if` blocks around it, read from the Kconfig
    files (best effort: menus and files that `source` it are not followed)."""
    name = symbol.removeprefix("CONFIG_")
    result = subprocess.run(
        ["git", "grep", "-n", "-E", f"^\\s*(menu)?config {name}\\s*$", "--", "*Kconfig*"],
        cwd=source,
        capture_output=True,
        text=True,
    )
    deps: list[str] = []
    for hit in result.stdout.splitlines():
        file_name, line_no, _ = hit.split(":", 2)
        text = (source / file_name).read_text(errors="replace").splitlines()
        deps += _enclosing_ifs(text[: int(line_no) - 1])
        lines = text[int(line_no) :]
        for line in lines:
            stripped = line.strip()
            if re.match(
                r"^(config|menuconfig|endmenu|menu|choice|endchoice|if|endif|source)\b", stripped
            ):
                break
            if stripped.startswith("depends on"):
                deps.append(stripped.removeprefix("depends on").strip())
    return deps


def _enclosing_ifs(lines_before: list[str]) -> list[str]:
    """Conditions of the `if X ... endif` blocks still open at the end of lines_before (a
    symbol inside `if RUNTIME_TESTING_MENU` depends on it although it says nothing)."""
    stack: list[str] = []
    for line in lines_before:  # at column 0 only: indented lines may be help text
        if re.match(r"^if\s", line):
            stack.append(line[2:].split("#")[0].strip())
        elif re.match(r"^endif\b", line) and stack:
            stack.pop()
    return stack


def describe_missing(source: Path, missing: list[Option], config: dict[str, str]) -> str:
    parts = []
    for option in missing:
        actual = config.get(option.symbol, "n")
        text = (
            f"{option.symbol}={option.value} (requested at {option.origin}) "
            f"ended up as {option.symbol}={actual}"
        )
        deps = kconfig_dependencies(source, option.symbol)
        if deps:
            text += f"; Kconfig says it depends on: {' && '.join(deps)}"
        elif not _symbol_exists(source, option.symbol):
            text += "; no such symbol in this kernel's Kconfig"
        parts.append(text)
    return "; ".join(parts)


def _symbol_exists(source: Path, symbol: str) -> bool:
    name = symbol.removeprefix("CONFIG_")
    result = subprocess.run(
        ["git", "grep", "-q", "-E", f"^\\s*(menu)?config {name}\\s*$", "--", "*Kconfig*"],
        cwd=source,
    )
    return result.returncode == 0


def make_config(
    view: sandbox.BuildView,
    fragments: list[Fragment],
    make_args: list[str],
    log,
    readable: Sequence[Path] = (),
) -> dict[str, str]:
    """tinyconfig + fragments (merge_config.sh) + olddefconfig in the view's build
    directory, then verify.

    The .config keeps its old mtime when its content did not change, so an unchanged
    configuration never triggers a rebuild."""
    source = view.tree
    config_file = view.build_dir / ".config"
    previous = config_file.read_bytes() if config_file.exists() else None
    previous_stat = config_file.stat() if config_file.exists() else None

    def run(cmd: list[str]) -> None:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        boxed = view.wrap(cmd, [*readable, *(f.path for f in fragments)])
        result = subprocess.run(boxed, cwd=source, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise ConfigError(f"Config step failed: {' '.join(cmd)} (see {log.name}).")

    run(["make", *make_args, "tinyconfig"])
    run(
        [
            "scripts/kconfig/merge_config.sh",
            "-m",
            "-O",
            str(view.seen_build_dir),
            str(view.seen_build_dir / ".config"),
            *[str(f.path) for f in fragments],
        ]
    )
    run(["make", *make_args, "olddefconfig"])

    config = read_config(config_file)
    missing = missing_options(fragments, config)
    if missing:
        raise ConfigError(
            "Requested kernel config options did not land in .config after olddefconfig: "
            + describe_missing(source, missing, config)
            + ". Fix the fragment or enable the dependencies."
        )
    if previous is not None and previous_stat is not None and previous == config_file.read_bytes():
        import os

        os.utime(config_file, ns=(previous_stat.st_atime_ns, previous_stat.st_mtime_ns))
    return config
