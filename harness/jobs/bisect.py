"""Bisect: find the commit that broke (or, with find_fix, fixed) a scenario selection.

`git bisect` runs in a private `--shared --no-checkout` clone in the cache, so the user's
checkout, HEAD, index and own bisect state are never touched. Each step builds the commit
through harness.build.kernel (one incremental build directory per source family) and runs the
pytest selection as a subprocess, K times with repeat=K. Verdicts:

  good  the selection passes (every run)           git: good / fixed   bisect-step: exit 0 / 1
  bad   the original failure (same tests, same     git: bad / broken   bisect-step: exit 1 / 0
        crash titles as at the --bad endpoint)
  skip  build failure, series does not apply, no   git: skip           bisect-step: exit 125
        boot, or a different failure

(the second value of each pair is --find-fix mode). Infrastructure errors abort: `bisect`
resets its private clone, reports and exits EXIT_ABORT; `bisect-step` exits STEP_ABORT, the
lowest code `git bisect run` treats as "abort" (>= 128) and not a 128+signal death status.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from harness.errors import (
    BuildError,
    ConfigError,
    HarnessError,
    InfraError,
    PatchError,
    SourceError,
)
from harness.jobs import scenario_run
from harness.paths import cache_dir
from harness.results import report
from harness.results.outcome import FAILING as FAILING_OUTCOMES

log = logging.getLogger(__name__)

EXIT_FOUND, EXIT_ABORT, EXIT_ENDPOINT, EXIT_INCONCLUSIVE = 0, 3, 4, 5
STEP_GOOD, STEP_BAD, STEP_SKIP, STEP_ABORT = 0, 1, 125, 128
FAILING = tuple(o.value for o in FAILING_OUTCOMES)
SKIP_ERRORS = {
    BuildError: "build failed",
    PatchError: "patch series does not apply",
    ConfigError: "config fragment does not apply",
}
_FOUND = re.compile(r"^([0-9a-f]{40}) is the first (\w+) commit$", re.M)
_SHA_LINE = re.compile(r"^[0-9a-f]{40}$", re.M)


class AbortBisect(HarnessError):
    """A problem that makes every step meaningless (no scenario selected, pytest misused)."""


Failure = tuple[str, str]  # (test node id, crash title or "")


@dataclass(frozen=True)
class Run:
    """One pytest run of the selection on one kernel."""

    kind: str  # "pass" | "fail" | "untestable"
    failures: frozenset[Failure] = frozenset()
    detail: str = ""  # why untestable, or the failing output excerpt
    seconds: float = 0.0


@dataclass(frozen=True)
class Built:
    commit: str
    image_sha256: str
    spec: str = ""


@dataclass(frozen=True)
class StepResult:
    commit: str
    subject: str
    verdict: str  # "good" | "bad" | "skip"
    reason: str
    build_seconds: float = 0.0
    test_seconds: float = 0.0
    runs: tuple[Run, ...] = ()
    flaky: bool = False
    image_sha256: str = ""
    role: str = "step"  # "bad endpoint" | "good endpoint" | "step"

    @property
    def excerpt(self) -> str:
        return next((r.detail for r in self.runs if r.kind == "fail"), "")


@dataclass(frozen=True)
class BisectOutcome:
    status: str  # "found" | "inconclusive" | "endpoint" | "aborted"
    find_fix: bool
    message: str = ""
    culprit: str = ""
    subject: str = ""
    candidates: tuple[str, ...] = ()
    steps: tuple[StepResult, ...] = ()
    excerpt: str = ""
    same_image_as_parent: bool | None = None
    log: Path | None = None


@dataclass(frozen=True)
class ScenarioOptions:
    repo: Path
    series: str | None = None
    fragments: tuple[str, ...] = ()
    smp: str = "1,4"
    accel: str = "auto"
    repeat: int = 1
    selection: tuple[str, ...] = ()
    jobs: int = 0


@dataclass(frozen=True)
class BisectRequest:
    good: str
    bad: str
    options: ScenarioOptions
    results_dir: Path
    find_fix: bool = False


class Runner(Protocol):
    def build(self, sha: str) -> Built: ...
    def test(self, built: Built, index: int) -> Run: ...


# -- verdicts (pure) ---------------------------------------------------------------------------


def failures_of(results: list[report.TestResult]) -> frozenset[Failure]:
    return frozenset(
        (
            f"{r.module}::{r.name}",
            r.message.splitlines()[0] if r.outcome == "crashed" and r.message else "",
        )
        for r in results
        if r.outcome in FAILING
    )


def _excerpt(results: list[report.TestResult], lines: int = 20) -> str:
    parts = [
        f"{r.outcome.upper()} {r.module}::{r.name}\n" + "\n".join(r.message.splitlines()[:lines])
        for r in results
        if r.outcome in FAILING + ("error",)
    ]
    return "\n".join(parts[:3])


def classify_run(results: list[report.TestResult] | None, status: int, seconds: float = 0.0) -> Run:
    """One pytest run -> Run. Raises InfraError/AbortBisect when no step can be judged."""
    errors = [r for r in results or [] if r.outcome == "error"]
    infra = [
        r for r in results or [] if r.outcome in ("error", "failed") and r.exception == "InfraError"
    ]
    if infra:
        raise InfraError(f"{infra[0].module}::{infra[0].name}: {infra[0].message}")
    if status == 3:
        return Run(
            "untestable", detail="the kernel fixture gave up (pytest exit 3)", seconds=seconds
        )
    if results is None:
        raise InfraError(f"pytest wrote no JUnit file (exit {status})")
    if status in (2, 4, 5):
        raise AbortBisect(
            {
                2: "pytest was interrupted or could not collect the scenarios",
                4: "pytest usage error: check the selection after --",
                5: "the selection matches no scenario",
            }[status]
        )
    failures = failures_of(results)
    if failures:
        return Run("fail", failures, _excerpt(results), seconds)
    if errors:
        booted = not any(r.exception == "BootError" for r in errors)
        why = "setup error" if booted else "did not boot"
        return Run("untestable", detail=f"{why}: {_excerpt(errors, 5)}", seconds=seconds)
    if status != 0:
        return Run(
            "untestable", detail=f"pytest exit {status} without a failing test", seconds=seconds
        )
    return Run("pass", seconds=seconds)


def skip_reason(error: BaseException) -> str | None:
    """The skip reason for an exception raised while building a step, None = abort."""
    return next((why for cls, why in SKIP_ERRORS.items() if isinstance(error, cls)), None)


def run_kind(run: Run, reference: frozenset[Failure] | None) -> str:
    """ "pass", "untestable", "match" (the original failure) or "different"."""
    if run.kind != "fail":
        return run.kind
    return "match" if reference is None or run.failures <= reference else "different"


def vote(runs: list[Run], reference: frozenset[Failure] | None) -> tuple[str, str, bool]:
    """(verdict, reason, flaky): bad if any run shows the original failure, good only if
    every run passes, else skip."""
    kinds = [run_kind(r, reference) for r in runs]
    flaky = len(set(kinds)) > 1
    count = f" in {kinds.count('match')}/{len(kinds)} runs" if flaky else ""
    if "match" in kinds:
        return "bad", "original failure" + count, flaky
    if kinds and all(k == "pass" for k in kinds):
        return (
            "good",
            "passed" + (f" {len(kinds)}/{len(kinds)} runs" if len(kinds) > 1 else ""),
            flaky,
        )
    if "different" in kinds:
        run = runs[kinds.index("different")]
        tests = ", ".join(
            sorted(f"{n} ({t})" if t else n for n, t in run.failures - (reference or frozenset()))
        )
        return "skip", f"different failure: {tests}", flaky
    return "skip", next((r.detail.splitlines()[0] for r in runs if r.detail), "untestable"), flaky


def git_term(verdict: str, find_fix: bool) -> str:
    if verdict == "skip":
        return "skip"
    if find_fix:
        return "broken" if verdict == "bad" else "fixed"
    return verdict


def step_exit_code(verdict: str, find_fix: bool) -> int:
    """`git bisect run` codes: 0 = old (good / broken), 1 = new (bad / fixed), 125 = skip."""
    if verdict == "skip":
        return STEP_SKIP
    return STEP_GOOD if git_term(verdict, find_fix) in ("good", "broken") else STEP_BAD


def parse_bisect_output(text: str) -> tuple[str, str, tuple[str, ...]]:
    """git bisect start/good/bad/skip output -> ("found", sha, ()), ("inconclusive", "",
    candidates) or ("next", "", ())."""
    found = _FOUND.search(text)
    if found:
        return "found", found.group(1), ()
    if "only 'skip'ped commits left" in text:
        return "inconclusive", "", tuple(_SHA_LINE.findall(text))
    return "next", "", ()


def exit_code(outcome: BisectOutcome) -> int:
    return {
        "found": EXIT_FOUND,
        "aborted": EXIT_ABORT,
        "endpoint": EXIT_ENDPOINT,
        "inconclusive": EXIT_INCONCLUSIVE,
    }[outcome.status]


# -- one step ----------------------------------------------------------------------------------


def evaluate(
    runner: Runner,
    sha: str,
    subject: str,
    reference: frozenset[Failure] | None,
    repeat: int = 1,
    early_stop: bool = True,
) -> StepResult:
    """Build and test one commit. Raises for errors that must abort the bisect."""
    started = time.monotonic()
    try:
        built = runner.build(sha)
    except HarnessError as error:
        why = skip_reason(error)
        if why is None:
            raise
        return StepResult(
            sha,
            subject,
            "skip",
            f"{why}: {str(error).splitlines()[0][:120]}",
            build_seconds=time.monotonic() - started,
        )
    build_seconds = time.monotonic() - started
    runs: list[Run] = []
    for index in range(max(1, repeat)):
        runs.append(runner.test(built, index))
        if early_stop and run_kind(runs[-1], reference) == "match":
            break
    verdict, reason, flaky = vote(runs, reference)
    return StepResult(
        sha,
        subject,
        verdict,
        reason,
        build_seconds,
        time.monotonic() - started - build_seconds,
        tuple(runs),
        flaky,
        built.image_sha256,
    )


# -- git ---------------------------------------------------------------------------------------


def _git(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["git", *args],
        cwd=tree,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C", "LANGUAGE": "C"},
    )
    if check and result.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {tree}: {result.stderr.strip()}")
    return result


def resolve(repo: Path, rev: str) -> str:
    result = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if result.returncode != 0:
        raise SourceError(f"'{rev}' is not a commit in {repo}.")
    return result.stdout.strip()


def subject_of(repo: Path, sha: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", sha, check=False).stdout.strip()


@contextmanager
def private_clone(repo: Path):
    """A fresh `--shared --no-checkout` clone of repo for git bisect state, locked against a
    second bisect of the same repo; `git bisect reset` on the way out, whatever happens."""
    key = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:12]
    clone = cache_dir("bisect") / key
    with open(cache_dir("locks") / f"bisect-{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(f"another bisect of {repo} is running (clone {clone})") from None
        shutil.rmtree(clone, ignore_errors=True)
        _git(clone.parent, "clone", "-q", "--shared", "--no-checkout", str(repo), str(clone))
        try:
            yield clone
        finally:
            _git(clone, "bisect", "reset", check=False)


# -- the driver --------------------------------------------------------------------------------


def _note(message: str) -> None:
    log.info(f"bisect: {message}")


@dataclass
class _Bisection:
    request: BisectRequest
    runner: Runner
    clone: Path
    steps: list[StepResult] = field(default_factory=list)
    reference: frozenset[Failure] | None = None
    started: bool = False

    @property
    def find_fix(self) -> bool:
        return self.request.find_fix

    def step(self, sha: str, role: str = "step", early_stop: bool = True) -> StepResult:
        subject = subject_of(self.clone, sha)
        _note(f"testing {sha[:12]} {subject} ({role})")
        result = evaluate(
            self.runner, sha, subject, self.reference, self.request.options.repeat, early_stop
        )
        result = replace(result, role=role)
        self.steps.append(result)
        _note(f"{sha[:12]}: {result.verdict} ({result.reason})")
        return result

    def outcome(self, status: str, message: str = "", **kw) -> BisectOutcome:
        return BisectOutcome(status, self.find_fix, message, steps=tuple(self.steps), **kw)

    def verify_endpoints(self, good: str, bad: str) -> BisectOutcome | None:
        failing = self.step(bad, "bad endpoint", early_stop=False)
        if failing.verdict != "bad":
            return self.outcome("endpoint", f"--bad {bad[:12]} does not fail: {failing.reason}")
        self.reference = frozenset().union(*(r.failures for r in failing.runs))
        passing = self.step(good, "good endpoint", early_stop=False)
        if passing.verdict != "good":
            how = "also shows the original failure" if passing.verdict == "bad" else passing.reason
            return self.outcome("endpoint", f"--good {good[:12]} does not pass: {how}")
        return None

    def mark(self, *args: str) -> tuple[str, str, tuple[str, ...]]:
        result = _git(self.clone, "bisect", *args, check=False)
        parsed = parse_bisect_output(result.stdout + result.stderr)
        if parsed[0] == "next" and result.returncode != 0:
            raise HarnessError(f"git bisect {args[0]} failed: {result.stderr.strip()}")
        return parsed

    def search(self, old: str, new: str) -> BisectOutcome:
        terms = ["--term-old=broken", "--term-new=fixed"] if self.find_fix else []
        self.started = True
        state, culprit, candidates = self.mark("start", "--no-checkout", *terms, new, old)
        while state == "next":
            sha = _git(self.clone, "rev-parse", "BISECT_HEAD").stdout.strip()
            verdict = self.step(sha).verdict
            state, culprit, candidates = self.mark(git_term(verdict, self.find_fix), sha)
        if state == "inconclusive":
            return self.outcome(
                "inconclusive",
                "only skipped commits left: the culprit is one of the candidates",
                candidates=candidates,
            )
        return self.conclude(culprit)

    def conclude(self, culprit: str) -> BisectOutcome:
        by_commit = {s.commit: s for s in self.steps}
        parent = _git(
            self.clone, "rev-parse", "--verify", "--quiet", f"{culprit}^", check=False
        ).stdout.strip()
        sources = [by_commit.get(culprit), by_commit.get(parent)] + [
            s for s in self.steps if s.role == "bad endpoint"
        ]
        excerpt = next((s.excerpt for s in sources if s and s.excerpt), "")
        return self.outcome(
            "found",
            culprit=culprit,
            subject=subject_of(self.clone, culprit),
            excerpt=excerpt,
            same_image_as_parent=self.same_image(by_commit, culprit, parent),
        )

    def same_image(self, by_commit: dict, culprit: str, parent: str) -> bool | None:
        """Is the culprit's bzImage identical to its parent's? None = cannot tell."""
        mine = by_commit[culprit].image_sha256 if culprit in by_commit else ""
        if not (mine and parent):
            return None
        if parent in by_commit:
            theirs = by_commit[parent].image_sha256
        else:
            _note(f"building the culprit's parent {parent[:12]} to compare images")
            try:
                theirs = self.runner.build(parent).image_sha256
            except HarnessError as error:
                _note(f"cannot build {parent[:12]}: {str(error).splitlines()[0]}")
                theirs = ""
        return (mine == theirs) if theirs else None

    def save_log(self) -> Path | None:
        if not self.started:
            return None
        text = _git(self.clone, "bisect", "log", check=False).stdout
        path = self.request.results_dir / "bisect.log"
        path.write_text(text.replace("'--no-checkout' ", ""))
        return path


def run_bisect(request: BisectRequest, runner: Runner) -> BisectOutcome:
    """Verify the endpoints, then bisect in a private clone. Never touches the user's repo."""
    repo = request.options.repo
    good, bad = resolve(repo, request.good), resolve(repo, request.bad)
    old, new = (bad, good) if request.find_fix else (good, bad)
    _check_order(repo, old, new, request.find_fix)
    request.results_dir.mkdir(parents=True, exist_ok=True)
    with private_clone(repo) as clone:
        bisection = _Bisection(request, runner, clone)
        log = None
        try:
            outcome = bisection.verify_endpoints(good, bad) or bisection.search(old, new)
        except HarnessError as error:
            kind = "infrastructure error" if isinstance(error, InfraError) else "error"
            outcome = bisection.outcome("aborted", f"{kind}: {error}")
        finally:
            log = bisection.save_log()
            if log:
                _note(f"bisect log saved: {log} (replay: git bisect replay {log})")
        return replace(outcome, log=log)


def _check_order(repo: Path, old: str, new: str, find_fix: bool) -> None:
    if old == new:
        raise HarnessError("--good and --bad name the same commit.")
    if _git(repo, "merge-base", "--is-ancestor", new, old, check=False).returncode == 0:
        hint = (
            "with --find-fix, --bad is the older commit (the scenario fails there) and "
            "--good the newer one (it passes)"
            if find_fix
            else "--good must be older than --bad; to find a fix, add --find-fix"
        )
        raise HarnessError(f"the endpoints are in the wrong order: {hint}.")


# -- bisect-step: one verdict for `git bisect run` ---------------------------------------------


def run_step(
    options: ScenarioOptions,
    runner: Runner,
    find_fix: bool = False,
    reference_junit: Path | None = None,
) -> tuple[StepResult, int]:
    sha = resolve(options.repo, "HEAD")
    if _git(options.repo, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        _note(f"{options.repo} has uncommitted changes: they are NOT built (HEAD {sha[:12]} is)")
    reference = failures_of(report.read_junit(reference_junit)) if reference_junit else None
    result = evaluate(runner, sha, subject_of(options.repo, sha), reference, options.repeat)
    return result, step_exit_code(result.verdict, find_fix)


# -- the real runner ---------------------------------------------------------------------------


def pytest_command(options: ScenarioOptions, kernel_spec: str, junit: Path) -> list[str]:
    return scenario_run.pytest_command(
        kernel_spec,
        junit,
        series=options.series,
        fragments=options.fragments,
        smp=options.smp,
        accel=options.accel,
        extra=tuple(options.selection),
    )


def kernel_digest(built) -> str:
    """What the commit built, compared between culprit and parent: vmlinux with the kernel
    release string masked (CONFIG_LOCALVERSION_AUTO puts the commit id into it, so the
    images of two commits always differ there); the bzImage when there is no vmlinux."""
    if built.vmlinux and Path(built.vmlinux).is_file():
        data = Path(built.vmlinux).read_bytes()
        if built.release:
            release = built.release.encode()
            data = data.replace(release, b"#" * len(release))
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(Path(built.bzimage).read_bytes()).hexdigest()


@dataclass
class HarnessRunner:
    """Builds with harness.build.kernel and runs the selection with pytest from the repo root."""

    options: ScenarioOptions
    steps_dir: Path

    def build(self, sha: str) -> Built:
        from harness.build.kernel import BuildRequest, build
        from harness.progress import Progress

        spec = f"{self.options.repo}@{sha}"
        built = build(
            BuildRequest(
                kernel=spec,
                series=self.options.series,
                fragments=self.options.fragments,
                jobs=self.options.jobs,
            ),
            Progress.auto(),
        )
        return Built(sha, kernel_digest(built), spec)

    def test(self, built: Built, index: int) -> Run:
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        stem = self.steps_dir / f"{built.commit[:12]}-run{index + 1}"
        junit, log = stem.with_suffix(".xml"), stem.with_suffix(".log")
        finished = scenario_run.run(pytest_command(self.options, built.spec, junit), junit, log=log)
        _note(f"run {index + 1}: pytest exit {finished.status}, output {log}")
        results = report.read_junit(junit) if finished.has_results else None
        return classify_run(results, finished.status, finished.seconds)


def absolute_options(repo: str, series: str | None, fragments: list[str], **kw) -> ScenarioOptions:
    """Paths resolved against the caller's directory (pytest runs from the repo root)."""
    if series is not None and Path(series).exists():
        series = str(Path(series).resolve())
    return ScenarioOptions(
        repo=Path(repo).resolve(),
        series=series,
        fragments=tuple(str(Path(f).resolve()) for f in fragments),
        **kw,
    )


def default_results_dir(prefix: str = "bisect") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path("results") / f"{prefix}-{stamp}").resolve()


# -- output ------------------------------------------------------------------------------------


def format_steps(steps: tuple[StepResult, ...] | list[StepResult]) -> str:
    lines = [
        f"{'#':>2}  {'commit':<12}  {'subject':<40}  {'build s':>8}  {'test s':>8}  "
        f"{'verdict':<7}  note"
    ]
    for number, s in enumerate(steps, 1):
        role = f"--{s.role.split()[0]} endpoint: " if s.role.endswith("endpoint") else ""
        lines.append(
            f"{number:>2}  {s.commit[:12]:<12}  {s.subject[:40]:<40}  "
            f"{s.build_seconds:>8.1f}  {s.test_seconds:>8.1f}  {s.verdict:<7}  "
            f"{role}{'FLAKY ' if s.flaky else ''}{s.reason[:100]}"
        )
    return "\n".join(lines)


def format_outcome(outcome: BisectOutcome) -> str:
    what = "first fixed commit" if outcome.find_fix else "first bad commit"
    lines = []
    if outcome.status == "found":
        lines.append(f"{what}: {outcome.culprit} {outcome.subject}")
        if outcome.same_image_as_parent:
            lines.append(
                "WARNING: the culprit commit does not change the built kernel (its "
                "bzImage is byte-identical to its parent's)"
            )
        if outcome.excerpt:
            lines += ["failing test output:", _indent(outcome.excerpt)]
    elif outcome.status == "inconclusive":
        lines.append(f"no single {what}: {outcome.message}")
        lines += [f"  {sha}" for sha in outcome.candidates]
    else:
        lines.append(f"bisect stopped ({outcome.status}): {outcome.message}")
    lines += ["", format_steps(outcome.steps)]
    if outcome.log:
        lines.append(f"\nbisect log: {outcome.log}  (replay: git bisect replay {outcome.log})")
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
