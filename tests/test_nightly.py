"""The nightly job without kernels: a scripted cell runner feeds the real matrix loader,
results database, comparison, merge, reports and KCIDB export."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from harness import cli
from harness.errors import HarnessError
from harness.nightly import kcidb
from harness.nightly import matrix as nightly_matrix
from harness.nightly import runner as nightly
from harness.nightly.matrix import MatrixError
from harness.results import known_bugs, regressions, report
from harness.results.db import Result, ResultsDB

MATRIX = """
name = "unit"
[defaults]
smp = ["1,4"]
[selection]
smp = ["-m", "smp"]
[[kernel]]
name = "k61"
kernel = "debian:6.1"
series = ["default", "none"]
[[kernel]]
name = "k612"
kernel = "debian:6.12"
selection = ["smp"]
"""


def write_matrix(tmp_path: Path, text: str = MATRIX) -> Path:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


class ScriptedRunner:
    """outcomes[cell key][test] = outcome; identity[cell key] = kernel identity."""

    def __init__(
        self,
        outcomes: dict,
        identity: dict | None = None,
        interrupt_at=None,
        broken_build: tuple = (),
    ):
        self.outcomes, self.identity = outcomes, identity or {}
        self.interrupt_at, self.seen, self.broken_build = interrupt_at, [], broken_build

    def run(self, cell, cell_dir):
        self.seen.append(cell.key)
        if cell.key == self.interrupt_at:
            raise KeyboardInterrupt
        if cell.key in self.broken_build:
            row = {
                "kernel_spec": cell.kernel,
                "series": cell.series_name,
                "smp": cell.smp,
                "accel": cell.accel,
                "selection": "[]",
                "status": "error",
                "error": "build failed: patch 0001 does not apply",
            }
            return nightly.CellRun(
                row, [Result(nightly.SETUP_TEST, "build", "error", 0.0, row["error"])]
            )
        console = cell_dir / "console.log"
        console.write_text(
            "Linux version 6.1\n[ 1.0] uprobe-harness: BEGIN testcases/test_fp.py::t_b\n"
            "[ 1.1] fp-only line\n[ 1.2] uprobe-harness: END testcases/test_fp.py::t_b\n"
            "[ 2.0] uprobe-harness: BEGIN testcases/test_threads.py::t_a\n"
            "[ 2.1] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f\n[ 2.2] ---[ end trace ]---\n"
            "[ 2.3] uprobe-harness: END testcases/test_threads.py::t_a\n[ 3.0] later line\n"
        )
        row = {
            "kernel_spec": cell.kernel,
            "kernel_label": cell.kernel,
            "kernel_identity": self.identity.get(cell.key, "id-" + cell.kernel_name),
            "series": cell.series_name,
            "series_digest": "s" * 16,
            "config_digest": "c" * 16,
            "smp": cell.smp,
            "accel": "auto:tcg/multi",
            "selection": "[]",
            "seconds": 1.0,
            "kernel_release": "6.1.0",
            "kernel_commit": "a" * 40,
        }
        results = []
        for test, outcome in self.outcomes.get(cell.key, {}).items():
            family = test.split("::")[0]
            message = {
                "failed": "AssertionError: lost 3 hits",
                "xfail": "known bug: 6.1 nhit is racy",
                "crashed": "crashed: kernel WARNING at kernel/x.c:1",
            }.get(outcome, "")
            results.append(
                Result(
                    test,
                    family,
                    outcome,
                    0.5,
                    message,
                    "kernel WARNING at kernel/x.c:1" if outcome == "crashed" else "",
                    str(console),
                    "tcg/multi 4vCPU",
                )
            )
        return nightly.CellRun(row, results)


def run(tmp_path, runner, run_id, matrix_path=None, started=None):
    matrix = nightly_matrix.load_matrix(matrix_path or write_matrix(tmp_path))
    options = nightly.NightlyOptions(tmp_path / "res", tmp_path / "res" / "results.db", run_id)
    comparison = nightly.run_nightly(matrix, list(matrix.cells), options, runner)
    return comparison


PASSING = {
    "k61/default/smp1,4/all": {"threads::t_a": "passed", "fp::t_b": "passed"},
    "k61/none/smp1,4/all": {"threads::t_a": "xfail", "fp::t_b": "passed"},
    "k612/default/smp1,4/smp": {"threads::t_a": "passed"},
}


def with_outcome(cell: str, test: str, outcome: str) -> dict:
    data = json.loads(json.dumps(PASSING))
    data[cell][test] = outcome
    return data


# -- the matrix ------------------------------------------------------------------------------


def test_matrix_cells_are_the_product_with_names(tmp_path):
    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    assert [c.key for c in matrix.cells] == list(PASSING)
    assert matrix.cells[1].series == "none"  # no patches at all
    assert matrix.cells[0].series is None  # "default" -> the kernel's own series
    assert matrix.cells[2].selection == ("-m", "smp")


def test_sample_matrix_loads():
    matrix = nightly_matrix.load_matrix(Path(__file__).parent.parent / "nightly.toml")
    assert len(matrix.cells) >= 3
    assert {c.kernel for c in matrix.cells} == {"debian:6.1", "debian:6.12", "debian:7.3"}
    assert {c.series_name for c in matrix.cells if c.kernel == "debian:7.3"} == {"default", "none"}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[[kernel]]\nname='a'\nkernel='debian:6.1'\nsmp=['x']", "smp 'x'"),
        ("[[kernel]]\nname='a'\nkernel='debian:6.1'\nselection=['nope']", "selection 'nope'"),
        ("[[kernel]]\nname='a b'\nkernel='debian:6.1'", "needs a name"),
        ("[[kernel]]\nname='a'", "[[kernel]] 1 (name = 'a'): missing key 'kernel'"),
        ("[[kernel]]\nname='a'\nkernel=''", "[[kernel]] 1 (name = 'a'): has no kernel"),
        (
            "[[kernel]]\nname='a'\nkernel='debian:6.1'\nfoo=1",
            "[[kernel]] 1 (name = 'a'): unknown key 'foo'; known keys: series, smp",
        ),
        (
            "[[kernel]]\nname='a'\nkernel='debian:6.1'\naccel=1",
            "[[kernel]] 1 (name = 'a'): accel: expected `str | null`, got `int`",
        ),
        (
            "[defaults]\nsmp=[true]\n[[kernel]]\nname='a'\nkernel='debian:6.1'",
            "[defaults]: smp: item 1: expected `int | str`, got `bool`",
        ),
        (
            "[[kernel]]\nname='a'\nkernel='debian:6.1'\nseries=[{name='x', serie='y'}]",
            "[[kernel]] 1 (name = 'a').[[series]] 1 (name = 'x'): unknown key 'serie'",
        ),
        (
            "[selection]\nsmp='-m smp'\n[[kernel]]\nname='a'\nkernel='debian:6.1'",
            "[selection]: smp: expected `array`, got `str`",
        ),
        (
            "[[kernel]]\nname='a'\nkernel='debian:6.1'\n[[exclude]]\nkernels='a'",
            "[[exclude]] 1: unknown key 'kernels'; known keys: kernel, series, smp, selection",
        ),
        (
            "[[kernel]]\nname='a'\nkernel='debian:6.1'\n[[kernel]]\nname='a'\nkernel='debian:6.12'",
            "appear twice",
        ),
        ("name = ", "not valid TOML"),
        ("name = 'x'", "no [[kernel]] entries"),
        ("[selection]\n'a/b' = []\n[[kernel]]\nname='a'\nkernel='debian:6.1'", "'a/b' may only"),
        ("[[kernel]]\nname='a'\nkernel='debian:6.1'\nseries=['../x/series']", "is a path"),
    ],
)
def test_matrix_errors_name_the_file_and_the_entry(tmp_path, text, needle):
    with pytest.raises(HarnessError) as error:
        nightly_matrix.load_matrix(write_matrix(tmp_path, text))
    assert needle in str(error.value)
    assert "matrix.toml" in str(error.value)


@pytest.mark.parametrize(
    "args, ok",
    [
        (["-m", "smp and not sweep"], True),
        (["-k", "nop10", "-x", "--repeat", "3"], True),
        (["testcases/test_stack.py::test_x[a]", "-q"], True),
        (["/tmp/evil_test.py"], False),
        (["../evil/test_x.py"], False),
        (["testcases/../tests/test_nightly.py"], False),
        (["-p", "evil_plugin"], False),
        (["--rootdir=/"], False),
        (["-c", "/tmp/pytest.ini"], False),
        (["-m"], False),
        (["tests/test_nightly.py"], False),
    ],
)
def test_a_selection_only_selects_scenarios(tmp_path, args, ok):
    text = MATRIX.replace('smp = ["-m", "smp"]', f"smp = {args!r}".replace("'", '"'))
    if ok:
        nightly_matrix.load_matrix(write_matrix(tmp_path, text))
        return
    with pytest.raises(HarnessError) as error:
        nightly_matrix.load_matrix(write_matrix(tmp_path, text))
    assert "matrix.toml: [selection]: smp:" in str(error.value)


def test_exclude_removes_cells(tmp_path):
    text = MATRIX + "[[exclude]]\nkernel = 'k61'\nseries = 'none'\n"
    keys = [c.key for c in nightly_matrix.load_matrix(write_matrix(tmp_path, text)).cells]
    assert "k61/none/smp1,4/all" not in keys and len(keys) == 2


def test_shards_partition_the_matrix(tmp_path):
    cells = nightly_matrix.load_matrix(write_matrix(tmp_path)).cells
    for count in (1, 2, 3, 5):
        parts = [nightly_matrix.shard_cells(cells, i, count) for i in range(1, count + 1)]
        keys = [c.key for part in parts for c in part]
        assert sorted(keys) == sorted(c.key for c in cells)
    # as many kernels as shards: one kernel's cells stay together (built once)
    first, second = (nightly_matrix.shard_cells(cells, i, 2) for i in (1, 2))
    assert {c.kernel_name for c in first} == {"k61"} and {c.kernel_name for c in second} == {"k612"}
    for bad in ("0/2", "3/2", "x", ""):
        with pytest.raises(MatrixError):
            nightly_matrix.parse_shard(bad)


# -- history and regressions -------------------------------------------------------------------


def test_two_runs_flag_a_new_failure_and_exit_nonzero(tmp_path):
    first = run(tmp_path, ScriptedRunner(PASSING), "r1")
    assert first.changes == [] and len(first.cells_without_history) == 3
    assert regressions.exit_status(first, "new") == 0
    broken = with_outcome("k61/default/smp1,4/all", "threads::t_a", "failed")
    second = run(tmp_path, ScriptedRunner(broken, {"k61/default/smp1,4/all": "id-changed"}), "r2")
    assert [(c.cell, c.test, c.category, c.before, c.after) for c in second.changes] == [
        ("k61/default/smp1,4/all", "threads::t_a", "new failure", "passed", "failed")
    ]
    assert regressions.exit_status(second, "new") == 1
    assert regressions.exit_status(second, "never") == 0
    # the same failure again: still failing, no longer new, the job is green again
    third = run(tmp_path, ScriptedRunner(broken, {"k61/default/smp1,4/all": "id-changed"}), "r3")
    assert [c.category for c in third.changes] == ["still failing"]
    assert regressions.exit_status(third, "new") == 0
    assert regressions.exit_status(third, "failures") == 1
    # fixed by a new kernel
    fourth = run(tmp_path, ScriptedRunner(PASSING, {"k61/default/smp1,4/all": "id-fixed"}), "r4")
    assert [c.category for c in fourth.changes] == ["fixed"]


def test_one_flip_is_a_change_and_a_flake_rate_over_the_window_makes_a_test_flaky(tmp_path):
    """Identical inputs throughout: the first flip is a new failure (it gates); once the
    verdict has flipped often enough within the window the test is flaky (it does not)."""
    cell = "k612/default/smp1,4/smp"
    crashed = with_outcome(cell, "threads::t_a", "crashed")
    categories, rates = [], []
    for number, outcomes in enumerate([PASSING, PASSING, crashed, PASSING, crashed], start=1):
        comparison = run(tmp_path, ScriptedRunner(outcomes), f"r{number}")
        categories.append([c.category for c in comparison.changes if c.cell == cell])
        rates.append(comparison.flake.get((cell, "threads::t_a")))
    # pass, pass, FAIL: one flip, a new failure; then pass (2 flips of 3 pairs): flaky
    assert categories == [[], [], ["new failure"], ["flaky"], ["flaky"]]
    assert [(r.flips, r.runs) for r in rates] == [(0, 1), (0, 2), (1, 3), (2, 4), (3, 5)]
    assert rates[3].rate == pytest.approx(2 / 3) and rates[3].flaky() and rates[4].flaky()
    assert not rates[2].flaky(threshold=0.01), "one flip is never flaky"
    # a window of 2 runs sees one flip only: a change again
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        narrow = regressions.compare_run(db, "r5", window=2)
        assert [c.category for c in narrow.of("new failure")] == ["new failure"]
        # a high threshold: 3 flips in 5 runs (75 %) are below 80 %
        strict = regressions.compare_run(db, "r5", threshold=0.8)
        assert not strict.of("flaky") and strict.of("new failure")


def test_flake_rates_count_only_runs_with_identical_inputs(tmp_path):
    cell = "k612/default/smp1,4/smp"
    crashed = with_outcome(cell, "threads::t_a", "crashed")
    for number, outcomes in enumerate([PASSING, crashed, PASSING], start=1):
        run(tmp_path, ScriptedRunner(outcomes), f"r{number}")
    # a new kernel build: its runs start a history of their own
    comparison = run(tmp_path, ScriptedRunner(crashed, {cell: "id-new"}), "r4")
    assert [c.category for c in comparison.changes if c.cell == cell] == ["new failure"]
    assert comparison.flake[(cell, "threads::t_a")].outcomes == ("crashed",)
    summary_path = tmp_path / "res" / "runs" / "r3"
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        back = regressions.compare_run(db, "r3")
        text = nightly.format_summary(db, "r3", back)
        nightly.write_outputs(db, "r3", back, tmp_path / "res")
    assert "FLAKY" in text and "threads::t_a: 100% (2 flips in 3 runs" in text, text
    page = (summary_path / "report.html").read_text()
    assert 'id="flake-table"' in page and "100%" in page


def test_a_known_bug_that_stops_showing_is_its_own_category_and_a_stale_entry(tmp_path):
    """r1: the entry's bug shows (xfail); r2: the test passes where the entry applies
    (xpass): 'known bug gone', not a new failure, and the entry is named as stale."""
    bug = known_bugs.KnownBug(("t_a",), ("*",), (), "nhit is racy", "")
    other = known_bugs.KnownBug(("t_never",), ("*",), (), "never met", "")
    states = {"xfail": "showed", "xpass": "absent"}

    class Recording(ScriptedRunner):
        def run(self, cell, cell_dir):
            outcome = super().run(cell, cell_dir)
            outcome.results[:] = [
                replace(r, known_bugs=json.dumps({"t_a": states[r.outcome]}))
                if r.outcome in states
                else r
                for r in outcome.results
            ]
            return outcome

    cell = "k61/none/smp1,4/all"
    run(tmp_path, Recording(PASSING), "r1")  # k61/none has t_a as xfail
    gone = with_outcome(cell, "threads::t_a", "xpass")
    run(tmp_path, Recording(gone), "r2")
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        comparison = regressions.compare_run(db, "r2", bugs=[bug, other])
        assert [(c.cell, c.category, c.before, c.after) for c in comparison.changes] == [
            (cell, "known bug gone", "xfail", "xpass")
        ]
        assert regressions.exit_status(comparison, "new") == 0
        assert regressions.exit_status(comparison, "failures") == 1
        assert [(e.entry, e.cell, e.tests, e.reason) for e in comparison.stale] == [
            ("t_a", cell, ("threads::t_a",), "nhit is racy")
        ]
        assert comparison.unexercised == ["t_never"]
        first = regressions.compare_run(db, "r1", bugs=[bug, other])
        assert first.stale == [], "an entry that showed is not stale"
        text = nightly.format_summary(db, "r2", comparison)
        outputs = nightly.write_outputs(db, "r2", comparison, tmp_path / "res")
    assert "KNOWN BUG GONE" in text and "STALE ENTRY" in text and "'t_a'" in text, text
    page = outputs["report"].read_text()
    assert 'id="stale-table"' in page and "nhit is racy" in page and "known bug gone" in page


def test_the_entry_states_reach_the_history_from_the_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="testcases.test_threads" name="t_a" '
        'time="1"><properties><property name="known_bugs" value="{&quot;t_a&quot;: '
        '&quot;showed&quot;}"/></properties><skipped type="pytest.xfail" message="known bug"/>'
        "</testcase></testsuite></testsuites>"
    )
    result = nightly.to_result(report.read_junit(junit)[0])
    assert result.outcome == "xfail"
    assert regressions.known_bug_states(result) == {"t_a": "showed"}


def test_known_bugs_entries_need_distinct_first_patterns(tmp_path):
    path = tmp_path / "known_bugs.toml"
    path.write_text(
        '[[bug]]\ntest = "t_a"\nkernels = ["*"]\nreason = "one"\n'
        '[[bug]]\ntest = ["t_a", "t_b"]\nkernels = ["*"]\nreason = "two"\n'
    )
    with pytest.raises(HarnessError, match=r"\[\[bug\]\] 1 and 2: both start with test = 't_a'"):
        known_bugs.load(path)


def test_interrupted_run_never_becomes_the_previous_run(tmp_path):
    run(tmp_path, ScriptedRunner(PASSING), "r1")
    broken = with_outcome("k61/default/smp1,4/all", "fp::t_b", "failed")
    with pytest.raises(KeyboardInterrupt):  # cell 1 stored, then interrupted at cell 2
        run(
            tmp_path,
            ScriptedRunner(
                broken, {"k61/default/smp1,4/all": "id-2"}, interrupt_at="k61/none/smp1,4/all"
            ),
            "r2",
        )
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        assert [(r["run_id"], r["complete_shards"]) for r in db.runs()] == [("r1", 1), ("r2", 0)]
        assert db.previous_cell("r2", "k61/default/smp1,4/all")["run_id"] == "r1"
    # the next run compares with r1, so the failure is still new
    third = run(tmp_path, ScriptedRunner(broken, {"k61/default/smp1,4/all": "id-2"}), "r3")
    assert [(c.test, c.category, c.before) for c in third.changes] == [
        ("fp::t_b", "new failure", "passed")
    ]


def test_a_killed_run_leaves_a_consistent_database(tmp_path):
    """SIGKILL mid-cell: the shard stays 'running'; its rows are not a previous run."""
    run(tmp_path, ScriptedRunner(PASSING), "r1")
    db_path = tmp_path / "res" / "results.db"
    with ResultsDB(db_path) as db:  # what a killed run leaves: a begun shard, one cell
        r1 = db.run("r1")  # same start as r1, later id: between r1 and r3
        db.begin_shard("r2", r1["started"], "unit", r1["matrix_digest"], "v", 1, 1, "host")
        db.add_cell(
            "r2",
            {"cell": "k61/default/smp1,4/all", "shard": 1, "input_digest": "z"},
            [Result("threads::t_a", "threads", "failed")],
        )
    assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    third = run(tmp_path, ScriptedRunner(PASSING), "r3")
    assert third.changes == []


def test_the_database_file_alone_holds_every_closed_run(tmp_path):
    """WAL keeps new rows in results.db-wal until a checkpoint; archiving results.db alone
    (while a report reader still has it open) must not lose the run that was closed."""
    run(tmp_path, ScriptedRunner(PASSING), "r1")
    db_path = tmp_path / "res" / "results.db"
    reader = sqlite3.connect(db_path)  # e.g. a report being rendered meanwhile
    assert reader.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    run(tmp_path, ScriptedRunner(PASSING), "r2")
    archived = tmp_path / "archive.db"
    shutil.copyfile(db_path, archived)  # the file alone, without -wal and -shm
    reader.close()
    copy = sqlite3.connect(archived)
    assert copy.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall() == [("r1",), ("r2",)]
    assert copy.execute("SELECT COUNT(*) FROM cells WHERE run_id='r2'").fetchone()[0] > 0
    copy.close()


def test_summary_and_reports(tmp_path):
    run(tmp_path, ScriptedRunner(PASSING), "r1")
    broken = with_outcome("k61/default/smp1,4/all", "threads::t_a", "crashed")
    comparison = run(tmp_path, ScriptedRunner(broken, {"k61/default/smp1,4/all": "x"}), "r2")
    results_dir = tmp_path / "res"
    with ResultsDB(results_dir / "results.db") as db:
        summary = nightly.format_summary(db, "r2", comparison)
        outputs = nightly.write_outputs(db, "r2", comparison, results_dir)
        assert db.history("k61/default/smp1,4/all", "threads::t_a", "r2", 10) == [
            "passed",
            "crashed",
        ]
    assert "NEW FAILURE" in summary and "kernel WARNING at kernel/x.c:1" in summary
    html = outputs["report"].read_text()
    assert html.index('id="new-failures"') < html.index('id="matrix"')
    assert "known bug: 6.1 nhit is racy" in html  # xfail reasons shown
    assert "WARNING: CPU: 0 PID: 1" in html  # console excerpt embedded:
    assert "fp-only line" not in html and "later line" not in html  # the test's own window
    assert html.count('<svg class="spark"') == 5
    import xml.etree.ElementTree as ET

    suites = ET.parse(outputs["junit"]).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == list(PASSING)
    assert [s.get("failures") for s in suites] == ["1", "0", "0"]
    assert suites[1].find("testcase[@name='t_a']/skipped").get("type") == "uprobe-harness.xfail"


def test_kcidb_export_is_valid_and_validation_can_fail(tmp_path):
    run(tmp_path, ScriptedRunner(with_outcome("k61/default/smp1,4/all", "fp::t_b", "failed")), "r1")
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        data = kcidb.export(db, "r1")
    statuses = sorted(t["status"] for t in data["tests"])
    assert statuses == ["FAIL", "FAIL", "PASS", "PASS", "PASS"]  # the xfail is a FAIL
    assert len(data["builds"]) == 2 and len(data["checkouts"]) == 2
    assert all(t["path"].startswith("uprobes.") for t in data["tests"])
    data["tests"][0]["status"] = "BROKEN"
    with pytest.raises(Exception, match="BROKEN"):
        kcidb.validate(data)


def test_merge_folds_shards_into_one_complete_run(tmp_path):
    matrix_path = write_matrix(tmp_path)
    matrix = nightly_matrix.load_matrix(matrix_path)
    for index in (1, 2):
        options = nightly.NightlyOptions(
            tmp_path / f"shard{index}", tmp_path / f"shard{index}" / "results.db", "ci-42", index, 2
        )
        nightly.run_nightly(
            matrix,
            nightly_matrix.shard_cells(matrix.cells, index, 2),
            options,
            ScriptedRunner(PASSING),
        )
        with ResultsDB(options.db_path) as db:  # one shard alone is not a complete run
            assert db.runs(complete_only=True) == []
    status = cli.main(
        [
            "merge",
            "--into",
            str(tmp_path / "merged"),
            str(tmp_path / "shard1"),
            str(tmp_path / "shard2"),
        ]
    )
    assert status == 0
    with ResultsDB(tmp_path / "merged" / "results.db") as db:
        assert [r["run_id"] for r in db.runs(complete_only=True)] == ["ci-42"]
        assert len(db.cells("ci-42")) == 3
    report = tmp_path / "merged" / "runs" / "ci-42" / "report.html"
    assert report.is_file() and "k612/default/smp1,4/smp" in report.read_text()
    # merging again changes nothing
    assert cli.main(["merge", "--into", str(tmp_path / "merged"), str(tmp_path / "shard1")]) == 0
    with ResultsDB(tmp_path / "merged" / "results.db") as db:
        assert len(db.cells("ci-42")) == 3


@pytest.mark.parametrize(
    "table, field, value",
    [
        ("cells", "dir", "ABSOLUTE"),
        ("cells", "dir", "runs/../../../victim"),
        ("cells", "junit", "/etc/passwd"),
        ("results", "console_log", "../../x.log"),
        ("cells", "run_id", "../../victim"),
        ("cells", "dir", "."),
        ("cells", "dir", "runs"),
    ],
)
def test_merge_refuses_a_shard_whose_paths_leave_its_directory(
    tmp_path, capsys, table, field, value
):
    """A shard database is input: a stored path that is absolute or climbs out (or a run id
    that does) is refused with the file, table and field named, and nothing is written:
    not the target history, and not the path it points at."""
    import sqlite3

    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    shard = tmp_path / "shard1"
    options = nightly.NightlyOptions(shard, shard / "results.db", "ci-7", 1, 1)
    nightly.run_nightly(matrix, matrix.cells, options, ScriptedRunner(PASSING))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    value = str(victim) if value == "ABSOLUTE" else value
    with sqlite3.connect(shard / "results.db") as db:
        db.execute(f"UPDATE {table} SET {field}=?", (value,))
    into = tmp_path / "merged"
    assert cli.main(["merge", "--into", str(into), str(shard)]) == 1
    err = capsys.readouterr().err
    assert str(shard / "results.db") in err and (f"{table}.{field}" in err or "run id" in err)
    assert (victim / "keep").read_text() == "precious"
    with ResultsDB(into / "results.db") as db:
        assert db.runs() == []


def test_a_run_id_must_be_a_plain_name(tmp_path, capsys):
    matrix_path = write_matrix(tmp_path)
    assert (
        cli.main(
            [
                "nightly",
                "--matrix",
                str(matrix_path),
                "--run-id",
                "../x",
                "--results-dir",
                str(tmp_path / "res"),
            ]
        )
        == 1
    )
    assert "--run-id: run id '../x' is not a plain name" in capsys.readouterr().err
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_merge_reads_a_shard_whose_path_has_uri_characters(tmp_path):
    """The shard database is opened read-only through an SQLite URI: '#' or '?' in its path
    must not open another file."""
    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    shard = tmp_path / "shard #1?x=y"
    options = nightly.NightlyOptions(shard, shard / "results.db", "ci-9", 1, 1)
    nightly.run_nightly(matrix, matrix.cells, options, ScriptedRunner(PASSING))
    assert cli.main(["merge", "--into", str(tmp_path / "merged"), str(shard)]) == 0
    with ResultsDB(tmp_path / "merged" / "results.db") as db:
        assert len(db.cells("ci-9")) == 3


def test_the_last_cell_completes_its_shard_and_an_interruption_then_keeps_it(tmp_path):
    """A SIGTERM right after the last cell is recorded must not turn the shard interrupted."""

    class InterruptedAfterTheLastCell(ScriptedRunner):
        pass

    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    options = nightly.NightlyOptions(tmp_path / "res", tmp_path / "res" / "results.db", "r9")
    real_add = ResultsDB.add_cell

    def add_then_interrupt(self, run_id, cell, results, completes_shard=None):
        real_add(self, run_id, cell, results, completes_shard)
        if completes_shard is not None:
            raise KeyboardInterrupt("signal 15")

    ResultsDB.add_cell = add_then_interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            nightly.run_nightly(
                matrix, list(matrix.cells), options, InterruptedAfterTheLastCell(PASSING)
            )
    finally:
        ResultsDB.add_cell = real_add
    with ResultsDB(options.db_path) as db:
        assert [r["run_id"] for r in db.runs(complete_only=True)] == ["r9"]


def test_a_rerun_cannot_take_a_shard_another_process_is_running(tmp_path):
    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    options = nightly.NightlyOptions(tmp_path / "res", tmp_path / "res" / "results.db", "r5")
    seen = []

    class Nested(ScriptedRunner):
        def run(self, cell, cell_dir):
            if not seen:  # while the first shard runs, a second process starts it
                seen.append(1)
                with pytest.raises(HarnessError, match="being run by another process"):
                    nightly.run_nightly(
                        matrix, list(matrix.cells), options, ScriptedRunner(PASSING)
                    )
            return super().run(cell, cell_dir)

    nightly.run_nightly(matrix, list(matrix.cells), options, Nested(PASSING))
    with ResultsDB(options.db_path) as db:
        assert len(db.cells("r5")) == 3 and db.runs(complete_only=True)


def test_cli_errors_are_one_paragraph(tmp_path, capsys):
    assert cli.main(["nightly", "--matrix", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml: cannot read it: No such file" in capsys.readouterr().err
    assert cli.main(["nightly-report", "--results-dir", str(tmp_path)]) == 1
    assert "holds no results.db" in capsys.readouterr().err


# -- the report in a real browser ---------------------------------------------------------------

ARTEFACTS = Path(__file__).resolve().parent.parent / "results" / "ci-artefacts"


def test_report_renders_in_headless_chromium(tmp_path):
    """The HTML report loads in Chromium without script errors and shows the matrix cells
    and the regression; the screenshot is kept as a CI artefact."""
    from harness.results import browser

    run(tmp_path, ScriptedRunner(PASSING), "r1")
    broken = with_outcome("k61/default/smp1,4/all", "threads::t_a", "crashed")
    comparison = run(tmp_path, ScriptedRunner(broken, {"k61/default/smp1,4/all": "x"}), "r2")
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        report = nightly.write_outputs(db, "r2", comparison, tmp_path / "res")["report"]
    page = browser.load(report, ARTEFACTS / "nightly-report.png")
    assert page.console_errors == []
    assert 'data-rendered="6"' in page.dom  # the script ran: 3 cells x 2 tests
    assert re.search(
        r'<td class="o crashed" data-cell="k61/default/smp1,4/all" '
        r'data-outcome="crashed"',
        page.dom,
    )
    assert page.dom.count('data-outcome="xfail"') == 1
    assert re.search(r'<tr class="new-failure"><td>k61/default/smp1,4/all</td>', page.dom)
    assert page.screenshot is not None
    assert page.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.screenshot.stat().st_size > 20_000

    # the check can fail: a report whose script throws is caught
    bad = tmp_path / "bad.html"
    bad.write_text(
        report.read_text().replace(
            "document.body.dataset.rendered", "undefinedReportFunction(); document.body"
        )
    )
    assert any("undefinedReportFunction" in e for e in browser.load(bad).console_errors)


# -- review findings -----------------------------------------------------------------------------


def test_a_failed_build_does_not_erase_the_history(tmp_path):
    """Night 1: a test fails. Night 2: the build fails. Night 3: the same test still
    fails: it is 'still failing' (compared with night 1), not new. The build error is new
    on night 2, new again on night 4 (night 3 built), still failing on night 5."""
    cell = "k61/default/smp1,4/all"
    failing = with_outcome(cell, "fp::t_b", "failed")
    run(tmp_path, ScriptedRunner(failing), "r1")
    second = run(tmp_path, ScriptedRunner(failing, broken_build=(cell,)), "r2")
    assert [(c.test, c.category) for c in second.changes] == [(nightly.SETUP_TEST, "new failure")]
    assert second.vanished == []  # a broken cell has no tests to lose
    third = run(tmp_path, ScriptedRunner(failing), "r3")
    assert [(c.test, c.category) for c in third.changes] == [("fp::t_b", "still failing")]
    assert regressions.exit_status(third, "new") == 0
    fourth = run(tmp_path, ScriptedRunner(failing, broken_build=(cell,)), "r4")
    fifth = run(tmp_path, ScriptedRunner(failing, broken_build=(cell,)), "r5")
    assert (nightly.SETUP_TEST, "new failure") in [(c.test, c.category) for c in fourth.changes]
    assert (nightly.SETUP_TEST, "still failing") in [(c.test, c.category) for c in fifth.changes]


def test_vanished_tests_are_reported(tmp_path):
    run(tmp_path, ScriptedRunner(PASSING), "r1")
    fewer = json.loads(json.dumps(PASSING))
    del fewer["k61/default/smp1,4/all"]["fp::t_b"]
    second = run(tmp_path, ScriptedRunner(fewer), "r2")
    assert second.vanished == [("k61/default/smp1,4/all", "fp::t_b")]
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        assert "GONE" in nightly.format_summary(db, "r2", second)


def test_a_test_reported_twice_is_stored_once_with_the_worse_outcome():
    call = Result("threads::t_a", "threads", "failed", 1.0, "assert 3 == 4")
    teardown = Result(
        "threads::t_a",
        "threads",
        "crashed",
        0.5,
        "crashed in teardown: kernel WARNING",
        "kernel WARNING",
        "c.log",
    )
    other = Result("fp::t_b", "fp", "passed")
    merged = nightly.merge_duplicates([call, other, teardown])
    assert [(r.test, r.outcome) for r in merged] == [
        ("threads::t_a", "crashed"),
        ("fp::t_b", "passed"),
    ]
    assert "assert 3 == 4" in merged[0].message and "teardown" in merged[0].message
    assert merged[0].crash_title == "kernel WARNING" and merged[0].seconds == 1.5


def test_merge_reports_the_latest_run_and_keeps_complete_shards(tmp_path):
    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))

    def shard(directory, run_id, index, runner):
        options = nightly.NightlyOptions(
            tmp_path / directory, tmp_path / directory / "results.db", run_id, index, 2
        )
        nightly.run_nightly(
            matrix, nightly_matrix.shard_cells(matrix.cells, index, 2), options, runner
        )

    shard("a", "ci-1", 1, ScriptedRunner(PASSING))
    shard("a", "ci-1", 2, ScriptedRunner(PASSING))
    shard("b", "ci-2", 1, ScriptedRunner(PASSING))  # complete
    failing = with_outcome("k61/default/smp1,4/all", "fp::t_b", "failed")
    with pytest.raises(KeyboardInterrupt):  # the same shard, interrupted
        shard("c", "ci-2", 1, ScriptedRunner(failing, interrupt_at="k61/none/smp1,4/all"))
    shard("b", "ci-2", 2, ScriptedRunner(PASSING))
    into = tmp_path / "merged"
    assert nightly.merge(into, [tmp_path / "a", tmp_path / "b"])[0] == "ci-2"
    assert nightly.merge(into, [tmp_path / "c"]) == []
    with ResultsDB(into / "results.db") as db:
        row = next(c for c in db.cells("ci-2") if c["cell"] == "k61/default/smp1,4/all")
        assert db.results("ci-2", row["cell"])["fp::t_b"].outcome == "passed"
    assert (into / row["dir"] / "console.log").is_file()


def test_shards_of_one_run_must_agree(tmp_path):
    matrix = nightly_matrix.load_matrix(write_matrix(tmp_path))
    first = nightly.NightlyOptions(tmp_path / "r", tmp_path / "r" / "results.db", "ci", 1, 2)
    nightly.run_nightly(matrix, [], first, ScriptedRunner(PASSING))
    other = nightly.NightlyOptions(tmp_path / "r", tmp_path / "r" / "results.db", "ci", 2, 3)
    with pytest.raises(ValueError, match="same --shard I/N count"):
        nightly.run_nightly(matrix, [], other, ScriptedRunner(PASSING))


def test_a_shard_needs_a_run_id(tmp_path, capsys):
    assert (
        cli.main(
            [
                "nightly",
                "--matrix",
                str(write_matrix(tmp_path)),
                "--shard",
                "1/2",
                "--results-dir",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "same --run-id" in capsys.readouterr().err


def test_report_escapes_what_tests_print(tmp_path):
    payload = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'

    class Hostile(ScriptedRunner):
        def run(self, cell, cell_dir):
            out = super().run(cell, cell_dir)
            return nightly.CellRun(out.row, [Result(payload, "fp", "failed", 0, payload, payload)])

    comparison = run(tmp_path, Hostile(PASSING), "r1")
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        html = nightly.write_outputs(db, "r1", comparison, tmp_path / "res")["report"]
    text = html.read_text()
    assert "<script>alert(1)" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


@pytest.mark.parametrize("how", ["symlink", "absolute", "climb", "scheme"])
def test_report_reads_and_links_only_its_own_console_logs(tmp_path, how):
    """A history from elsewhere: a console log that is a symlink to a host file (a merge
    copies symlinks), an absolute path, a path that climbs out, or a `javascript:` name
    neither embeds the file nor links anywhere but below the report."""
    import sqlite3

    secret = tmp_path / "secret.txt"
    secret.write_text("WARNING: CPU: 0 PID: 1 at host-secret\n")
    comparison = run(
        tmp_path,
        ScriptedRunner(with_outcome("k61/default/smp1,4/all", "threads::t_a", "crashed")),
        "r1",
    )
    res = tmp_path / "res"
    with sqlite3.connect(res / "results.db") as db:
        (stored,) = db.execute("SELECT console_log FROM results WHERE outcome='crashed'").fetchone()
        target = {
            "symlink": stored,
            "absolute": str(secret),
            "climb": "../secret.txt",
            "scheme": "javascript:alert(1)",
        }[how]
        db.execute("UPDATE results SET console_log=? WHERE outcome='crashed'", (target,))
    if how == "symlink":
        (res / stored).unlink()
        (res / stored).symlink_to(secret)
    with ResultsDB(res / "results.db") as db:
        text = nightly.write_outputs(db, "r1", comparison, res)["report"].read_text()
    assert "host-secret" not in text
    assert 'href="javascript:' not in text and "secret.txt" not in text


def test_merged_junit_stays_well_formed_with_control_characters(tmp_path):
    noise = "lost \x01\x07\x1b[31m hits\x00"

    class Noisy(ScriptedRunner):
        def run(self, cell, cell_dir):
            out = super().run(cell, cell_dir)
            return nightly.CellRun(
                out.row, [Result("fp::t" + noise, "fp", "failed", 0, noise, noise)]
            )

    comparison = run(tmp_path, Noisy(PASSING), "r1")
    with ResultsDB(tmp_path / "res" / "results.db") as db:
        junit = nightly.write_outputs(db, "r1", comparison, tmp_path / "res")["junit"]
    import xml.etree.ElementTree as ET

    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "lost" in failure.text and "\x01" not in failure.text


def test_a_history_from_an_older_schema_is_upgraded_in_place(tmp_path):
    """A results.db written before the `dir` and `machine` columns existed keeps working:
    the columns are added, the old rows stay the previous run."""
    res = tmp_path / "res"
    res.mkdir()
    old = sqlite3.connect(res / "results.db")
    old.executescript("""
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, started TEXT NOT NULL, matrix TEXT,
            matrix_digest TEXT, harness_version TEXT, shard_count INTEGER NOT NULL DEFAULT 1);
        CREATE TABLE shards (run_id TEXT NOT NULL, shard INTEGER NOT NULL, status TEXT NOT NULL,
            started TEXT, finished TEXT, host TEXT, PRIMARY KEY (run_id, shard));
        CREATE TABLE cells (run_id TEXT NOT NULL, cell TEXT NOT NULL, shard INTEGER NOT NULL,
            input_digest TEXT, junit TEXT, status TEXT, error TEXT, PRIMARY KEY (run_id, cell));
        CREATE TABLE results (run_id TEXT NOT NULL, cell TEXT NOT NULL, test TEXT NOT NULL,
            family TEXT, outcome TEXT NOT NULL, seconds REAL, message TEXT, crash_title TEXT,
            console_log TEXT, PRIMARY KEY (run_id, cell, test));
        INSERT INTO runs VALUES ('r0', '2000-01-01T00:00:00+00:00', 'unit', 'x', 'old', 1);
        INSERT INTO shards VALUES ('r0', 1, 'complete', NULL, NULL, 'h');
        INSERT INTO cells VALUES ('r0', 'k61/default/smp1,4/all', 1, 'd0', NULL, 'ok', NULL);
        INSERT INTO results VALUES ('r0', 'k61/default/smp1,4/all', 'fp::t_b', 'fp', 'failed',
            1.0, 'old failure', '', '');
    """)
    old.commit()
    old.close()
    comparison = run(tmp_path, ScriptedRunner(PASSING), "r1")
    assert [(c.test, c.category, c.before) for c in comparison.changes] == [
        ("fp::t_b", "fixed", "failed")
    ]
