"""Mutant metadata, classification and the mutation table (no kernel builds here)."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.jobs import mutate
from harness.paths import REPO_ROOT
from harness.results import report


def test_every_known_bad_series_loads_and_is_the_default_series_plus_a_bug():
    mutants = mutate.load_mutants()
    assert len(mutants) >= 8
    for mutant in mutants:
        # mainline-* mutants are for the newest mainline kernel, the rest for the default one
        expected = "debian:7.3" if mutant.name.startswith("mainline-") else "debian:6.1"
        assert mutant.kernel == expected
        assert set(mutant.breaks) <= set(mutate.FAMILIES)
    assert any(m.kernel == "debian:7.3" for m in mutants)


def test_each_family_is_declared_by_two_mutants_of_different_mechanisms():
    mutants = mutate.load_mutants()
    for family in mutate.FAMILIES:
        declaring = [m for m in mutants if family in m.breaks]
        assert len({m.mechanism for m in declaring}) >= 2, family


def _write_mutant(root, name, toml, series_lines=None):
    directory = root / name
    directory.mkdir()
    (directory / "mutant.toml").write_text(toml)
    if series_lines is not None:
        (directory / "series").write_text("\n".join(series_lines) + "\n")
    return directory


GOOD_TOML = (
    'summary = "s"\nkernel = "debian:6.1"\nmechanism = "m"\nfile = "f.c"\nbreaks = ["stack"]\n'
)


def test_unknown_family_is_named(tmp_path):
    _write_mutant(tmp_path, "bad", GOOD_TOML.replace('["stack"]', '["stak"]'), [])
    with pytest.raises(HarnessError, match=r"mutant.toml: top level: breaks: .*unknown: stak"):
        mutate.load_mutants(root=tmp_path)


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ('mechanism = "m"\n', "", "missing key 'mechanism'"),
        (
            'file = "f.c"\n',
            'file = "f.c"\nfiles = ["g.c"]\n',
            "unknown key 'files'; known keys: summary, kernel, mechanism, file, breaks, run_first",
        ),
        ('breaks = ["stack"]', 'breaks = "stack"', "breaks: expected `array`, got `str`"),
    ],
)
def test_mutant_toml_errors_name_the_file_and_the_key(tmp_path, old, new, complaint):
    _write_mutant(tmp_path, "bad", GOOD_TOML.replace(old, new), [])
    with pytest.raises(HarnessError, match=r"bad/mutant.toml: top level: " + re.escape(complaint)):
        mutate.load_mutants(root=tmp_path)


def test_a_run_first_test_outside_the_declared_families_is_named(tmp_path):
    toml = GOOD_TOML + 'run_first = ["test_stack.py::a[x]", "test_fp.py::b"]\n'
    _write_mutant(tmp_path, "bad", toml, [])
    with pytest.raises(HarnessError, match=r"bad/mutant.toml: run_first\[1\]: 'test_fp.py::b'"):
        mutate.load_mutants(root=tmp_path)


def test_every_run_first_test_exists_at_the_default_vcpu_counts():
    """A renamed test would silently send its mutant down the slow path."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "testcases", "--collect-only", "-q"]
        + ["-p", "no:cacheprovider", f"--smp={mutate.RunOptions(Path()).smp}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    collected = {line.removeprefix("testcases/") for line in listed if "::" in line}
    wanted = {(m.name, n) for m in mutate.load_mutants() for n in m.run_first}
    assert len(wanted) >= len(mutate.load_mutants())
    assert [w for w in wanted if w[1] not in collected] == []


def test_series_without_the_default_series_is_refused(tmp_path):
    directory = _write_mutant(tmp_path, "bad", GOOD_TOML, ["0001-bug.patch"])
    (directory / "0001-bug.patch").write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(mutate.MutantError, match="must list the default series"):
        mutate.load_mutants(root=tmp_path)


def test_unknown_mutant_name(tmp_path):
    with pytest.raises(mutate.MutantError, match="unknown mutant"):
        mutate.load_mutants(("nope",), root=tmp_path)


def _result(module, outcome, name="t", message="boom"):
    """The plugin records the exception's class as a property; here it is the word before
    the colon of the message when that names one."""
    head = message.split(":", 1)[0]
    props = {"exception": f"x.{head}"} if ":" in message and head.endswith("Error") else {}
    return report.TestResult(name, f"testcases.{module}", outcome, 0.1, message, props)


def test_classify_counts_failures_crashes_and_errors_but_not_xfails_or_infra_errors():
    tests = [
        _result("test_stack", "passed"),
        _result("test_stack", "xfail"),
        _result("test_fp", "crashed", "c", "kernel BUG"),
        _result("test_riprel", "passed"),
        _result("test_threads", "error", "e", "BootError: no SSH"),
        _result("test_riprel", "error", "i", "InfraError: qemu missing"),
        _result("test_riprel", "failed", "v", "ValueError: non-hexadecimal number"),
    ]
    verdicts = mutate.classify(tests, mutate.FAMILIES)
    assert verdicts["stack"].ran and not verdicts["stack"].caught
    assert verdicts["fp"].caught and verdicts["fp"].failing == ["c: kernel BUG"]
    assert verdicts["threads"].caught and not verdicts["riprel"].caught
    assert len(verdicts["riprel"].harness_errors) == 2


def test_a_guest_quoting_infraerror_is_still_a_catch():
    quoted = report.TestResult(
        "q",
        "testcases.test_stack",
        "failed",
        0.1,
        "AssertionError: the program printed InfraError: boom",
        {"exception": "builtins.AssertionError"},
    )
    assert mutate.classify([quoted], mutate.FAMILIES)["stack"].caught


def test_a_declared_family_that_passes_or_did_not_run_is_a_miss():
    result = mutate.MutantResult("m", "mech", ("stack", "fp"))
    result.families = mutate.classify([_result("test_stack", "failed")], ("stack", "fp"))
    assert not result.ok and result.missed == []  # fp did not run at all
    result.families = mutate.classify(
        [_result("test_stack", "failed"), _result("test_fp", "passed")], ("stack", "fp")
    )
    assert not result.ok and result.missed == ["fp"]
    result.families = mutate.classify(
        [_result("test_stack", "failed"), _result("test_fp", "failed")], ("stack", "fp")
    )
    assert result.ok


def test_table_marks_declared_families_and_lists_failing_titles():
    result = mutate.MutantResult("push-any-rex", "analysis", ("stack",), build_seconds=12.5)
    result.families = mutate.classify(
        [_result("test_stack", "failed", "test_x[grow]"), _result("test_fp", "passed")],
        mutate.FAMILIES,
    )
    table = mutate.format_table([result])
    row = next(line for line in table.splitlines() if line.startswith("push-any-rex"))
    assert "CAUGHT*" in row and "missed" in row and "12.5" in row
    assert "push-any-rex / stack: 1 failing: test_x[grow]" in table
    assert "**caught (1)**" in mutate.format_markdown([result])


def test_baseline_flake_rate():
    baseline = mutate.Baseline(2, [100, 100], [[], ["t: x"]], [1.0, 1.0])
    assert baseline.flake_rate == pytest.approx(0.005) and not baseline.clean


def test_baseline_only_runs_the_given_kernel_and_series_and_no_mutant(monkeypatch, tmp_path):
    asked = []

    def fake_suite(kernel, series, families, junit, options, node_ids=()):
        asked.append((kernel, series, families, node_ids))
        return [_result("test_stack", "xfail"), _result("test_fp", "passed")], 5.0

    monkeypatch.setattr(mutate, "run_suite", fake_suite)
    monkeypatch.setattr(mutate, "load_mutants", lambda names: pytest.fail("loaded mutants"))
    outcome = mutate.run(
        mutate.MutateRequest(
            results_dir=tmp_path,
            baseline_runs=2,
            baseline_kernel="debian:6.12",
            baseline_series="none",
            baseline_only=True,
        )
    )
    assert asked == [("debian:6.12", "none", None, ())] * 2
    assert outcome.ok and outcome.results == [] and outcome.baseline.clean
    text = mutate.format_outcome(outcome)
    assert "baseline (debian:6.12, series none): 2 run(s) of 2 tests, 0 unexpected" in text
    assert "declared" not in text and not (tmp_path / "mutate.md").exists()


@pytest.mark.parametrize(
    "request_",
    [
        {"mutants": ("push-any-rex",), "baseline_runs": 1, "baseline_only": True},
        {"baseline_runs": 0, "baseline_only": True},
        {"baseline_runs": -1},
        {"baseline_runs": 1, "baseline_kernel": "debian:6.12"},
        {"baseline_runs": 1, "baseline_series": "none"},
    ],
)
def test_baseline_options_refused_where_they_would_mislead(tmp_path, request_):
    with pytest.raises(HarnessError, match="--baseline"):
        mutate.run(mutate.MutateRequest(results_dir=tmp_path, **request_))


class _FakeRuns:
    """run_suite stand-in: what each pytest run would have found, and what was asked."""

    def __init__(self, run_first_outcomes, family_outcomes):
        self.run_first_outcomes = run_first_outcomes  # None: the run wrote no results
        self.family_outcomes = family_outcomes
        self.calls = []

    def __call__(self, kernel, series, families, junit, options, node_ids=()):
        self.calls.append((families, node_ids))
        if node_ids:
            if self.run_first_outcomes is None:
                raise HarnessError("pytest wrote no results")
            return [_result(m, o) for m, o in self.run_first_outcomes], 1.0
        return [_result(f"test_{f}", self.family_outcomes[f]) for f in families], 10.0


def _run_mutant(monkeypatch, tmp_path, fake, scope="declared", run_first=True):
    from harness.build import kernel

    class Built:
        cached = True

    monkeypatch.setattr(kernel, "build", lambda request: Built())
    monkeypatch.setattr(mutate, "run_suite", fake)
    mutant = _mutant(tmp_path)
    options = mutate.RunOptions(tmp_path / "results", scope=scope, run_first=run_first)
    return mutate.run_mutant(mutant, options)


def _mutant(tmp_path, patch=b"--- a/x\n+++ b/x\n"):
    directory = tmp_path / "m"
    directory.mkdir(exist_ok=True)
    (directory / "series").write_text("0001-bug.patch\n")
    (directory / "0001-bug.patch").write_bytes(patch)
    (directory / "mutant.toml").write_text("# the spec\n")
    return mutate.Mutant(
        "m",
        directory,
        "s",
        "debian:6.1",
        "mech",
        "f.c",
        ("stack", "fp"),
        ("test_stack.py::a[x]", "test_fp.py::b"),
    )


def test_a_family_its_run_first_tests_catch_is_not_run_again(monkeypatch, tmp_path):
    fake = _FakeRuns([("test_stack", "failed"), ("test_fp", "passed")], {"fp": "failed"})
    result = _run_mutant(monkeypatch, tmp_path, fake)
    assert fake.calls == [(None, ("test_stack.py::a[x]", "test_fp.py::b")), (("fp",), ())]
    assert result.ok and result.families["stack"].by_run_first
    assert not result.families["fp"].by_run_first and result.test_seconds == 11.0


def test_a_run_first_test_that_passes_leaves_the_verdict_to_the_whole_family(monkeypatch, tmp_path):
    fake = _FakeRuns(
        [("test_stack", "passed"), ("test_fp", "passed")], {"stack": "passed", "fp": "failed"}
    )
    result = _run_mutant(monkeypatch, tmp_path, fake)
    assert fake.calls[1] == (("stack", "fp"), ())
    assert result.missed == ["stack"] and not result.ok


def test_run_first_without_results_or_switched_off_runs_the_whole_families(monkeypatch, tmp_path):
    fake = _FakeRuns(None, {"stack": "failed", "fp": "failed"})
    assert _run_mutant(monkeypatch, tmp_path, fake).ok
    assert fake.calls[-1] == (("stack", "fp"), ())
    for scope, run_first in (("declared", False), ("all", True)):
        fake = _FakeRuns([("test_stack", "failed")], {f: "failed" for f in mutate.FAMILIES})
        _run_mutant(monkeypatch, tmp_path, fake, scope, run_first)
        assert [c[1] for c in fake.calls] == [()]


def test_resume_takes_a_saved_result_only_when_patches_and_options_match(monkeypatch, tmp_path):
    from harness.build import kernel

    class Built:
        cached = True

    monkeypatch.setattr(kernel, "build", lambda request: Built())
    fake = _FakeRuns([], {f: ("failed" if f == "stack" else "passed") for f in mutate.FAMILIES})
    monkeypatch.setattr(mutate, "run_suite", fake)
    mutant = _mutant(tmp_path)
    options = mutate.RunOptions(tmp_path / "results", scope="all", resume=True)
    first = mutate.run_mutant(mutant, options)
    assert len(fake.calls) == 1 and not first.resumed_from
    assert (tmp_path / "results" / "m" / mutate.RESULT_FILE).is_file()

    again = mutate.run_mutant(mutant, options)  # the same: taken, not run
    assert len(fake.calls) == 1 and again.resumed_from
    assert again.families == first.families and again.breaks == first.breaks
    assert again.families["stack"].caught and not again.families["fp"].caught
    text = mutate.format_outcome(mutate.MutateOutcome([again], None, 1.0, tmp_path))
    assert f"1 of 1 mutant(s) from saved results (harness {again.resumed_from}): m" in text

    # another --smp, the option off, or a changed patch: run again
    for changed_options in (
        mutate.RunOptions(tmp_path / "results", scope="all", smp="1", resume=True),
        mutate.RunOptions(tmp_path / "results", scope="all", resume=False),
    ):
        mutate.run_mutant(mutant, changed_options)
    assert len(fake.calls) == 3
    changed = _mutant(tmp_path, b"--- a/x\n+++ b/x\n@@ another bug\n")
    assert mutate.run_mutant(changed, options).resumed_from == ""
    assert len(fake.calls) == 4


def test_resume_runs_a_mutant_whose_saved_result_was_an_error(monkeypatch, tmp_path):
    from harness.build import kernel

    def broken_build(request):
        raise HarnessError("make failed")

    monkeypatch.setattr(kernel, "build", broken_build)
    mutant = _mutant(tmp_path)
    options = mutate.RunOptions(tmp_path / "results", scope="all", resume=True)
    assert mutate.run_mutant(mutant, options).error.startswith("build failed")
    assert mutate.saved_result(mutant, options) is None


def test_resume_needs_the_results_directory(tmp_path):
    with pytest.raises(HarnessError, match="--results DIR"):
        mutate.run(mutate.MutateRequest(resume=True))


def test_saved_only_prints_the_saved_results_and_what_is_left_and_runs_nothing(
    monkeypatch, tmp_path
):
    from harness.build import kernel

    class Built:
        cached = True

    monkeypatch.setattr(kernel, "build", lambda request: Built())
    fake = _FakeRuns([], {f: ("failed" if f == "stack" else "passed") for f in mutate.FAMILIES})
    monkeypatch.setattr(mutate, "run_suite", fake)
    (tmp_path / "other").mkdir()
    done = _mutant(tmp_path)
    left = dataclasses.replace(_mutant(tmp_path / "other"), name="left")
    results = tmp_path / "results"
    mutate.run_mutant(done, mutate.RunOptions(results, scope="all", resume=True))
    assert len(fake.calls) == 1
    monkeypatch.setattr(mutate, "load_mutants", lambda names: [done, left])
    monkeypatch.setattr(mutate, "run_mutant", lambda *a: pytest.fail("ran a mutant"))
    outcome = mutate.run(mutate.MutateRequest(results_dir=results, saved_only=True))
    assert [r.name for r in outcome.results] == ["m"] and outcome.pending == ["left"]
    assert outcome.results[0].families["stack"].caught  # fp, declared too, missed it:
    assert not outcome.ok and outcome.problems() == ["mutant m: not caught by fp"]
    assert "1 of 2 mutants have a saved result; still to run: left" in mutate.format_outcome(
        outcome
    )
    with pytest.raises(HarnessError, match="--results DIR"):
        mutate.run(mutate.MutateRequest(saved_only=True))
    with pytest.raises(HarnessError, match="without --baseline-runs"):
        mutate.run(mutate.MutateRequest(results_dir=results, saved_only=True, baseline_runs=1))
