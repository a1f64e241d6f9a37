"""The nightly matrix as data: kernels x series x smp settings x test selections -> cells.

A cell's key is made of the names the matrix gives (kernel name, series name, smp,
selection name), so the history of a cell survives a change of what those names point at
(a new commit on a branch, a new version of a series): that is what a nightly compares."""

from __future__ import annotations

import hashlib
import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import REPO_ROOT


class MatrixError(HarnessError):
    """A matrix file that cannot be used as written."""


@dataclass(frozen=True)
class Cell:
    kernel_name: str
    kernel: str                    # kernel spec: debian:6.1, /path/to/linux@branch, bzImage
    series_name: str
    series: str | None             # None = the kernel's default series
    smp: str                       # "1,4": the --smp list of the pytest run
    selection_name: str
    selection: tuple[str, ...]     # extra pytest arguments
    accel: str = "auto"
    fragments: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kernel_name}/{self.series_name}/smp{self.smp}/{self.selection_name}"

    @property
    def slug(self) -> str:
        """A directory name, unique per key (the digest tells apart keys that differ only
        in the characters replaced)."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:6]
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.key) + "-" + digest


@dataclass(frozen=True)
class Matrix:
    name: str
    path: Path
    cells: tuple[Cell, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


_TOP_KEYS = {"name", "defaults", "selection", "kernel", "exclude"}
_KERNEL_KEYS = {"name", "kernel", "series", "smp", "selection", "accel", "config_fragments"}
_DEFAULT_KEYS = {"series", "smp", "selection", "accel", "config_fragments"}
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


_SELECTION_FLAGS = {"-x", "-q", "-v"}
_SELECTION_OPTIONS = {"-m", "-k", "--repeat"}      # each takes the next argument


def _checked_selection(path: Path, name: str, args: list[str]) -> tuple[str, ...]:
    """A selection chooses scenarios; it is not a pytest command line: a matrix comes from
    elsewhere, and pytest imports and runs any file it is given (and plugins, with -p). So:
    -m EXPR, -k EXPR, --repeat N, -x, -q, -v, and node ids of files under testcases/."""
    testcases = REPO_ROOT / "testcases"
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in _SELECTION_OPTIONS:
            if index + 1 >= len(args):
                raise MatrixError(f"{path}: [selection] {name}: {arg} needs an argument.")
            index += 2
            continue
        if arg in _SELECTION_FLAGS:
            index += 1
            continue
        node = arg.split("::", 1)[0]
        parts = Path(node).parts
        if not arg.startswith("-") and len(parts) >= 2 and parts[0] == "testcases" \
                and ".." not in parts and node.endswith(".py") \
                and (testcases.parent / node).resolve().is_relative_to(testcases):
            index += 1
            continue
        raise MatrixError(
            f"{path}: [selection] {name}: {arg!r} is not allowed. A selection may hold -m "
            f"EXPR, -k EXPR, --repeat N, -x, -q, -v and node ids of scenario files under "
            f"testcases/ (e.g. testcases/test_stack.py::test_name); other pytest arguments "
            f"could import and run code from anywhere.")
    return tuple(args)


def load_matrix(path: Path) -> Matrix:
    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"Matrix file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise MatrixError(f"Matrix file {path} is not valid TOML: {error}.") from error
    _check_keys(path, "the top level", data, _TOP_KEYS)
    _check_types(path, "the top level", {k: v for k, v in data.items() if k == "name"})
    for key in ("defaults", "selection"):
        if not isinstance(data.get(key, {}), dict):
            raise MatrixError(f"{path}: {key} must be a [{key}] table.")
    defaults = data.get("defaults", {})
    _check_keys(path, "[defaults]", defaults, _DEFAULT_KEYS)
    _check_types(path, "[defaults]", defaults)
    selections = {"all": ()}
    for name, args in data.get("selection", {}).items():
        if not _NAME.match(name):
            raise MatrixError(f"{path}: [selection] name {name!r} may only contain letters, "
                              f"digits and ._+- (it is part of the cell names).")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise MatrixError(f"{path}: [selection] {name} must be a list of pytest arguments "
                              f"(strings), e.g. {name} = [\"-m\", \"smp\"].")
        selections[name] = _checked_selection(path, name, args)
    kernels = _tables(path, "kernel", data.get("kernel", []))
    if not kernels:
        raise MatrixError(f"{path}: no [[kernel]] entries: the matrix has no cells.")
    base = path.parent
    cells: list[Cell] = []
    for index, entry in enumerate(kernels, start=1):
        where = f"[[kernel]] #{index}"
        _check_keys(path, where, entry, _KERNEL_KEYS)
        _check_types(path, where, entry)
        name = entry.get("name") or ""
        if not _NAME.match(name):
            raise MatrixError(f"{path}: {where} needs a name of letters, digits and ._+- "
                              f"(got {name!r}): it names the cells in the results history.")
        if not entry.get("kernel"):
            raise MatrixError(f"{path}: {where} ({name}) has no kernel = \"...\" (debian:6.1, "
                              f"/path/to/linux@branch, or a bzImage).")
        merged = {**defaults, **entry}
        series_list = [_series_entry(path, name, s) for s in _as_list(merged.get("series",
                                                                                  "default"))]
        smp_list = [str(s) for s in _as_list(merged.get("smp", "1,4"))]
        for smp in smp_list:
            if not re.fullmatch(r"\d+(,\d+)*", smp):
                raise MatrixError(f"{path}: {where} ({name}): smp {smp!r} is not a comma-"
                                  f"separated list of vCPU counts such as \"1,4\".")
        selection_names = _as_list(merged.get("selection", "all"))
        for selection in selection_names:
            if selection not in selections:
                raise MatrixError(f"{path}: {where} ({name}) uses selection {selection!r}, "
                                  f"which no [selection] table entry defines (defined: "
                                  f"{', '.join(sorted(selections))}).")
        fragments = tuple(str((base / f).resolve()) for f in
                          _as_list(merged.get("config_fragments", [])))
        for (series_name, series), smp, selection in itertools.product(
                series_list, smp_list, selection_names):
            cells.append(Cell(name, _resolve_kernel(entry["kernel"], base), series_name,
                              _resolve_series(series, base), smp, selection,
                              selections[selection], merged.get("accel", "auto"), fragments))
    rules = _tables(path, "exclude", data.get("exclude", []))
    cells = [c for c in cells if not _excluded(c, rules, path)]
    keys = [c.key for c in cells]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise MatrixError(f"{path}: cells {', '.join(duplicates)} appear twice: give the "
                          f"[[kernel]] entries distinct names.")
    return Matrix(data.get("name", path.stem), path.resolve(), tuple(cells))


_TYPES = {   # key -> (what it may be, in words; a check)
    "name": ("a string", lambda v: isinstance(v, str)),
    "kernel": ("a string", lambda v: isinstance(v, str)),
    "accel": ("a string", lambda v: isinstance(v, str)),
    "smp": ("a string or a list of them (\"1,4\")",
            lambda v: all(isinstance(x, (str, int)) and not isinstance(x, bool)
                          for x in _as_list(v))),
    "selection": ("a selection name or a list of them",
                  lambda v: all(isinstance(x, str) for x in _as_list(v))),
    "config_fragments": ("a path or a list of paths",
                         lambda v: all(isinstance(x, str) for x in _as_list(v))),
    "series": ("a series entry or a list of them",
               lambda v: all(isinstance(x, (str, dict)) for x in _as_list(v))),
}


def _check_types(path: Path, where: str, table: dict) -> None:
    for key, value in table.items():
        if key in _TYPES and not _TYPES[key][1](value):
            raise MatrixError(f"{path}: {where}: {key} must be {_TYPES[key][0]} "
                              f"(got {value!r}).")


def _tables(path: Path, key: str, value) -> list[dict]:
    """An array of tables ([[kernel]], [[exclude]])."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MatrixError(f"{path}: {key} must be written as [[{key}]] tables.")
    return value


def _check_keys(path: Path, where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MatrixError(f"{path}: {where} has unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}.")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _series_entry(path: Path, kernel_name: str, value) -> tuple[str, str | None]:
    """"default" | "none" | "NAME" | {name = "...", series = "..."} -> (name, series)."""
    if isinstance(value, str) and "/" not in value:
        return value, None if value == "default" else value
    if isinstance(value, str):
        raise MatrixError(f"{path}: kernel {kernel_name}: series {value!r} is a path; give it "
                          f"a name for the cell: {{name = \"...\", series = \"{value}\"}}.")
    if isinstance(value, dict) and set(value) <= {"name", "series"} and \
            _NAME.match(str(value.get("name", ""))):
        series = value.get("series", "default")
        return value["name"], None if series == "default" else series
    raise MatrixError(f"{path}: kernel {kernel_name}: a series entry is \"default\", \"none\", "
                      f"a name under patches/, or {{name = \"...\", series = \"...\"}} with a "
                      f"name of letters, digits and ._+- (got {value!r}).")


def _resolve_kernel(spec: str, base: Path) -> str:
    """Relative paths in the matrix are relative to the matrix file."""
    if spec.startswith(("debian:", "/")):
        return spec
    path, _, rev = spec.partition("@")
    if path.startswith((".", "~")) or "/" in path:
        resolved = str((base / Path(path).expanduser()).resolve())
        return f"{resolved}@{rev}" if rev else resolved
    return spec


def _resolve_series(series: str | None, base: Path) -> str | None:
    if series is None or series == "none" or "/" not in series:
        return series
    return str((base / series).resolve())


def _excluded(cell: Cell, rules: list[dict], path: Path) -> bool:
    fields = {"kernel": cell.kernel_name, "series": cell.series_name, "smp": cell.smp,
              "selection": cell.selection_name}
    for rule in rules:
        if not set(rule) <= set(fields):
            raise MatrixError(f"{path}: an [[exclude]] rule may only name "
                              f"{', '.join(fields)} (got {', '.join(sorted(rule))}).")
        if all(str(fields[k]) == str(v) for k, v in rule.items()):
            return True
    return False


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise MatrixError(f"--shard {text!r}: give i/N with 1 <= i <= N, e.g. --shard 2/4.")
    return int(match[1]), int(match[2])


def shard_cells(cells: tuple[Cell, ...], index: int, count: int) -> list[Cell]:
    """Shard i of N. Cells of one kernel stay on one shard when there are at least as many
    kernels as shards (so a kernel is built once); otherwise cells are dealt round-robin."""
    kernels = list(dict.fromkeys(c.kernel_name for c in cells))
    if len(kernels) >= count:
        mine = set(kernels[index - 1::count])
        return [c for c in cells if c.kernel_name in mine]
    return list(cells[index - 1::count])
