"""Mutation score: known-bad kernels (patches/known-bad/<name>/) must each be caught by the
scenario families they declare.

A mutant is a quilt series (the default series plus one injected bug) and a `mutant.toml`
saying which families must break. Each mutant is built incrementally from the default build
(same build directory, only the touched files recompile), the families are run on it, and a
family "catches" the mutant when at least one of its tests fails, crashes or errors.
A baseline run of the unmutated default kernel first shows that those failures are the
mutant's doing: a family that fails on the baseline cannot catch anything.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.jobs import scenario_run
from harness.paths import PATCHES_DIR
from harness.results import report
from harness.results.outcome import BAD

KNOWN_BAD_DIR = PATCHES_DIR / "known-bad"
# the hand-written families (pytest markers, one per test module); the instruction sweep is
# run by the baseline only: per mutant it would add a minute and it declares no mechanism
FAMILIES = tuple(f for f in report.FAMILIES.values() if f != "sweep")
CAUGHT_OUTCOMES = BAD
_FIELDS = {"summary": str, "kernel": str, "mechanism": str, "file": str, "breaks": list}


class MutantError(HarnessError):
    """A known-bad series directory is malformed."""


@dataclass(frozen=True)
class Mutant:
    name: str
    directory: Path
    summary: str
    kernel: str
    mechanism: str
    file: str
    breaks: tuple[str, ...]


@dataclass
class FamilyVerdict:
    ran: bool = False
    caught: bool = False
    failing: list[str] = field(default_factory=list)   # "test name: first message line"
    harness_errors: list[str] = field(default_factory=list)   # not counted as catches


@dataclass
class MutantResult:
    name: str
    mechanism: str
    breaks: tuple[str, ...]
    build_seconds: float = 0.0
    build_cached: bool = False
    test_seconds: float = 0.0
    families: dict[str, FamilyVerdict] = field(default_factory=dict)
    error: str = ""

    @property
    def missed(self) -> list[str]:
        """Declared families that ran and did not catch the mutant."""
        return [f for f in self.breaks if self.families.get(f, FamilyVerdict()).ran
                and not self.families[f].caught]

    @property
    def ok(self) -> bool:
        return not self.error and not self.missed and all(
            self.families.get(f, FamilyVerdict()).ran for f in self.breaks)


def load_mutant(directory: Path) -> Mutant:
    spec_file = directory / "mutant.toml"
    if not spec_file.is_file():
        raise MutantError(f"{directory}: no mutant.toml. A known-bad series declares what it "
                          f"breaks in mutant.toml (summary, kernel, mechanism, file, breaks).")
    try:
        data = tomllib.loads(spec_file.read_text())
    except tomllib.TOMLDecodeError as error:
        raise MutantError(f"{spec_file}: not valid TOML: {error}.") from None
    for key, kind in _FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise MutantError(f"{spec_file}: '{key}' is missing or not a {kind.__name__}; "
                              f"a mutant.toml needs {', '.join(_FIELDS)}.")
    unknown = [f for f in data["breaks"] if f not in FAMILIES]
    if not data["breaks"] or unknown:
        raise MutantError(f"{spec_file}: 'breaks' must name at least one family out of "
                          f"{', '.join(FAMILIES)}; unknown: {', '.join(unknown) or 'none'}.")
    if not (directory / "series").is_file():
        raise MutantError(f"{directory}: no quilt 'series' file listing the patches.")
    mutant = Mutant(directory.name, directory, data["summary"], data["kernel"],
                    data["mechanism"], data["file"], tuple(data["breaks"]))
    _check_on_default_series(mutant)
    return mutant


def _check_on_default_series(mutant: Mutant) -> None:
    """A mutant is the kernel's default series plus the injected bug: its series must start
    with exactly the default series' patches (else it tests a different kernel)."""
    from harness.build import series, sources
    default_name = sources.parse_spec(mutant.kernel).default_series
    default = series.load_series(default_name)
    own = series.load_series(mutant.directory)
    prefix = tuple(p.text for p in own.patches[:len(default.patches)])
    if prefix != tuple(p.text for p in default.patches) or \
            len(own.patches) <= len(default.patches):
        raise MutantError(
            f"{mutant.directory / 'series'}: a known-bad series must list the default series "
            f"of {mutant.kernel} ({default_name}: {len(default.patches)} patches, in order) "
            f"and then at least one patch of its own; this one does not (stale after a "
            f"change to {default_name}?).")


def load_mutants(names: tuple[str, ...] = (), root: Path = KNOWN_BAD_DIR) -> list[Mutant]:
    available = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if names:
        by_name = {p.name: p for p in available}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MutantError(f"unknown mutant(s) {', '.join(missing)}; {root} has "
                              f"{', '.join(by_name) or 'none'}.")
        available = [by_name[n] for n in names]
    return [load_mutant(p) for p in available]


def classify(results: list[report.TestResult], families: tuple[str, ...]) \
        -> dict[str, FamilyVerdict]:
    verdicts = {f: FamilyVerdict() for f in families}
    for result in results:
        verdict = verdicts.get(result.family)
        if verdict is None:
            continue
        verdict.ran = True
        if _harness_failure(result):
            verdict.harness_errors.append(f"{result.name}: {result.message[:160]}")
            continue                  # the harness failed, not the kernel: no catch
        if result.outcome in CAUGHT_OUTCOMES:
            verdict.caught = True
            first = result.message.splitlines()[0] if result.message else result.outcome
            verdict.failing.append(f"{result.name}: {first[:160]}")
    return verdicts


# exceptions that mean the harness itself broke (a bug or the infrastructure), not the kernel
_HARNESS_EXCEPTIONS = frozenset({"InfraError", "ValueError", "KeyError",
                                 "TypeError", "AttributeError", "IndexError", "NameError",
                                 "ZeroDivisionError", "UnboundLocalError", "ImportError"})


def _harness_failure(result: report.TestResult) -> bool:
    """By the exception's class, which the plugin records; a message can quote the guest."""
    return result.outcome in ("failed", "error") and result.exception in _HARNESS_EXCEPTIONS


def selection(families: tuple[str, ...]) -> tuple[str, ...]:
    return ("-m", " or ".join(families))


@dataclass(frozen=True)
class RunOptions:
    results_dir: Path
    smp: str = "1,4"
    accel: str = "auto"
    scope: str = "all"               # "all" families, or only the "declared" ones
    jobs: int = 0


def run_suite(kernel: str, series: str | None, families: tuple[str, ...] | None, junit: Path,
              options: RunOptions) -> tuple[list[report.TestResult], float]:
    """Run the families' scenarios (None: the whole scenario suite, the instruction sweep
    included) in a pytest subprocess; return results and wall time."""
    cmd = scenario_run.pytest_command(kernel, junit, series=series, smp=options.smp,
                                      accel=options.accel,
                                      extra=(selection(families) if families else ()) + ("-q",))
    log = junit.with_suffix(".log")
    finished = scenario_run.run(cmd, junit, log=log)
    if not finished.has_results:
        raise HarnessError(f"pytest wrote no results for {junit.parent.name} (exit "
                           f"{finished.status}); see {log}.")
    return report.read_junit(junit), finished.seconds


def run_mutant(mutant: Mutant, options: RunOptions, note=print) -> MutantResult:
    from harness.build import kernel
    result = MutantResult(mutant.name, mutant.mechanism, mutant.breaks)
    families = FAMILIES if options.scope == "all" else mutant.breaks
    start = time.monotonic()
    try:
        built = kernel.build(kernel.BuildRequest(kernel=mutant.kernel,
                                                 series=str(mutant.directory),
                                                 jobs=options.jobs))
    except HarnessError as error:
        result.error = f"build failed: {error}"
        return result
    result.build_seconds = time.monotonic() - start
    result.build_cached = built.cached
    note(f"mutant {mutant.name}: built in {result.build_seconds:.1f}s"
         f"{' (cached)' if built.cached else ''}; running {', '.join(families)}")
    junit = options.results_dir / mutant.name / "junit.xml"
    try:
        tests, result.test_seconds = run_suite(mutant.kernel, str(mutant.directory), families,
                                               junit, options)
    except HarnessError as error:
        result.error = str(error)
        return result
    result.families = classify(tests, families)
    return result


@dataclass
class Baseline:
    runs: int = 0
    tests_per_run: list[int] = field(default_factory=list)
    unexpected: list[list[str]] = field(default_factory=list)   # per run: failing tests
    seconds: list[float] = field(default_factory=list)

    @property
    def flake_rate(self) -> float:
        total = sum(self.tests_per_run)
        return sum(len(u) for u in self.unexpected) / total if total else 0.0

    @property
    def clean(self) -> bool:
        return self.runs > 0 and not any(self.unexpected)


def run_baseline(kernel: str, runs: int, options: RunOptions, note=print) -> Baseline:
    """The unmutated default kernel + default series, the full scenario suite (the sweep
    included), `runs` times."""
    baseline = Baseline()
    for index in range(1, runs + 1):
        junit = options.results_dir / "baseline" / f"run{index}" / "junit.xml"
        tests, seconds = run_suite(kernel, None, None, junit, options)
        failing = [f"{t.name}: {(t.message.splitlines() or [t.outcome])[0][:160]}"
                   for t in tests if t.outcome in CAUGHT_OUTCOMES]
        baseline.runs += 1
        baseline.tests_per_run.append(len(tests))
        baseline.unexpected.append(failing)
        baseline.seconds.append(seconds)
        note(f"baseline run {index}/{runs}: {len(tests)} tests, {len(failing)} unexpected "
             f"failure(s), {seconds:.0f}s")
    return baseline


def format_table(results: list[MutantResult]) -> str:
    """mutant x family: CAUGHT / missed / '-' (not run); '*' marks declared families."""
    width = max([28] + [len(r.name) + 2 for r in results])
    head = (f"{'mutant':<{width}}{'build s':>8}{'test s':>8}  "
            + "".join(f"{f:<10}" for f in FAMILIES))
    lines = [head, "-" * len(head)]
    for r in results:
        cells = []
        for family in FAMILIES:
            verdict = r.families.get(family)
            text = "-" if verdict is None or not verdict.ran else \
                "CAUGHT" if verdict.caught else "missed"
            cells.append(f"{text + ('*' if family in r.breaks else ''):<10}")
        lines.append(f"{r.name:<{width}}{r.build_seconds:>8.1f}{r.test_seconds:>8.0f}  "
                     + "".join(cells) + (f"  ERROR: {r.error[:80]}" if r.error else ""))
    lines.append("* = declared in mutant.toml; every declared family must catch its mutant")
    for r in results:
        for family in FAMILIES:
            verdict = r.families.get(family)
            if verdict and verdict.caught:
                shown = verdict.failing[:3]
                more = len(verdict.failing) - len(shown)
                lines.append(f"  {r.name} / {family}: {len(verdict.failing)} failing: "
                             + "; ".join(s.split(':', 1)[0] for s in shown)
                             + (f" (+{more} more)" if more > 0 else ""))
    return "\n".join(lines)


def format_markdown(results: list[MutantResult]) -> str:
    lines = ["| mutant | mechanism | build s | " + " | ".join(FAMILIES) + " |",
             "|---|---|---:|" + "---|" * len(FAMILIES)]
    for r in results:
        cells = []
        for family in FAMILIES:
            verdict = r.families.get(family)
            text = "–" if verdict is None or not verdict.ran else \
                f"caught ({len(verdict.failing)})" if verdict.caught else "missed"
            cells.append(f"**{text}**" if family in r.breaks else text)
        lines.append(f"| `{r.name}` | {r.mechanism} | {r.build_seconds:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: list[MutantResult], baseline: Baseline | None, path: Path) -> None:
    data = {"mutants": [asdict(r) | {"ok": r.ok, "missed": r.missed} for r in results],
            "baseline": asdict(baseline) | {"flake_rate": baseline.flake_rate}
            if baseline else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
