"""Compare a cell with its previous run: new failures, fixes, still failing, flaky.

"Flaky" means the outcome changed while every input stayed the same (kernel identity,
series and config digests, smp, accel, selection, harness version): the change cannot be
the kernel's doing. A failing test with no previous result counts as a new failure."""

from __future__ import annotations

from dataclasses import dataclass, field

from .results_db import Result

CATEGORIES = ("new failure", "fixed", "still failing", "flaky")


@dataclass(frozen=True)
class Change:
    cell: str
    test: str
    category: str
    before: str            # previous outcome ("" = no previous result)
    after: str
    result: Result


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    cells_without_history: list[str] = field(default_factory=list)
    vanished: list[tuple[str, str]] = field(default_factory=list)   # (cell, test)

    def of(self, category: str) -> list[Change]:
        return [c for c in self.changes if c.category == category]

    def counts(self) -> dict[str, int]:
        return {category: len(self.of(category)) for category in CATEGORIES}


def compare_cell(cell: str, now: dict[str, Result],
                 before: dict[str, tuple[Result, str]], digest: str) -> list[Change]:
    """`before`: each test's latest earlier result with the input digest of its run."""
    changes = []
    for test, result in sorted(now.items()):
        previous, previous_digest = before.get(test, (None, None))
        if previous is None:
            if result.bad:
                changes.append(Change(cell, test, "new failure", "", result.outcome, result))
            continue
        same_inputs = previous_digest == digest
        if previous.bad and result.bad:
            category = "still failing"
        elif not previous.bad and result.bad:
            category = "flaky" if same_inputs else "new failure"
        elif previous.bad and not result.bad:
            category = "flaky" if same_inputs else "fixed"
        else:
            continue
        changes.append(Change(cell, test, category, previous.outcome, result.outcome, result))
    return changes


def compare_run(db, run_id: str) -> Comparison:
    comparison = Comparison()
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
        comparison.changes += compare_cell(key, now, before, cell["input_digest"])
        if previous is not None and previous["status"] == "ok" and cell["status"] == "ok":
            gone = set(last) - set(now)
            comparison.vanished += [(key, test) for test in sorted(gone)]
    return comparison


def exit_status(comparison: Comparison, fail_on: str) -> int:
    """fail_on: new (default: only new failures fail the job), failures (any failing test),
    never (report only)."""
    if fail_on == "never":
        return 0
    if fail_on == "failures":
        return 1 if any(change.result.bad for change in comparison.changes) else 0
    return 1 if comparison.of("new failure") else 0
