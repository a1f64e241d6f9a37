"""The outcome table: one row per outcome, and the sets the tools gate on."""

from harness.nightly import kcidb
from harness.nightly import report as nightly_report
from harness.results import db as results_db
from harness.results import report
from harness.results.outcome import BAD, BY_SEVERITY, FAILING, Outcome, parse, severity


def test_every_outcome_has_its_row_and_the_sets_are_the_gates():
    for o in Outcome:
        assert o.kcidb in ("PASS", "FAIL", "SKIP", "ERROR") and o.symbol and o.colour
    assert {o.value for o in FAILING} == {"failed", "crashed", "xpass"}
    assert {o.value for o in BAD} == {"failed", "crashed", "xpass", "error"}
    assert [o.value for o in BY_SEVERITY][:2] == ["crashed", "error"]
    assert BY_SEVERITY[-1] is Outcome.PASSED


def test_stored_strings_compare_with_the_enum():
    assert "failed" in BAD and "xfail" not in BAD and parse("xfail") is Outcome.XFAIL
    assert parse("newer-outcome") is None and severity("newer-outcome") < 0
    assert report.OUTCOMES[0] == "passed" and len(report.OUTCOMES) == len(Outcome)
    assert results_db.BAD == BAD and kcidb.STATUS["xfail"] == "FAIL"
    assert nightly_report.SYMBOLS["crashed"] == "CRASH"
