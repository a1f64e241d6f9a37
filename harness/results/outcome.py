"""The outcome of one test, and everything the tools say about it, in one table.

The values are the strings stored in JUnit properties, the results history and the reports
(Outcome is a str enum: `result.outcome in BAD` works on those strings as they are)."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    """In report order (summary columns)."""

    PASSED = "passed"
    FAILED = "failed"
    CRASHED = "crashed"  # the kernel splatted or the guest died during the test
    XFAIL = "xfail"  # failed as a known-bugs entry says it must
    XPASS = "xpass"  # passed where a known-bugs entry says it must fail: stale entry
    SKIPPED = "skipped"
    ERROR = "error"  # the harness (a fixture, the infrastructure) failed

    @property
    def severity(self) -> int:
        """0 is the worst: of two results of one test, the worse is kept."""
        return _TABLE[self][0]

    @property
    def bad(self) -> bool:
        """A failure of the kernel under test or of the harness: gates a nightly, catches
        a mutant, makes a bisect step bad."""
        return self in BAD

    @property
    def kcidb(self) -> str:
        return _TABLE[self][1]

    @property
    def symbol(self) -> str:
        return _TABLE[self][2]

    @property
    def colour(self) -> str:
        return _TABLE[self][3]


#            severity  KCIDB status  symbol   colour
_TABLE = {
    Outcome.CRASHED: (0, "FAIL", "CRASH", "#800"),
    Outcome.ERROR: (1, "ERROR", "ERROR", "#f80"),
    Outcome.FAILED: (2, "FAIL", "FAIL", "#d33"),
    Outcome.XPASS: (3, "PASS", "XPASS", "#36c"),
    Outcome.XFAIL: (4, "FAIL", "xfail", "#db3"),
    Outcome.SKIPPED: (5, "SKIP", "skip", "#aaa"),
    Outcome.PASSED: (6, "PASS", "pass", "#3a3"),
}

# the test found something wrong with the kernel (a JUnit <failure>)
FAILING = frozenset({Outcome.FAILED, Outcome.CRASHED, Outcome.XPASS})
# ...or the harness could not judge it
BAD = FAILING | {Outcome.ERROR}
ORDER = tuple(Outcome)
BY_SEVERITY = tuple(sorted(Outcome, key=lambda o: o.severity))


def parse(text: str) -> Outcome | None:
    try:
        return Outcome(text)
    except ValueError:
        return None


def severity(text: str) -> int:
    """Of any stored string: unknown ones rank worst (a newer harness's outcome)."""
    known = parse(text)
    return known.severity if known is not None else -1
