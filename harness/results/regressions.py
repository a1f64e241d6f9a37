"""Compare a cell with its history: new failures, known bugs gone, fixes, still failing,
flaky; per-test flake rates; known-bugs entries that no longer show.

- **Flake rate.** Over the last K runs of a cell whose inputs were identical (kernel build
  identity, series and config digests, smp, accelerator kind, selection, harness version:
  the cell's input digest), a test's rate is the share of consecutive pairs whose verdict
  (bad or not) differs: `flips / (runs - 1)`. A test is *flaky* once its rate reaches the
  threshold with at least two flips: one flip is a change, not a pattern.
- **Categories.** A test whose verdict changed is *flaky* when its rate says so; otherwise
  an expected failure (a known bug that showed) turning into a pass is *known bug gone*,
  a pass turning into a failure a *new failure* (also a failing test without history), a
  failure turning into a pass *fixed*. Failing before and now is *still failing*.
- **Stale known-bugs entries.** Tests record in their results which known-bugs entries
  applied to them and whether the bug showed (`known_bugs`: {entry: showed|absent|unclear}).
  An entry that applied in a cell, never showed there and was absent at least once is
  stale on that cell's kernel: fix the table (`fixed_upstream`, `fixed_by`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from harness.results.db import Result
from harness.results.outcome import BAD

CATEGORIES = ("new failure", "known bug gone", "fixed", "still failing", "flaky")
GATING = ("new failure",)

FLAKE_WINDOW = 10  # runs with identical inputs looked at
FLAKE_THRESHOLD = 0.2  # flip rate from which a test is flaky (with at least 2 flips)
MIN_FLIPS = 2


@dataclass(frozen=True)
class Change:
    cell: str
    test: str
    category: str
    before: str  # previous outcome ("" = no previous result)
    after: str
    result: Result


@dataclass(frozen=True)
class FlakeRate:
    cell: str
    test: str
    outcomes: tuple[str, ...]  # oldest first, this run last

    @property
    def runs(self) -> int:
        return len(self.outcomes)

    @property
    def flips(self) -> int:
        verdicts = [o in BAD for o in self.outcomes]
        return sum(a != b for a, b in zip(verdicts, verdicts[1:], strict=False))

    @property
    def rate(self) -> float:
        return self.flips / (self.runs - 1) if self.runs > 1 else 0.0

    @property
    def bad_runs(self) -> int:
        return sum(o in BAD for o in self.outcomes)

    def flaky(self, threshold: float = FLAKE_THRESHOLD) -> bool:
        return self.flips >= MIN_FLIPS and self.rate >= threshold

    def text(self) -> str:
        return (
            f"{self.rate:.0%} ({self.flips} flips in {self.runs} runs with identical "
            f"inputs, {self.bad_runs} failing)"
        )


@dataclass(frozen=True)
class StaleEntry:
    entry: str  # the entry's key: its first test pattern
    cell: str
    kernel: str
    tests: tuple[str, ...]  # the tests where it applied and did not show
    reason: str  # from the table as it is now ("" if the entry is gone)


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    cells_without_history: list[str] = field(default_factory=list)
    vanished: list[tuple[str, str]] = field(default_factory=list)  # (cell, test)
    flake: dict[tuple[str, str], FlakeRate] = field(default_factory=dict)  # (cell, test)
    threshold: float = FLAKE_THRESHOLD
    window: int = FLAKE_WINDOW
    stale: list[StaleEntry] = field(default_factory=list)
    unexercised: list[str] = field(default_factory=list)  # entries no test of the run met

    def of(self, category: str) -> list[Change]:
        return [c for c in self.changes if c.category == category]

    def counts(self) -> dict[str, int]:
        return {category: len(self.of(category)) for category in CATEGORIES}

    def flake_rates(self) -> list[FlakeRate]:
        """Tests that flipped at least once within the window, worst first."""
        rates = [f for f in self.flake.values() if f.flips]
        return sorted(rates, key=lambda f: (-f.rate, -f.flips, f.cell, f.test))

    def flaky(self) -> list[FlakeRate]:
        return [f for f in self.flake_rates() if f.flaky(self.threshold)]


def categorize(previous: Result | None, result: Result, flaky: bool) -> str | None:
    """The category of one test's change, None when nothing changed that matters."""
    gone = result.outcome in ("passed", "xpass")
    if previous is None:
        if result.outcome == "xpass":
            return "known bug gone"
        return "new failure" if result.bad else None
    if previous.bad and result.bad:
        return "still failing"
    if previous.bad == result.bad and not (previous.outcome == "xfail" and gone):
        return None
    if flaky:
        return "flaky"
    if previous.outcome == "xfail" and gone:
        return "known bug gone"
    return "new failure" if result.bad else "fixed"


def compare_cell(
    cell: str,
    now: dict[str, Result],
    before: dict[str, tuple[Result, str]],
    flake: dict[str, FlakeRate] | None = None,
    threshold: float = FLAKE_THRESHOLD,
) -> list[Change]:
    """`before`: each test's latest earlier result (with the input digest of its run, which
    the flake rates already take into account); `flake`: each test's rate."""
    changes = []
    flake = flake or {}
    for test, result in sorted(now.items()):
        previous = before.get(test, (None, None))[0]
        rate = flake.get(test)
        category = categorize(previous, result, bool(rate and rate.flaky(threshold)))
        if category is not None:
            changes.append(
                Change(
                    cell,
                    test,
                    category,
                    previous.outcome if previous else "",
                    result.outcome,
                    result,
                )
            )
    return changes


def compare_run(
    db, run_id: str, window: int = FLAKE_WINDOW, threshold: float = FLAKE_THRESHOLD, bugs=None
) -> Comparison:
    """`bugs`: the known-bugs table to name stale entries from (default: the file)."""
    comparison = Comparison(threshold=threshold, window=window)
    for cell in db.cells(run_id):
        key = cell["cell"]
        before = db.previous_results(run_id, key)
        if not before:
            comparison.cells_without_history.append(key)
        now = db.results(run_id, key)
        previous = db.previous_cell(run_id, key)
        # a setup step recorded as a test ("(kernel build)", "(pytest)") that is absent
        # from the previous run succeeded there: compare it with that run only
        last = db.results(previous["run_id"], key) if previous is not None else {}
        for test in [t for t in before if t.startswith("(") and t not in last]:
            del before[test]
        outcomes = db.same_input_outcomes(run_id, key, cell["input_digest"], window)
        rates = {
            test: FlakeRate(key, test, tuple(seq)) for test, seq in outcomes.items() if test in now
        }
        comparison.flake.update({(key, test): rate for test, rate in rates.items()})
        comparison.changes += compare_cell(key, now, before, rates, threshold)
        if previous is not None and previous["status"] == "ok" and cell["status"] == "ok":
            gone = set(last) - set(now)
            comparison.vanished += [(key, test) for test in sorted(gone)]
    comparison.stale, comparison.unexercised = stale_entries(db, run_id, bugs)
    return comparison


def stale_entries(db, run_id: str, bugs=None) -> tuple[list[StaleEntry], list[str]]:
    """Known-bugs entries that applied in a cell of the run and never showed there; and the
    entries of the table that no test of the run met (not run, or not for these kernels)."""
    if bugs is None:
        from harness.results import known_bugs

        bugs = known_bugs.load()
    reasons = {bug.key: bug.reason for bug in bugs}
    met: set[str] = set()
    stale = []
    for cell in db.cells(run_id):
        states: dict[str, dict[str, list[str]]] = {}
        for test, result in db.results(run_id, cell["cell"]).items():
            for entry, state in known_bug_states(result).items():
                states.setdefault(entry, {}).setdefault(state, []).append(test)
        for entry, by_state in sorted(states.items()):
            met.add(entry)
            if "showed" not in by_state and by_state.get("absent"):
                stale.append(
                    StaleEntry(
                        entry,
                        cell["cell"],
                        cell["kernel_label"] or cell["kernel_spec"] or "",
                        tuple(sorted(by_state["absent"])),
                        reasons.get(entry, ""),
                    )
                )
    return stale, [bug.key for bug in bugs if bug.key not in met]


def known_bug_states(result: Result) -> dict[str, str]:
    try:
        states = json.loads(result.known_bugs or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in states.items()} if isinstance(states, dict) else {}


def exit_status(comparison: Comparison, fail_on: str) -> int:
    """fail_on: new (default: only new failures fail the job), failures (any failing test),
    never (report only)."""
    if fail_on == "never":
        return 0
    if fail_on == "failures":
        return 1 if any(change.result.bad for change in comparison.changes) else 0
    return 1 if any(comparison.of(category) for category in GATING) else 0
