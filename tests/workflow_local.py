"""Run a GitHub Actions workflow's jobs on this machine, for the tests: every `run:` step is
executed as GitHub executes it (bash -eo pipefail, the workflow/job/step environment,
GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files), each job in a fresh workspace, and the `uses:`
steps are played by stand-ins (checkout: a copy of the tree the test prepared; the caches
and artefacts: directories that outlive the jobs, as on GitHub).

Expressions (`${{ ... }}`) are not evaluated generally: the test names the value of every
expression the workflow uses, and an expression it does not know is an error, so a changed
workflow cannot silently run with a guessed value."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


@dataclass
class StepResult:
    name: str
    status: str  # success, failure, skipped
    exit_code: int = 0
    output: str = ""


@dataclass
class JobResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "failure" if any(s.status == "failure" for s in self.steps) else "success"

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)


class LocalRunner:
    """`values`: {expression text: value} for everything but `env.*`, `matrix.*`,
    `needs.<job>.outputs.*` and `steps.<id>.outputs.*`, which come from the run itself."""

    def __init__(
        self,
        workflow: dict,
        checkout: Path,
        values: dict[str, str],
        store: Path,
        timeout: float = 3600,
    ):
        self.workflow, self.checkout, self.values = workflow, checkout, values
        self.store = store
        self.caches, self.artifacts = store / "caches", store / "artifacts"
        self.timeout = timeout
        self.needs: dict[str, JobResult] = {}
        self.workspace = checkout
        self.summary = store / "step-summary.md"

    # -- expressions -------------------------------------------------------------------------

    def evaluate(self, text, env: dict[str, str], matrix: dict, steps: dict) -> str:
        def one(match: re.Match) -> str:
            expr = match.group(1)
            if expr in self.values:
                return str(self.values[expr])
            head, _, rest = expr.partition(".")
            if head == "env" and rest in env:
                return env[rest]
            if head == "matrix" and rest in matrix:
                return str(matrix[rest])
            parts = expr.split(".")
            if head == "needs" and len(parts) == 4 and parts[2] == "outputs":
                return self.needs[parts[1]].outputs[parts[3]]
            if head == "steps" and len(parts) == 4 and parts[2] == "outputs":
                return steps.get(parts[1], {}).get(parts[3], "")
            raise KeyError(
                f"the workflow uses ${{{{ {expr} }}}}, which the test gives no value for"
            )

        return EXPRESSION.sub(one, str(text))

    def condition(self, text, failed: bool) -> bool:
        if text is None:
            return not failed  # success()
        expr = EXPRESSION.fullmatch(str(text).strip())
        expr = expr.group(1) if expr else str(text).strip()
        if expr not in self.values:
            raise KeyError(f"the workflow's condition `{expr}` has no value in the test")
        return self.values[expr] in (True, "true")

    # -- jobs ----------------------------------------------------------------------------------

    def run_job(
        self, job_id: str, matrix: dict | None = None, extra_env: dict[str, str] | None = None
    ) -> JobResult:
        job = self.workflow["jobs"][job_id]
        matrix = matrix or {}
        result = JobResult(job_id)
        runs = self.store / "jobs"
        runs.mkdir(parents=True, exist_ok=True)
        self.workspace = runs / f"{len(list(runs.iterdir())) + 1}-{job_id}" / "workspace"
        shutil.copytree(self.checkout, self.workspace, symlinks=True)
        env = dict(os.environ)
        env.update(extra_env or {})
        for scope in (self.workflow.get("env", {}), job.get("env", {})):
            for key, value in scope.items():
                env[key] = self.evaluate(value, env, matrix, {})
        steps: dict[str, dict[str, str]] = {}
        failed = False
        for number, step in enumerate(job["steps"], start=1):
            name = step.get("name") or step.get("uses") or f"step {number}"
            if not self.condition(step.get("if"), failed):
                result.steps.append(StepResult(name, "skipped"))
                continue
            step_env = dict(env)
            for key, value in step.get("env", {}).items():
                step_env[key] = self.evaluate(value, step_env, matrix, steps)
            if "run" in step:
                outcome, outputs = self._run(step, step_env, name, number)
                if step.get("id"):
                    steps[step["id"]] = outputs
            else:
                with_ = {
                    k: self.evaluate(v, step_env, matrix, steps)
                    for k, v in step.get("with", {}).items()
                }
                outcome = self._uses(step["uses"].split("@")[0], with_, name)
            result.steps.append(outcome)
            failed = failed or outcome.status == "failure"
        for key, value in job.get("outputs", {}).items():
            result.outputs[key] = self.evaluate(value, env, matrix, steps)
        self.needs[job_id] = result
        return result

    def _run(self, step: dict, env: dict[str, str], name: str, number: int):
        if EXPRESSION.search(step["run"]):
            raise AssertionError(
                f"step {name!r}: an expression inside `run:` (pass it through `env:`)"
            )
        temp = self.workspace.parent / "runner-temp"
        temp.mkdir(exist_ok=True)
        script, output = temp / f"step{number}.sh", temp / f"output{number}"
        script.write_text(step["run"])
        output.write_text("")
        env = {
            **env,
            "GITHUB_OUTPUT": str(output),
            "RUNNER_TEMP": str(temp),
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "GITHUB_WORKSPACE": str(self.workspace),
        }
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=self.workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
        )
        outputs = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
        )
        status = "success" if done.returncode == 0 else "failure"
        return StepResult(name, status, done.returncode, done.stdout + done.stderr), outputs

    def _uses(self, action: str, with_: dict[str, str], name: str) -> StepResult:
        paths = [
            self.workspace / p.strip() for p in with_.get("path", "").splitlines() if p.strip()
        ]
        if action in ("actions/checkout", "actions/cache"):
            return StepResult(name, "success", output="stand-in: nothing to do here")
        if action == "actions/cache/restore":
            keys = [with_["key"]] + [
                k.strip() for k in with_.get("restore-keys", "").splitlines() if k.strip()
            ]
            saved = (
                sorted(self.caches.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
                if self.caches.is_dir()
                else []
            )
            for key in keys:
                hit = next((p for p in saved if p.name == key or p.name.startswith(key)), None)
                if hit is not None:
                    shutil.copytree(hit, paths[0], dirs_exist_ok=True)
                    return StepResult(name, "success", output=f"restored {hit.name}")
            return StepResult(name, "success", output="cache miss")
        if action == "actions/cache/save":
            target = self.caches / with_["key"]
            if not target.exists():  # a cache key is written once
                shutil.copytree(paths[0], target)
            return StepResult(name, "success", output=f"saved {target.name}")
        if action == "actions/upload-artifact":
            target = self.artifacts / with_["name"]
            existing = [p for p in paths if p.exists()]
            if not existing and with_.get("if-no-files-found") == "error":
                return StepResult(name, "failure", 1, "no files found")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for path in existing:
                if path.is_dir() and len(paths) == 1:
                    shutil.copytree(path, target, dirs_exist_ok=True)
                else:
                    shutil.copy2(path, target / path.name)
            return StepResult(name, "success", output=f"uploaded {target.name}")
        if action == "actions/download-artifact":
            for artifact in sorted(self.artifacts.glob("*")):
                if fnmatch.fnmatch(artifact.name, with_.get("pattern", with_.get("name", "*"))):
                    shutil.copytree(artifact, paths[0] / artifact.name, dirs_exist_ok=True)
            return StepResult(name, "success")
        raise KeyError(f"no local stand-in for action {action!r}")
