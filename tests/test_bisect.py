"""Unit tests for harness.jobs.bisect: verdict mapping, voting, failure matching, and the driver
on a synthetic git history with a fake step runner (no builds, no VMs)."""

import subprocess
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from harness import cli
from harness.errors import BuildError, ConfigError, HarnessError, InfraError, PatchError
from harness.jobs import bisect
from harness.jobs.bisect import Built, Run
from harness.results import report

NODE = "testcases.test_riprel::test_riprel_load[smp4]"
OTHER = "testcases.test_threads::test_hits[smp4]"


# -- synthetic JUnit files ---------------------------------------------------------------------


def junit(tmp_path: Path, *cases: tuple) -> list[report.TestResult]:
    """cases: (name, kind, message[, exception class as the plugin records it]) with kind
    passed|failed|crashed|error|skipped."""
    body = []
    for name, kind, message, *exception in cases:
        message = quoteattr(message)
        props = "".join(f'<property name="exception" value="{e}"/>' for e in exception)
        inner = {
            "passed": "",
            "failed": f"<properties>{props}</properties><failure message={message}>trace</failure>",
            "crashed": f'<properties><property name="verdict" value="crashed"/>{props}'
            f"</properties><failure message={message}>trace</failure>",
            "error": f"<properties>{props}</properties><error message={message}>trace</error>",
            "skipped": f'<skipped type="pytest.skip" message={message}/>',
        }[kind]
        module, _, test = name.partition("::")
        body.append(f'<testcase classname="{module}" name="{test}" time="1.5">{inner}</testcase>')
    path = tmp_path / "junit.xml"
    path.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        + "".join(body)
        + "</testsuite></testsuites>"
    )
    return report.read_junit(path)


def test_passing_selection_is_a_pass(tmp_path):
    run = bisect.classify_run(junit(tmp_path, (NODE, "passed", ""), (OTHER, "skipped", "no")), 0)
    assert run.kind == "pass" and not run.failures


def test_failing_test_is_recorded_by_node_id(tmp_path):
    run = bisect.classify_run(junit(tmp_path, (NODE, "failed", "AssertionError: lost hits")), 1)
    assert run.kind == "fail" and run.failures == {(NODE, "")}
    assert "lost hits" in run.detail


def test_crash_keeps_its_title(tmp_path):
    results = junit(
        tmp_path,
        (NODE, "crashed", "crashed: kernel BUG: unable to handle page fault\nexcerpt line"),
    )
    run = bisect.classify_run(results, 1)
    assert run.failures == {(NODE, "crashed: kernel BUG: unable to handle page fault")}


def test_boot_failure_is_untestable(tmp_path):
    results = junit(
        tmp_path,
        (
            NODE,
            "error",
            "failed on setup with \"harness.errors.BootError: Guest 'smp4-multi-1' did not boot\"",
            "harness.errors.BootError",
        ),
    )
    run = bisect.classify_run(results, 1)
    assert run.kind == "untestable" and run.detail.startswith("did not boot")
    assert bisect.vote([run], None)[0] == "skip"


def test_a_guest_quoting_infraerror_does_not_abort_the_bisection(tmp_path):
    """The exception class comes from the plugin's property, not from the message: a
    probed program that prints 'InfraError: ...' (quoted in an assertion) fails the step."""
    results = junit(
        tmp_path,
        (NODE, "failed", "AssertionError: guest said InfraError: x", "builtins.AssertionError"),
    )
    assert bisect.classify_run(results, 1).kind == "fail"


def test_kernel_fixture_exit_is_untestable():
    assert bisect.classify_run([], 3).kind == "untestable"


def test_infra_error_in_a_fixture_aborts(tmp_path):
    results = junit(
        tmp_path,
        (
            NODE,
            "error",
            'failed on setup with "harness.errors.InfraError: qemu-system-x86_64 is not installed"',
            "harness.errors.InfraError",
        ),
    )
    with pytest.raises(InfraError, match="not installed"):
        bisect.classify_run(results, 1)


def test_missing_junit_and_empty_selection_abort(tmp_path):
    with pytest.raises(InfraError, match="no JUnit"):
        bisect.classify_run(None, 1)
    with pytest.raises(bisect.AbortBisect, match="matches no scenario"):
        bisect.classify_run([], 5)


@pytest.mark.parametrize(
    "error, verdict",
    [
        (BuildError("make failed"), "skip"),
        (PatchError("0002 does not apply"), "skip"),
        (ConfigError("CONFIG_X missing"), "skip"),
        (InfraError("disk full"), None),
        (HarnessError("other"), None),
    ],
)
def test_exceptions_map_to_skip_or_abort(error, verdict):
    assert (bisect.skip_reason(error) is not None) == (verdict == "skip")


# -- voting and matching -----------------------------------------------------------------------

PASS = Run("pass")
FAIL = Run("fail", frozenset({(NODE, "")}), "AssertionError")
DIFFERENT = Run("fail", frozenset({(OTHER, "")}))
CRASH = Run("fail", frozenset({(NODE, "crashed: kernel WARNING: in uprobe_notify_resume")}))
NO_BOOT = Run("untestable", detail="did not boot: ...")
REFERENCE = frozenset({(NODE, "")})


def test_all_runs_pass_is_good():
    assert bisect.vote([PASS, PASS, PASS], REFERENCE) == ("good", "passed 3/3 runs", False)


def test_any_matching_failure_is_bad_and_flaky_when_runs_disagree():
    verdict, reason, flaky = bisect.vote([PASS, FAIL, PASS], REFERENCE)
    assert verdict == "bad" and flaky and "1/3" in reason
    assert bisect.vote([FAIL], REFERENCE) == ("bad", "original failure", False)


def test_different_failure_is_skipped():
    verdict, reason, _ = bisect.vote([DIFFERENT], REFERENCE)
    assert verdict == "skip" and reason.startswith("different failure") and OTHER in reason


def test_crash_with_a_different_title_is_a_different_failure():
    reference = frozenset({(NODE, "crashed: kernel BUG: unable to handle page fault")})
    assert bisect.run_kind(CRASH, reference) == "different"
    assert bisect.run_kind(CRASH, CRASH.failures) == "match"
    assert bisect.run_kind(FAIL, reference) == "different", "assertion vs crash"


def test_subset_of_the_original_failures_matches():
    reference = REFERENCE | {(OTHER, "")}
    assert bisect.run_kind(FAIL, reference) == "match"
    assert bisect.run_kind(Run("fail", reference | {("x::y", "")}), reference) == "different"


def test_without_reference_any_failure_is_bad():
    assert bisect.vote([DIFFERENT], None)[0] == "bad"


def test_pass_and_no_boot_is_skip_and_flaky():
    verdict, reason, flaky = bisect.vote([PASS, NO_BOOT], REFERENCE)
    assert (verdict, flaky) == ("skip", True) and reason.startswith("did not boot")


def test_terms_and_step_exit_codes():
    assert [bisect.step_exit_code(v, False) for v in ("good", "bad", "skip")] == [0, 1, 125]
    assert [bisect.step_exit_code(v, True) for v in ("good", "bad", "skip")] == [1, 0, 125]
    assert bisect.git_term("bad", True) == "broken" and bisect.git_term("good", True) == "fixed"
    assert bisect.STEP_ABORT >= 128


def test_parse_bisect_output():
    sha = "a" * 40
    assert bisect.parse_bisect_output(f"{sha} is the first bad commit\ncommit {sha}\n") == (
        "found",
        sha,
        (),
    )
    text = (
        "There are only 'skip'ped commits left to test.\nThe first bad commit could be any "
        f"of:\n{sha}\n{'b' * 40}\nWe cannot bisect more!\n"
    )
    assert bisect.parse_bisect_output(text) == ("inconclusive", "", (sha, "b" * 40))
    assert bisect.parse_bisect_output("Bisecting: 3 revisions left")[0] == "next"


def test_pytest_command(tmp_path):
    options = bisect.ScenarioOptions(
        repo=tmp_path,
        series="none",
        fragments=("/f.config",),
        smp="4",
        selection=("-m", "smp", "-k", "riprel"),
    )
    cmd = bisect.pytest_command(options, f"{tmp_path}@abc", tmp_path / "s.xml")
    assert cmd[1:5] == ["-m", "pytest", "testcases", "-p"]
    assert f"--kernel={tmp_path}@abc" in cmd and "--smp=4" in cmd and "--series=none" in cmd
    assert "--config-fragment=/f.config" in cmd and cmd[-4:] == ["-m", "smp", "-k", "riprel"]


def test_cli_takes_the_selection_after_double_dash():
    args = cli.build_parser().parse_args(
        [
            "bisect",
            "--good",
            "v1",
            "--bad",
            "v2",
            "--repeat",
            "3",
            "--",
            "-m",
            "smp",
            "-k",
            "riprel",
        ]
    )
    assert args.selection == ["-m", "smp", "-k", "riprel"] and args.repeat == 3


# -- the driver on a synthetic history ---------------------------------------------------------

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        GIT + list(args), cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def history(tmp_path, isolated_cache):
    """A user repository with commits c0..c7 on branch 'work', a modified tracked file and an
    untracked one; returns (repo, [sha of c0..c7])."""
    repo = tmp_path / "linux"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "work")
    for i in range(8):
        (repo / "uprobes.c").write_text(f"int version = {i};\n")
        _git(repo, "add", "uprobes.c")
        _git(repo, "commit", "-qm", f"c{i}")
    (repo / "uprobes.c").write_text("work in progress\n")
    (repo / "notes.txt").write_text("untracked\n")
    shas = _git(repo, "rev-list", "--reverse", "HEAD").split()
    return repo, shas


def _state(repo: Path) -> tuple:
    return (
        _git(repo, "rev-parse", "HEAD"),
        _git(repo, "symbolic-ref", "HEAD"),
        _git(repo, "status", "--porcelain"),
        _git(repo, "for-each-ref"),
        (repo / ".git" / "BISECT_LOG").exists(),
        (repo / "uprobes.c").read_text(),
    )


class FakeRunner:
    """Fails NODE from commit `change` on (before it with find_fix); BuildError on `unbuildable`."""

    def __init__(
        self,
        shas,
        change=5,
        unbuildable=(3,),
        find_fix=False,
        images=None,
        different=(),
        raise_at=None,
    ):
        self.index = {sha: i for i, sha in enumerate(shas)}
        self.change, self.unbuildable, self.find_fix = change, unbuildable, find_fix
        self.images, self.different, self.raise_at = images or {}, different, raise_at or {}
        self.built: list[int] = []

    def build(self, sha):
        i = self.index[sha]
        self.built.append(i)
        if i in self.raise_at:
            raise self.raise_at[i]
        if i in self.unbuildable:
            raise BuildError(f"make failed at c{i}")
        return Built(sha, self.images.get(i, f"image-{i}"))

    def test(self, built, index):
        i = self.index[built.commit]
        if i in self.different:
            return Run("fail", frozenset({(OTHER, "")}), "other test broke")
        failing = (i >= self.change) != self.find_fix
        return Run("fail", frozenset({(NODE, "")}), f"lost hits at c{i}") if failing else PASS


def _request(repo, tmp_path, good, bad, find_fix=False, repeat=1):
    options = bisect.ScenarioOptions(repo=repo, repeat=repeat)
    return bisect.BisectRequest(good, bad, options, tmp_path / "results", find_fix)


def test_bisect_names_commit_5_and_skips_3(history, tmp_path):
    repo, shas = history
    before = _state(repo)
    runner = FakeRunner(shas)
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], "work"), runner)
    assert outcome.status == "found" and outcome.culprit == shas[5] and outcome.subject == "c5"
    assert [s.role for s in outcome.steps[:2]] == ["bad endpoint", "good endpoint"]
    by_index = {runner.index[s.commit]: s for s in outcome.steps}
    assert by_index[3].verdict == "skip" and "build failed" in by_index[3].reason
    assert by_index[5].verdict == "bad" and "lost hits at c5" in outcome.excerpt
    assert outcome.same_image_as_parent is False
    assert bisect.exit_code(outcome) == bisect.EXIT_FOUND
    assert "git bisect skip" in outcome.log.read_text()
    assert "--no-checkout" not in outcome.log.read_text()
    assert _state(repo) == before, "the user's checkout must stay untouched"
    text = bisect.format_outcome(outcome)
    assert f"first bad commit: {shas[5]} c5" in text and "build failed" in text


def test_find_fix_on_the_same_history(history, tmp_path):
    repo, shas = history
    before = _state(repo)
    runner = FakeRunner(shas, find_fix=True)
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[7], shas[0], find_fix=True), runner)
    assert outcome.status == "found" and outcome.culprit == shas[5]
    assert "git bisect start '--term-old=broken' '--term-new=fixed'" in outcome.log.read_text()
    assert "lost hits at c4" in outcome.excerpt or "lost hits at c0" in outcome.excerpt
    assert "first fixed commit" in bisect.format_outcome(outcome)
    assert _state(repo) == before


def test_endpoints_in_the_wrong_order_are_refused(history, tmp_path):
    repo, shas = history
    with pytest.raises(HarnessError, match="--find-fix"):
        bisect.run_bisect(_request(repo, tmp_path, shas[7], shas[0]), FakeRunner(shas))


def test_good_endpoint_that_fails_stops_before_bisecting(history, tmp_path):
    repo, shas = history
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[6], shas[7]), FakeRunner(shas))
    assert outcome.status == "endpoint" and "--good" in outcome.message
    assert "original failure" in outcome.message and outcome.log is None
    assert bisect.exit_code(outcome) == bisect.EXIT_ENDPOINT


def test_bad_endpoint_that_passes_or_fails_differently(history, tmp_path):
    repo, shas = history
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[4]), FakeRunner(shas))
    assert outcome.status == "endpoint" and outcome.message.startswith("--bad")
    runner = FakeRunner(shas, different=(0,))
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[7]), runner)
    assert outcome.status == "endpoint" and "different failure" in outcome.message


def test_different_failure_on_the_way_is_skipped(history, tmp_path):
    repo, shas = history
    runner = FakeRunner(shas, different=(4, 6), unbuildable=())
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[7]), runner)
    skipped = [s for s in outcome.steps if s.reason.startswith("different failure")]
    assert skipped and all(s.verdict == "skip" for s in skipped)
    assert outcome.status in ("found", "inconclusive")
    assert outcome.culprit == shas[5] or shas[5] in outcome.candidates


def test_only_skipped_commits_left_is_inconclusive(history, tmp_path):
    repo, shas = history
    runner = FakeRunner(shas, unbuildable=(4, 5))
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[3], shas[6]), runner)
    assert outcome.status == "inconclusive" and set(outcome.candidates) == set(shas[4:7])
    assert bisect.exit_code(outcome) == bisect.EXIT_INCONCLUSIVE


def test_culprit_with_an_identical_kernel_is_flagged(history, tmp_path):
    repo, shas = history
    runner = FakeRunner(shas, images={5: "same", 4: "same"}, unbuildable=())
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[7]), runner)
    assert outcome.culprit == shas[5] and outcome.same_image_as_parent is True
    assert "does not change the built kernel" in bisect.format_outcome(outcome)


def test_parent_is_built_when_the_bisect_never_tested_it(history, tmp_path):
    repo, shas = history
    runner = FakeRunner(shas, change=1, unbuildable=())
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[1]), runner)
    assert outcome.culprit == shas[1] and outcome.same_image_as_parent is False
    runner = FakeRunner(shas, change=3, unbuildable=(2,))
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[1], shas[3]), runner)
    assert outcome.status in ("found", "inconclusive") and outcome.same_image_as_parent is None


def test_infra_error_aborts_resets_and_reports(history, tmp_path):
    repo, shas = history
    before = _state(repo)
    runner = FakeRunner(shas, raise_at={3: InfraError("disk full")})
    outcome = bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[7]), runner)
    assert outcome.status == "aborted" and "infrastructure error: disk full" in outcome.message
    assert bisect.exit_code(outcome) == bisect.EXIT_ABORT == cli.EXIT_INFRA
    assert outcome.log.is_file() and len(outcome.steps) == 2
    _assert_private_clone_reset()
    assert _state(repo) == before


def test_ctrl_c_resets_the_private_clone(history, tmp_path):
    repo, shas = history
    before = _state(repo)
    runner = FakeRunner(shas, raise_at={3: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        bisect.run_bisect(_request(repo, tmp_path, shas[0], shas[7]), runner)
    _assert_private_clone_reset()
    assert (tmp_path / "results" / "bisect.log").is_file()
    assert _state(repo) == before


def _assert_private_clone_reset():
    from harness.paths import cache_dir

    clones = list(cache_dir("bisect").iterdir())
    assert clones and not any((c / ".git" / "BISECT_LOG").exists() for c in clones)


def test_flaky_step_with_repeat(history, tmp_path):
    repo, shas = history

    class Flaky(FakeRunner):
        def test(self, built, index):
            run = super().test(built, index)
            return PASS if self.index[built.commit] == 5 and index == 0 else run

    outcome = bisect.run_bisect(
        _request(repo, tmp_path, shas[0], shas[7], repeat=3), Flaky(shas, unbuildable=())
    )
    assert outcome.culprit == shas[5]
    five = next(s for s in outcome.steps if s.commit == shas[5])
    assert five.verdict == "bad" and five.flaky and len(five.runs) == 2, "stops once bad"
    assert "FLAKY original failure in 1/2 runs" in bisect.format_steps(outcome.steps)
    assert all(len(s.runs) == 3 for s in outcome.steps if s.role.endswith("endpoint"))


def test_cli_bisect_prints_the_culprit_and_the_table(history, tmp_path, monkeypatch, capsys):
    repo, shas = history
    monkeypatch.setattr(bisect, "HarnessRunner", lambda options, steps: FakeRunner(shas))
    code = cli.main(
        [
            "bisect",
            "--kernel",
            str(repo),
            "--good",
            shas[0],
            "--bad",
            "work",
            "--results",
            str(tmp_path / "r"),
            "--",
            "-k",
            "riprel",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"first bad commit: {shas[5]} c5" in out and "bisect log:" in out
    assert "--good endpoint: passed" in out


# -- bisect-step -------------------------------------------------------------------------------


def test_bisect_step_judges_head(history, tmp_path):
    repo, shas = history
    options = bisect.ScenarioOptions(repo=repo)
    assert bisect.run_step(options, FakeRunner(shas))[1] == 1
    assert bisect.run_step(options, FakeRunner(shas), find_fix=True)[1] == 0
    assert bisect.run_step(options, FakeRunner(shas, unbuildable=(7,)))[1] == 125
    reference = tmp_path / "ref.xml"
    reference.write_text(
        f'<testsuite><testcase classname="{OTHER.split("::")[0]}" name="'
        f'{OTHER.split("::")[1]}"><failure message="x"/></testcase></testsuite>'
    )
    result, code = bisect.run_step(options, FakeRunner(shas), reference_junit=reference)
    assert code == 125 and result.reason.startswith("different failure")


def test_bisect_step_aborts_git_bisect_run_on_infra_errors(history, monkeypatch, capsys):
    repo, shas = history
    runner = FakeRunner(shas, raise_at={7: InfraError("qemu-system-x86_64 is not installed")})
    monkeypatch.setattr(bisect, "HarnessRunner", lambda options, results: runner)
    code = cli.main(
        [
            "bisect-step",
            "--kernel",
            str(repo),
            "--results",
            str(repo.parent / "r"),
            "--",
            "-k",
            "riprel",
        ]
    )
    assert code == bisect.STEP_ABORT == 128
    assert "infrastructure error: qemu-system-x86_64" in capsys.readouterr().err


def test_kernel_digest_ignores_the_release_string(tmp_path):
    from types import SimpleNamespace

    from harness.jobs.bisect import kernel_digest

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"\x7fELF code Linux version 6.1.0-g111111111111 more code")
    b.write_bytes(b"\x7fELF code Linux version 6.1.0-g222222222222 more code")
    c.write_bytes(b"\x7fELF CODE Linux version 6.1.0-g333333333333 more code")
    built = [
        SimpleNamespace(vmlinux=p, bzimage=p, release=f"6.1.0-g{d * 12}")
        for p, d in ((a, "1"), (b, "2"), (c, "3"))
    ]
    assert kernel_digest(built[0]) == kernel_digest(built[1])
    assert kernel_digest(built[0]) != kernel_digest(built[2])
