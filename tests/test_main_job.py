"""The main job as a stage: a request in, a status out (kernel build and pytest faked)."""

from types import SimpleNamespace

import pytest

from harness.jobs import main as main_job
from harness.jobs import scenario_run

JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
    '<testcase classname="testcases.test_stack" name="t" time="1">'
    '<properties><property name="kernel_identity" value="{identity}"/>{props}'
    "</properties>{body}</testcase></testsuite></testsuites>"
)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    built = SimpleNamespace(identity="K1", label="debian:6.1 (fake)", series="s", release="6.1.0")
    monkeypatch.setattr(main_job.kernel, "build", lambda request, progress=None: built)
    monkeypatch.setattr(main_job.sources, "pinned_spec", lambda text: text or "debian:6.1")
    seen = {}

    def play(status, identity="K1", body="", props=""):
        def run(cmd, junit, **kw):
            seen["cmd"] = cmd
            junit.unlink(missing_ok=True)  # as the real one does
            if status != "no-junit":
                junit.write_text(JUNIT.format(identity=identity, body=body, props=props))
            return scenario_run.Finished(0 if status == "no-junit" else status, 1.0, junit, None)

        monkeypatch.setattr(main_job.scenario_run, "run", run)
        return main_job.run(
            main_job.MainRequest(kernel=None, series=None, results=str(tmp_path / "r"))
        )

    return play, seen


def test_statuses(fake, tmp_path):
    play, seen = fake
    assert play(0).status is main_job.Status.PASSED
    assert f"--basetemp={tmp_path / 'r' / 'tmp'}" in seen["cmd"]
    assert play(1, body='<failure message="lost hits"/>').status is main_job.Status.FAILED
    assert play(5).status is main_job.Status.USAGE
    assert play("no-junit").status is main_job.Status.INFRA
    infra = play(
        1,
        body='<error message="x"/>',
        props='<property name="exception" value="harness.errors.InfraError"/>',
    )
    assert infra.status is main_job.Status.INFRA


def test_a_report_about_another_kernel_is_refused(fake):
    play, _ = fake
    result = play(0, identity="K2")
    assert result.status is main_job.Status.INFRA and "K2" in result.problem
    assert result.report is None


def test_guest_text_reaches_the_terminal_without_its_escape_sequences(capsys, monkeypatch):
    from harness import cli
    from harness.errors import BootError

    def boom(args):
        raise BootError("guest console: \x1b]0;owned\x07\x1b[2Jlogin:\r\n")

    monkeypatch.setattr(cli, "cmd_main", boom)
    monkeypatch.setattr("sys.argv", ["harness", "main"])
    assert cli.main(["main"]) == cli.EXIT_FAIL
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    assert "^[]0;owned^G^[[2Jlogin:^M\n" in err
