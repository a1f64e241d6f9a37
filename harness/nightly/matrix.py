"""The nightly matrix as data: kernels x series x smp settings x test selections -> cells.

A cell's key is made of the names the matrix gives (kernel name, series name, smp,
selection name), so the history of a cell survives a change of what those names point at
(a new commit on a branch, a new version of a series): that is what a nightly compares."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from harness import data
from harness.errors import HarnessError
from harness.paths import REPO_ROOT


class MatrixError(HarnessError):
    """A --shard that does not say which part of the matrix to run. (A matrix file that
    cannot be used as written raises data.DataError.)"""


@dataclass(frozen=True)
class Cell:
    kernel_name: str
    kernel: str  # kernel spec: debian:6.1, /path/to/linux@branch, bzImage
    series_name: str
    series: str | None  # None = the kernel's default series
    smp: str  # "1,4": the --smp list of the pytest run
    selection_name: str
    selection: tuple[str, ...]  # extra pytest arguments
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


_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class _NamedSeries(data.Spec):
    name: str  # the series' name in the cells
    series: str = "default"  # "default", "none", a name under patches/ or a path


_Series = str | _NamedSeries  # "default" | "none" | "NAME" | {name, series}


class _Settings(data.Spec):
    """What [defaults] and each [[kernel]] may set (None: not set there)."""

    series: _Series | list[_Series] | None = None
    smp: str | int | list[str | int] | None = None
    selection: str | list[str] | None = None
    accel: str | None = None
    config_fragments: str | list[str] | None = None


class _Kernel(_Settings, kw_only=True):
    name: str
    kernel: str  # debian:6.1, /path/to/linux@branch, or a bzImage


class _Exclude(data.Spec):
    """A rule: cells matching every name it gives are left out."""

    kernel: str | None = None
    series: str | None = None
    smp: str | int | None = None
    selection: str | None = None


class _MatrixFile(data.Spec):
    name: str | None = None  # default: the file's name without .toml
    defaults: _Settings | None = None
    selection: dict[str, list[str]] = {}
    kernel: list[_Kernel] = []
    exclude: list[_Exclude] = []


_SELECTION_FLAGS = {"-x", "-q", "-v"}
_SELECTION_OPTIONS = {"-m", "-k", "--repeat"}  # each takes the next argument


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
                raise data.error(path, "[selection]", f"{name}: {arg} needs an argument.")
            index += 2
            continue
        if arg in _SELECTION_FLAGS:
            index += 1
            continue
        node = arg.split("::", 1)[0]
        parts = Path(node).parts
        if (
            not arg.startswith("-")
            and len(parts) >= 2
            and parts[0] == "testcases"
            and ".." not in parts
            and node.endswith(".py")
            and (testcases.parent / node).resolve().is_relative_to(testcases)
        ):
            index += 1
            continue
        raise data.error(
            path,
            "[selection]",
            f"{name}: {arg!r} is not allowed. A selection may hold -m EXPR, -k EXPR, "
            f"--repeat N, -x, -q, -v and node ids of scenario files under "
            f"testcases/ (e.g. testcases/test_stack.py::test_name); other pytest arguments "
            f"could import and run code from anywhere.",
        )
    return tuple(args)


def load_matrix(path: Path) -> Matrix:
    path = Path(path)
    raw = data.parse(path)
    spec = data.convert(raw, _MatrixFile, path)
    selections: dict[str, tuple[str, ...]] = {"all": ()}
    for name, args in spec.selection.items():
        if not _NAME.match(name):
            raise data.error(
                path,
                "[selection]",
                f"name {name!r} may only contain letters, "
                f"digits and ._+- (it is part of the cell "
                f"names).",
            )
        selections[name] = _checked_selection(path, name, args)
    if not spec.kernel:
        raise data.error(path, "", "no [[kernel]] entries: the matrix has no cells.")
    base = path.parent
    defaults = spec.defaults or _Settings()
    cells: list[Cell] = []
    for index, entry in enumerate(spec.kernel):
        where = data.entry_name(raw, f"$.kernel[{index}]")
        name = entry.name
        if not _NAME.match(name):
            raise data.error(
                path,
                where,
                f"needs a name of letters, digits and ._+- (got "
                f"{name!r}): it names the cells in the results "
                f"history.",
            )
        if not entry.kernel:
            raise data.error(
                path,
                where,
                'has no kernel = "..." (debian:6.1, /path/to/linux@branch, or a bzImage).',
            )
        series_list = [
            _series_entry(path, where, s)
            for s in _as_list(_setting(entry, defaults, "series", "default"))
        ]
        smp_list = [str(s) for s in _as_list(_setting(entry, defaults, "smp", "1,4"))]
        for smp in smp_list:
            if not re.fullmatch(r"\d+(,\d+)*", smp):
                raise data.error(
                    path,
                    where,
                    f'smp {smp!r} is not a comma-separated list of vCPU counts such as "1,4".',
                )
        selection_names = _as_list(_setting(entry, defaults, "selection", "all"))
        for selection in selection_names:
            if selection not in selections:
                raise data.error(
                    path,
                    where,
                    f"uses selection {selection!r}, which no "
                    f"[selection] table entry defines (defined: "
                    f"{', '.join(sorted(selections))}).",
                )
        fragments = tuple(
            str((base / f).resolve())
            for f in _as_list(_setting(entry, defaults, "config_fragments", []))
        )
        accel = _setting(entry, defaults, "accel", "auto")
        for (series_name, series), smp, selection in itertools.product(
            series_list, smp_list, selection_names
        ):
            cells.append(
                Cell(
                    name,
                    _resolve_kernel(entry.kernel, base),
                    series_name,
                    _resolve_series(series, base),
                    smp,
                    selection,
                    selections[selection],
                    accel,
                    fragments,
                )
            )
    cells = [c for c in cells if not _excluded(c, spec.exclude)]
    keys = [c.key for c in cells]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise data.error(
            path,
            "",
            f"cells {', '.join(duplicates)} appear twice: give the "
            f"[[kernel]] entries distinct names.",
        )
    return Matrix(spec.name if spec.name is not None else path.stem, path.resolve(), tuple(cells))


def _setting(entry: _Kernel, defaults: _Settings, key: str, fallback):
    """The kernel's own setting, else [defaults]', else the fallback."""
    for table in (entry, defaults):
        value = getattr(table, key)
        if value is not None:
            return value
    return fallback


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _series_entry(path: Path, where: str, value: str | _NamedSeries) -> tuple[str, str | None]:
    """ "default" | "none" | "NAME" | {name = "...", series = "..."} -> (name, series)."""
    if isinstance(value, str) and "/" not in value:
        return value, None if value == "default" else value
    if isinstance(value, str):
        raise data.error(
            path,
            where,
            f"series {value!r} is a path; give it a name for the "
            f'cell: {{name = "...", series = "{value}"}}.',
        )
    if not _NAME.match(value.name):
        raise data.error(
            path,
            where,
            f"series name {value.name!r} may only contain letters, "
            f"digits and ._+- (it is part of the cell names).",
        )
    return value.name, None if value.series == "default" else value.series


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


def _excluded(cell: Cell, rules: list[_Exclude]) -> bool:
    fields = {
        "kernel": cell.kernel_name,
        "series": cell.series_name,
        "smp": cell.smp,
        "selection": cell.selection_name,
    }
    for rule in rules:
        named = {key: getattr(rule, key) for key in fields if getattr(rule, key) is not None}
        if all(fields[key] == str(value) for key, value in named.items()):
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
        mine = set(kernels[index - 1 :: count])
        return [c for c in cells if c.kernel_name in mine]
    return list(cells[index - 1 :: count])
