"""Mutation score: known-bad kernels (patches/known-bad/<name>/) must each be caught by the
scenario families they declare.

A mutant is a quilt series (the default series plus one injected bug) and a `mutant.toml`
saying which families must break. Each mutant is built incrementally from the default build
(same build directory, only the touched files recompile), the families are run on it, and a
family "catches" the mutant when at least one of its tests fails, crashes or errors.
A baseline run of the unmutated default kernel first shows that those failures are the
mutant's doing: a family that fails on the baseline cannot catch anything.

With `--scope declared` a mutant's `run_first` tests (mutant.toml: tests that caught it
before) run first, alone; a declared family one of them catches is done, and only the
families they did not catch run in full. The verdict is the same as a full run's (a family
catches when one of its tests fails), found sooner: mutation tools call this running the
killing tests first. A stale list costs time, never a verdict.

Each mutant's result is saved in the results directory as it finishes
(`<name>/result.json`); `--resume` with the same `--results` takes a saved result instead of
running the mutant again when its patches and the run's options are the same, so a
`--scope all` table (hours on a small host) can be made over several sittings.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import data
from harness.errors import HarnessError
from harness.jobs import scenario_run
from harness.paths import PATCHES_DIR
from harness.results import families as family_data
from harness.results import report
from harness.results.outcome import BAD

log = logging.getLogger(__name__)

KNOWN_BAD_DIR = PATCHES_DIR / "known-bad"
# the hand-written families (families.toml, one per test module); the instruction sweep is
# run by the baseline only: per mutant it would add a minute and it declares no mechanism
FAMILIES = family_data.mutable()
CAUGHT_OUTCOMES = BAD


class MutantError(HarnessError):
    """A known-bad series directory is malformed (a malformed mutant.toml: data.DataError)."""


class _MutantFile(data.Spec):
    """mutant.toml: what a known-bad series breaks."""

    summary: str
    kernel: str  # the kernel spec whose default series it extends
    mechanism: str
    file: str  # the kernel file the injected bug is in
    breaks: list[str]  # families that must catch it
    run_first: list[str] = []  # node ids under testcases/ that caught it before


@dataclass(frozen=True)
class Mutant:
    name: str
    directory: Path
    summary: str
    kernel: str
    mechanism: str
    file: str
    breaks: tuple[str, ...]
    run_first: tuple[str, ...] = ()


@dataclass
class FamilyVerdict:
    ran: bool = False
    caught: bool = False
    by_run_first: bool = False  # caught by the mutant's run_first tests alone
    failing: list[str] = field(default_factory=list)  # "test name: first message line"
    harness_errors: list[str] = field(default_factory=list)  # not counted as catches


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
    resumed_from: str = ""  # the harness version of the run whose saved result this is

    @property
    def missed(self) -> list[str]:
        """Declared families that ran and did not catch the mutant."""
        return [
            f
            for f in self.breaks
            if self.families.get(f, FamilyVerdict()).ran and not self.families[f].caught
        ]

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and not self.missed
            and all(self.families.get(f, FamilyVerdict()).ran for f in self.breaks)
        )


def load_mutant(directory: Path) -> Mutant:
    spec_file = directory / "mutant.toml"
    if not spec_file.is_file():
        raise MutantError(
            f"{directory}: no mutant.toml. A known-bad series declares what it "
            f"breaks in mutant.toml (summary, kernel, mechanism, file, breaks)."
        )
    spec = data.load(spec_file, _MutantFile)
    unknown = [f for f in spec.breaks if f not in FAMILIES]
    if not spec.breaks or unknown:
        raise data.error(
            spec_file,
            "top level",
            f"breaks: must name at least one family out "
            f"of {', '.join(FAMILIES)}; unknown: "
            f"{', '.join(unknown) or 'none'}.",
        )
    _check_run_first(spec_file, spec)
    if not (directory / "series").is_file():
        raise MutantError(f"{directory}: no quilt 'series' file listing the patches.")
    mutant = Mutant(
        directory.name,
        directory,
        spec.summary,
        spec.kernel,
        spec.mechanism,
        spec.file,
        tuple(spec.breaks),
        tuple(spec.run_first),
    )
    _check_on_default_series(mutant)
    return mutant


def run_first_family(node_id: str) -> str | None:
    """The family of a run_first entry ("test_threads.py::name[id]" -> "threads")."""
    module = node_id.split("::", 1)[0].removesuffix(".py")
    return family_data.by_module().get(module) if "::" in node_id else None


def _check_run_first(spec_file: Path, spec: _MutantFile) -> None:
    for index, node_id in enumerate(spec.run_first):
        family = run_first_family(node_id)
        if family not in spec.breaks:
            raise data.error(
                spec_file,
                f"run_first[{index}]",
                f"{node_id!r} is not a test of a declared family: write "
                f"MODULE.py::TEST[ID] of testcases/ for one of {', '.join(spec.breaks)}.",
            )


def _check_on_default_series(mutant: Mutant) -> None:
    """A mutant is the kernel's default series plus the injected bug: its series must start
    with exactly the default series' patches (else it tests a different kernel)."""
    from harness.build import series, sources

    default_name = sources.parse_spec(mutant.kernel).default_series
    default = series.load_series(default_name)
    own = series.load_series(mutant.directory)
    prefix = tuple(p.text for p in own.patches[: len(default.patches)])
    if prefix != tuple(p.text for p in default.patches) or len(own.patches) <= len(default.patches):
        raise MutantError(
            f"{mutant.directory / 'series'}: a known-bad series must list the default series "
            f"of {mutant.kernel} ({default_name}: {len(default.patches)} patches, in order) "
            f"and then at least one patch of its own; this one does not (stale after a "
            f"change to {default_name}?)."
        )


def load_mutants(names: tuple[str, ...] = (), root: Path = KNOWN_BAD_DIR) -> list[Mutant]:
    available = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if names:
        by_name = {p.name: p for p in available}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MutantError(
                f"unknown mutant(s) {', '.join(missing)}; {root} has "
                f"{', '.join(by_name) or 'none'}."
            )
        available = [by_name[n] for n in names]
    return [load_mutant(p) for p in available]


def classify(
    results: list[report.TestResult], families: tuple[str, ...]
) -> dict[str, FamilyVerdict]:
    verdicts = {f: FamilyVerdict() for f in families}
    for result in results:
        verdict = verdicts.get(result.family)
        if verdict is None:
            continue
        verdict.ran = True
        if _harness_failure(result):
            verdict.harness_errors.append(f"{result.name}: {result.message[:160]}")
            continue  # the harness failed, not the kernel: no catch
        if result.outcome in CAUGHT_OUTCOMES:
            verdict.caught = True
            first = result.message.splitlines()[0] if result.message else result.outcome
            verdict.failing.append(f"{result.name}: {first[:160]}")
    return verdicts


# exceptions that mean the harness itself broke (a bug or the infrastructure), not the kernel
_HARNESS_EXCEPTIONS = frozenset(
    {
        "InfraError",
        "ValueError",
        "KeyError",
        "TypeError",
        "AttributeError",
        "IndexError",
        "NameError",
        "ZeroDivisionError",
        "UnboundLocalError",
        "ImportError",
    }
)


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
    scope: str = "all"  # "all" families, or only the "declared" ones
    jobs: int = 0
    run_first: bool = True  # with scope "declared": the mutants' run_first tests first
    resume: bool = False  # take a mutant's saved result when its fingerprint matches


RESULT_FILE = "result.json"


def fingerprint(mutant: Mutant, options: RunOptions) -> dict:
    """What a saved result must share with this run to be taken instead of running the
    mutant: its patches (the whole series, in order) and mutant.toml, and the options that
    change verdicts."""
    from harness.build import series

    digest = hashlib.sha256()
    for patch in series.load_series(mutant.directory).patches:
        digest.update(patch.text + b"\0")
    digest.update((mutant.directory / "mutant.toml").read_bytes())
    return {
        "mutant": mutant.name,
        "patches_and_spec": digest.hexdigest()[:16],
        "scope": options.scope,
        "smp": options.smp,
        "accel": options.accel,
        "run_first": options.run_first if options.scope == "declared" else None,
    }


def save_result(result: MutantResult, mutant: Mutant, options: RunOptions) -> None:
    from harness.version import harness_version

    path = options.results_dir / mutant.name / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint(mutant, options),
        "harness_version": harness_version(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "result": asdict(result),
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def saved_result(mutant: Mutant, options: RunOptions) -> MutantResult | None:
    """The mutant's saved result in the results directory, if it was made with the same
    fingerprint and has no error (an error, e.g. a failed build, is worth another try)."""
    path = options.results_dir / mutant.name / RESULT_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if payload.get("fingerprint") != fingerprint(mutant, options):
        return None
    fields = payload.get("result") or {}
    if fields.get("error"):
        return None
    try:
        families = {
            name: FamilyVerdict(**verdict) for name, verdict in fields.pop("families").items()
        }
        result = MutantResult(**(fields | {"breaks": tuple(fields["breaks"])}))
    except (KeyError, TypeError):
        return None
    result.families = families
    result.resumed_from = payload.get("harness_version", "")
    return result


def run_suite(
    kernel: str,
    series: str | None,
    families: tuple[str, ...] | None,
    junit: Path,
    options: RunOptions,
    node_ids: tuple[str, ...] = (),
) -> tuple[list[report.TestResult], float]:
    """Run the families' scenarios (None: the whole scenario suite, the instruction sweep
    included), or only the given node ids under testcases/, in a pytest subprocess; return
    results and wall time."""
    cmd = scenario_run.pytest_command(
        kernel,
        junit,
        series=series,
        smp=options.smp,
        accel=options.accel,
        extra=(selection(families) if families else ()) + ("-q",),
        targets=tuple(f"testcases/{n}" for n in node_ids) or ("testcases",),
    )
    log_path = junit.with_suffix(".log")
    finished = scenario_run.run(cmd, junit, log=log_path)
    if not finished.has_results:
        raise HarnessError(
            f"pytest wrote no results for {junit.parent.name} (exit "
            f"{finished.status}); see {log_path}."
        )
    return report.read_junit(junit), finished.seconds


def run_mutant(mutant: Mutant, options: RunOptions) -> MutantResult:
    """The mutant's result: a saved one (with options.resume, see saved_result()), or built
    and run now and saved."""
    if options.resume:
        saved = saved_result(mutant, options)
        if saved is not None:
            log.info(f"mutant {mutant.name}: the saved result ({saved.resumed_from})")
            return saved
    result = _build_and_run(mutant, options)
    save_result(result, mutant, options)
    return result


def _build_and_run(mutant: Mutant, options: RunOptions) -> MutantResult:
    from harness.build import kernel

    result = MutantResult(mutant.name, mutant.mechanism, mutant.breaks)
    families = FAMILIES if options.scope == "all" else mutant.breaks
    start = time.monotonic()
    try:
        built = kernel.build(
            kernel.BuildRequest(
                kernel=mutant.kernel, series=str(mutant.directory), jobs=options.jobs
            )
        )
    except HarnessError as error:
        result.error = f"build failed: {error}"
        return result
    result.build_seconds = time.monotonic() - start
    result.build_cached = built.cached
    log.info(
        f"mutant {mutant.name}: built in {result.build_seconds:.1f}s"
        f"{' (cached)' if built.cached else ''}; running {', '.join(families)}"
    )
    directory = options.results_dir / mutant.name
    verdicts: dict[str, FamilyVerdict] = {}
    try:
        if options.scope == "declared" and options.run_first and mutant.run_first:
            verdicts = _run_first(mutant, directory / "run-first" / "junit.xml", options, result)
        rest = tuple(f for f in families if not verdicts.get(f, FamilyVerdict()).caught)
        if rest:
            tests, seconds = run_suite(
                mutant.kernel, str(mutant.directory), rest, directory / "junit.xml", options
            )
            result.test_seconds += seconds
            verdicts.update(classify(tests, rest))
    except HarnessError as error:
        result.error = str(error)
        return result
    result.families = {f: verdicts[f] for f in families}
    return result


def _run_first(
    mutant: Mutant, junit: Path, options: RunOptions, result: MutantResult
) -> dict[str, FamilyVerdict]:
    """The mutant's run_first tests alone: the declared families they catch. A run that
    wrote no results (an id this --smp does not generate) catches nothing."""
    try:
        tests, seconds = run_suite(
            mutant.kernel, str(mutant.directory), None, junit, options, mutant.run_first
        )
    except HarnessError as error:
        log.warning(f"mutant {mutant.name}: run_first gave no verdict ({error}); full families")
        return {}
    result.test_seconds += seconds
    verdicts = classify(tests, mutant.breaks)
    for verdict in verdicts.values():
        verdict.by_run_first = verdict.caught
    return {f: v for f, v in verdicts.items() if v.caught}


@dataclass
class Baseline:
    runs: int = 0
    tests_per_run: list[int] = field(default_factory=list)
    unexpected: list[list[str]] = field(default_factory=list)  # per run: failing tests
    seconds: list[float] = field(default_factory=list)
    kernel: str = ""  # the kernel spec it ran
    series: str = ""  # the series it ran ("" : the kernel's default series)

    @property
    def flake_rate(self) -> float:
        total = sum(self.tests_per_run)
        return sum(len(u) for u in self.unexpected) / total if total else 0.0

    @property
    def clean(self) -> bool:
        return self.runs > 0 and not any(self.unexpected)


def run_baseline(
    kernel: str, runs: int, options: RunOptions, series: str | None = None
) -> Baseline:
    """The unmutated kernel + its default series (or `series`: "none" for the stock kernel),
    the full scenario suite (the sweep included), `runs` times. A known bug of that kernel
    (known_bugs.toml) is an XFAIL, so not an unexpected failure."""
    baseline = Baseline(kernel=kernel, series=series or "")
    for index in range(1, runs + 1):
        junit = options.results_dir / "baseline" / f"run{index}" / "junit.xml"
        tests, seconds = run_suite(kernel, series, None, junit, options)
        failing = [
            f"{t.name}: {(t.message.splitlines() or [t.outcome])[0][:160]}"
            for t in tests
            if t.outcome in CAUGHT_OUTCOMES
        ]
        baseline.runs += 1
        baseline.tests_per_run.append(len(tests))
        baseline.unexpected.append(failing)
        baseline.seconds.append(seconds)
        log.info(
            f"baseline run {index}/{runs}: {len(tests)} tests, {len(failing)} "
            f"unexpected failure(s), {seconds:.0f}s"
        )
    return baseline


def format_table(results: list[MutantResult]) -> str:
    """mutant x family: CAUGHT / missed / '-' (not run); '*' marks declared families."""
    width = max([28] + [len(r.name) + 2 for r in results])
    head = f"{'mutant':<{width}}{'build s':>8}{'test s':>8}  " + "".join(
        f"{f:<10}" for f in FAMILIES
    )
    lines = [head, "-" * len(head)]
    for r in results:
        cells = []
        for family in FAMILIES:
            verdict = r.families.get(family)
            text = (
                "-"
                if verdict is None or not verdict.ran
                else "CAUGHT"
                if verdict.caught
                else "missed"
            )
            cells.append(f"{text + ('*' if family in r.breaks else ''):<10}")
        lines.append(
            f"{r.name:<{width}}{r.build_seconds:>8.1f}{r.test_seconds:>8.0f}  "
            + "".join(cells)
            + (f"  ERROR: {r.error[:80]}" if r.error else "")
        )
    lines.append("* = declared in mutant.toml; every declared family must catch its mutant")
    for r in results:
        for family in FAMILIES:
            verdict = r.families.get(family)
            if verdict and verdict.caught:
                shown = verdict.failing[:3]
                more = len(verdict.failing) - len(shown)
                lines.append(
                    f"  {r.name} / {family}: {len(verdict.failing)} failing"
                    f"{' (run first)' if verdict.by_run_first else ''}: "
                    + "; ".join(s.split(":", 1)[0] for s in shown)
                    + (f" (+{more} more)" if more > 0 else "")
                )
    return "\n".join(lines)


def format_markdown(results: list[MutantResult]) -> str:
    lines = [
        "| mutant | mechanism | build s | " + " | ".join(FAMILIES) + " |",
        "|---|---|---:|" + "---|" * len(FAMILIES),
    ]
    for r in results:
        cells = []
        for family in FAMILIES:
            verdict = r.families.get(family)
            text = (
                "–"
                if verdict is None or not verdict.ran
                else f"caught ({len(verdict.failing)})"
                if verdict.caught
                else "missed"
            )
            cells.append(f"**{text}**" if family in r.breaks else text)
        lines.append(
            f"| `{r.name}` | {r.mechanism} | {r.build_seconds:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def write_json(results: list[MutantResult], baseline: Baseline | None, path: Path) -> None:
    payload = {
        "mutants": [asdict(r) | {"ok": r.ok, "missed": r.missed} for r in results],
        "baseline": asdict(baseline) | {"flake_rate": baseline.flake_rate} if baseline else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# -- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MutateRequest:
    mutants: tuple[str, ...] = ()  # names under patches/known-bad/ (all)
    results_dir: Path | None = None  # default results/mutate-TIMESTAMP
    smp: str = "1,4"
    accel: str = "auto"
    scope: str = "all"  # "all" families, or only the "declared" ones
    jobs: int = 0
    baseline_runs: int = 0
    run_first: bool = True
    baseline_kernel: str | None = None  # default: the mutants' kernel
    baseline_series: str | None = None  # default: that kernel's default series
    baseline_only: bool = False  # run the baseline and no mutant
    resume: bool = False  # take the saved results in results_dir (see saved_result())
    saved_only: bool = False  # run nothing: the table of the saved results, what is left


@dataclass
class MutateOutcome:
    results: list[MutantResult]
    baseline: Baseline | None
    seconds: float
    results_dir: Path
    pending: list[str] = field(default_factory=list)  # saved_only: mutants without a result

    @property
    def failed(self) -> list[MutantResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and (self.baseline is None or self.baseline.clean)

    def problems(self) -> list[str]:
        lines = [
            f"mutant {r.name}: "
            + (r.error or f"not caught by {', '.join(r.missed) or 'a declared family (not run)'}")
            for r in self.failed
        ]
        if self.baseline and not self.baseline.clean:
            lines.append(
                "the baseline kernel has unexpected failures"
                + (": the mutation table cannot be trusted" if self.results else "")
            )
        return lines


def run(request: MutateRequest) -> MutateOutcome:
    """Build every mutant, run its families; optionally the unmutated baseline first.
    Writes mutate.json and mutate.md into the results directory."""
    if request.baseline_runs < 0:
        raise HarnessError(
            f"mutate: --baseline-runs must be 0 or more, not {request.baseline_runs}."
        )
    if request.baseline_only and (request.mutants or request.baseline_runs < 1):
        raise HarnessError(
            "mutate --baseline-only runs the unmutated kernel alone: give --baseline-runs N "
            "(at least 1) and no mutant names."
        )
    if (request.baseline_kernel or request.baseline_series) and not request.baseline_only:
        raise HarnessError(
            "mutate: --baseline-kernel and --baseline-series go with --baseline-only; a "
            "mutation run's baseline is its mutants' own kernel and default series (else "
            "it would not show that their failures are the mutants' doing)."
        )
    if request.resume and (request.results_dir is None or request.baseline_only):
        raise HarnessError(
            "mutate --resume takes the mutants' saved results from an earlier run's results "
            "directory: give it with --results DIR (the baseline is not resumed)."
        )
    if request.saved_only and (request.results_dir is None or request.baseline_runs):
        raise HarnessError(
            "mutate --saved-only prints the mutants' saved results of an earlier run's "
            "results directory and runs nothing: give it with --results DIR and without "
            "--baseline-runs."
        )
    mutants = [] if request.baseline_only else load_mutants(request.mutants)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = (request.results_dir or Path("results") / f"mutate-{stamp}").resolve()
    options = RunOptions(
        results_dir,
        request.smp,
        request.accel,
        request.scope,
        request.jobs,
        request.run_first,
        request.resume,
    )
    start = time.monotonic()
    if request.saved_only:
        saved = {m.name: saved_result(m, options) for m in mutants}
        return MutateOutcome(
            [r for r in saved.values() if r is not None],
            None,
            time.monotonic() - start,
            results_dir,
            pending=[name for name, r in saved.items() if r is None],
        )
    baseline = None
    if request.baseline_runs:
        kernels = sorted({m.kernel for m in mutants}) or ["debian:6.1"]
        baseline = run_baseline(
            request.baseline_kernel or kernels[0],
            request.baseline_runs,
            options,
            request.baseline_series,
        )
    results = [run_mutant(mutant, options) for mutant in mutants]
    outcome = MutateOutcome(results, baseline, time.monotonic() - start, results_dir)
    write_json(results, baseline, results_dir / "mutate.json")
    if results:
        (results_dir / "mutate.md").write_text(format_markdown(results) + "\n")
    return outcome


def format_outcome(outcome: MutateOutcome) -> str:
    lines = [format_table(outcome.results)] if outcome.results else []
    resumed = [r for r in outcome.results if r.resumed_from]
    if resumed:
        versions = sorted({r.resumed_from for r in resumed})
        lines.append(
            f"{len(resumed)} of {len(outcome.results)} mutant(s) from saved results "
            f"(harness {', '.join(versions)}): {', '.join(r.name for r in resumed)}"
        )
    if outcome.pending:
        lines.append(
            f"{len(outcome.results)} of {len(outcome.results) + len(outcome.pending)} "
            f"mutants have a saved result; still to run: {', '.join(outcome.pending)}"
        )
    baseline = outcome.baseline
    if baseline:
        lines.append(
            f"baseline ({baseline.kernel}, series {baseline.series or 'default'}): "
            f"{baseline.runs} run(s) of "
            f"{max(baseline.tests_per_run, default=0)} tests, "
            f"{sum(map(len, baseline.unexpected))} unexpected failure(s), flake rate "
            f"{baseline.flake_rate:.2%}"
        )
        for index, failing in enumerate(baseline.unexpected, start=1):
            lines.extend(f"  baseline run {index}: {line}" for line in failing)
    lines.append(f"total {outcome.seconds / 60:.1f} min; results {outcome.results_dir}")
    return "\n".join(lines)
