"""The sweep's verdict handling: known bugs, the summary table, JSON (no guest here)."""

import json
from pathlib import Path

import pytest

from harness.probing import transparency
from harness.sweep import corpus as sweep_corpus
from harness.sweep import runner as sweep


class FakeKernel:
    spec = "debian:6.1"
    metadata = None
    label = "debian:6.1"
    series = ""


def _form(name, klass="onebyte", text="nop"):
    return sweep_corpus.Form(name, klass, bytes.fromhex("90"), False, b"", text)


def _result(name, outcome, detail="", klass="onebyte"):
    return sweep.FormResult(_form(name, klass), transparency.CaseVerdict(name, outcome, detail))


def test_known_bug_patterns_explain_sweep_differences_only_where_they_match():
    results = [
        _result("onebyte-9c", "differs", "stk[121..121] differs"),
        _result("onebyte-f3a4", "hits", "probe hit 5 times, expected 1"),
        _result("onebyte-01d1", "differs", "rax: 1 != 2"),
        _result("onebyte-9d", "identical"),
    ]
    sweep.attach_known_bugs(results, FakeKernel())
    by_name = {r.form.name: r for r in results}
    assert "pushf" in by_name["onebyte-9c"].known_bug
    assert "iteration" in by_name["onebyte-f3a4"].known_bug
    assert by_name["onebyte-01d1"].known_bug == ""
    assert by_name["onebyte-9d"].known_bug == ""  # identical: nothing to explain


def _report(results):
    from collections import Counter

    return sweep.SweepReport(
        "debian:6.1",
        results,
        len(results),
        100,
        Counter({"undefined in 64-bit mode (capstone)": 90}),
        12.0,
        1,
    )


def test_report_counts_per_class_and_lists_unexpected_differences():
    results = [
        _result("onebyte-01d1", "differs", "rax: 1 != 2"),
        _result("onebyte-00d1", "identical"),
        _result("sse-0f58d1", "emulator", "host disagrees", klass="sse"),
        _result("x87-d9e8", "refused", "enable: 524", klass="x87"),
    ]
    report = _report(results)
    assert [r.form.name for r in report.unexpected()] == ["onebyte-01d1"]
    assert report.known() == {}
    assert report.unexpected("sse") == []  # emulator verdicts are not differences
    text = sweep.format_report(report)
    assert "onebyte" in text and "emulator" in text and "refused: enable: 524 x1" in text
    assert "1 difference(s), 1 not in the known-bugs table" in text
    assert "rax: 1 != 2" in text


def test_json_has_every_verdict_and_the_form_of_differences(tmp_path):
    results = [_result("onebyte-01d1", "differs", "rax"), _result("onebyte-00d1", "identical")]
    out = tmp_path / "s.json"
    sweep.write_json(_report(results), out)
    data = json.loads(Path(out).read_text())
    assert data["forms"] == 2 and data["table"]["onebyte"] == {"differs": 1, "identical": 1}
    differing = next(r for r in data["results"] if r["name"] == "onebyte-01d1")
    assert differing["form"]["head"] == "90" and "form" not in data["results"][1]


def test_known_differences_are_counted_per_bug_and_class():
    results = [
        _result("onebyte-9c", "differs", "stk"),
        _result("onebyte-f3a4", "hits", "5"),
        _result("onebyte-f3a5", "hits", "5"),
        _result("onebyte-01d1", "differs", "rax"),
        _result("onebyte-f3a6", "identical"),
    ]
    for result, bug in zip(results, ["pushf TF", "rep", "rep", "", ""], strict=True):
        result.known_bug = bug
    report = _report(results)
    assert report.known("onebyte") == {"rep": 2, "pushf TF": 1}
    assert report.known("sse") == {}
    assert [r.form.name for r in report.unexpected("onebyte")] == ["onebyte-01d1"]


def test_an_applying_entry_whose_forms_all_ran_identical_is_stale():
    # pushf (onebyte-*9c) is a known bug on a kernel without the fix: identical = stale
    results = [
        _result("onebyte-9c", "identical"),
        _result("onebyte-489c", "identical"),
        _result("onebyte-01d1", "identical"),
    ]
    states: dict = {}
    stale = sweep.attach_known_bugs(results, FakeKernel(), states)
    assert list(stale) == ["onebyte"]
    assert "pushf" in stale["onebyte"][0] and "2 matching forms ran" in stale["onebyte"][0]
    assert states == {"onebyte": {"sweep:onebyte-*9c": "absent"}}  # for the nightly


def test_an_entry_that_shows_or_does_not_apply_is_not_stale():
    shows = [_result("onebyte-9c", "differs", "stk"), _result("onebyte-489c", "identical")]
    states: dict = {}
    assert sweep.attach_known_bugs(shows, FakeKernel(), states) == {}
    assert states == {"onebyte": {"sweep:onebyte-*9c": "showed"}}

    class FixedUpstream(FakeKernel):  # 41 90 is fixed upstream since 7.2
        spec, label, release = "debian:7.3", "debian:7.3", "7.3.0-rc7"

    identical = [_result("branch-4190", "identical", klass="branch")]
    assert sweep.attach_known_bugs(identical, FixedUpstream()) == {}
    assert "branch" in sweep.attach_known_bugs(identical, FakeKernel())
    # a form the emulator cannot judge is no evidence either way
    assert sweep.attach_known_bugs([_result("onebyte-9c", "emulator")], FakeKernel()) == {}


def _batched_forms(count):
    return [_form(f"onebyte-{i:04x}") for i in range(count)]


def test_several_guests_share_the_batches(monkeypatch):
    ran = {}

    def run_batch(guest, number, total, chunk, host_flags, phases):
        ran.setdefault(guest, []).append(number)
        verdicts = {f.name: transparency.CaseVerdict(f.name, "identical") for f in chunk}
        return verdicts, {}

    monkeypatch.setattr(sweep, "_run_batch", run_batch)
    verdicts, batches = sweep.run_sweep(["a", "b"], _batched_forms(10), batch=2)
    assert batches == 5 and len(verdicts) == 10
    assert sorted(n for numbers in ran.values() for n in numbers) == [1, 2, 3, 4, 5]


def test_a_guest_that_dies_stops_and_the_others_go_on(monkeypatch):
    def run_batch(guest, number, total, chunk, host_flags, phases):
        if guest == "dies":
            raise sweep._MachineDied("Kernel panic")
        return {f.name: transparency.CaseVerdict(f.name, "identical") for f in chunk}, {}

    monkeypatch.setattr(sweep, "_run_batch", run_batch)
    verdicts, _ = sweep.run_sweep(["dies", "lives"], _batched_forms(10), batch=2)
    outcomes = sorted(v.outcome for v in verdicts.values())
    assert outcomes == ["crashed"] * 2 + ["identical"] * 8
    crashed = [v for v in verdicts.values() if v.outcome == "crashed"]
    assert all("Kernel panic" in v.detail for v in crashed)
    # alone, a dying guest leaves the batches after its own unrun
    verdicts, _ = sweep.run_sweep(["dies"], _batched_forms(6), batch=2)
    assert [v.outcome for v in verdicts.values()].count("missing") == 4
    assert all("batch 1" in v.detail for v in verdicts.values())


def test_an_error_in_one_guest_is_raised(monkeypatch):
    def run_batch(guest, number, total, chunk, host_flags, phases):
        raise sweep.HarnessError("did not link")

    monkeypatch.setattr(sweep, "_run_batch", run_batch)
    with pytest.raises(sweep.HarnessError, match="did not link"):
        sweep.run_sweep(["a", "b"], _batched_forms(4), batch=2)


def test_the_emulator_check_runs_only_the_odd_cases_and_keeps_their_verdicts():
    """The second unprobed run and the TF run name the forms that were not identical (the
    driver runs the named cases only); a form whose runs agree keeps its verdict. The guest
    is faked: the program runs on the host."""
    import subprocess

    from harness.machine.ssh import Result
    from harness.probing import insn

    forms = [
        sweep_corpus.Form("sw-add", "onebyte", bytes.fromhex("4801d8"), False, b"", "add rax, rbx"),
        sweep_corpus.Form("sw-xor", "onebyte", bytes.fromhex("4831c9"), False, b"", "xor rcx, rcx"),
    ]
    program = insn.build_program([sweep_corpus.to_case(f) for f in forms], "emucheck")
    asked = []

    class Guest:
        def run(self, cmd, timeout=None):
            asked.append(cmd[1:])
            out = subprocess.run([str(program.binary), *cmd[1:]], capture_output=True, text=True)
            return Result(out.returncode, out.stdout, out.stderr)

    native = insn.parse_output(
        subprocess.run([str(program.binary), "--twice"], capture_output=True, text=True).stdout
    )
    states = {f.name: [(native[f.name], native[f.name])] for f in forms}
    verdicts = {
        "sw-add": transparency.CaseVerdict("sw-add", "differs", "rax: 1 != 2", 2),
        "sw-xor": transparency.CaseVerdict("sw-xor", "identical", "", 2),
    }
    checked = sweep.check_emulator(
        Guest(), "/tmp/p", program, forms, verdicts, states, sweep._host_cpu_flags()
    )
    assert asked == [["--twice", "sw-add"], ["--tf", "sw-add"]]
    assert checked == verdicts  # the same state twice, TF stops where the CPU stops
