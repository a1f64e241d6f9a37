"""The main job: build the kernel, run every scenario on it in a pytest child, write a
report. A request in, a result out; the command line (cli.cmd_main) maps its status to an
exit code."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from pathlib import Path

from harness.build import kernel, sources
from harness.jobs import scenario_run
from harness.progress import Progress
from harness.results import report


class Status(enum.Enum):
    PASSED = "passed"  # every selected scenario passed (or failed as known)
    FAILED = "failed"  # a scenario found something
    USAGE = "usage"  # the selection matches no scenario
    INFRA = "infra"  # the harness could not judge the kernel


@dataclass(frozen=True)
class MainRequest:
    kernel: str | None
    series: str | None
    fragments: tuple[str, ...] = ()
    smp: str = "1,4"
    accel: str = "auto"
    jobs: int = 0
    results: str | None = None
    pytest_args: tuple[str, ...] = ()

    def pinned(self) -> MainRequest:
        """Spelled so that the pytest child (which runs from the repository root, later)
        builds or finds exactly what this process built: a git tree's absolute path at its
        commit, a relative series or fragment resolved."""
        series = self.series
        if series is not None and Path(series).exists():
            series = str(Path(series).resolve())
        return MainRequest(
            sources.pinned_spec(self.kernel),
            series,
            tuple(str(Path(f).resolve()) for f in self.fragments),
            self.smp,
            self.accel,
            self.jobs,
            self.results,
            self.pytest_args,
        )


@dataclass(frozen=True)
class MainResult:
    status: Status
    problem: str = ""  # what went wrong, for INFRA
    results: list = field(default_factory=list)
    summary: str = ""
    report: Path | None = None
    junit: Path | None = None


def run(request: MainRequest, progress: Progress | None = None) -> MainResult:
    progress = progress or Progress.auto()
    request = request.pinned()
    built = kernel.build(
        kernel.BuildRequest(
            kernel=request.kernel or "",
            series=request.series,
            fragments=request.fragments,
            jobs=request.jobs,
        ),
        progress,
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = Path(request.results or Path("results") / stamp).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    junit = results_dir / "junit.xml"
    # the VMs' console logs (linked from the report) stay with the results, not in pytest's
    # rotating /tmp/pytest-of-USER directories
    basetemp = (
        ()
        if any(a.startswith("--basetemp") for a in request.pytest_args)
        else (f"--basetemp={results_dir / 'tmp'}",)
    )
    cmd = scenario_run.pytest_command(
        request.kernel or "",
        junit,
        series=request.series,
        smp=request.smp,
        accel=request.accel,
        fragments=request.fragments,
        extra=(*basetemp, *request.pytest_args),
    )
    progress.note(f"running the scenarios: {' '.join(cmd[2:])}")
    status = scenario_run.run(cmd, junit).status
    if not junit.exists():
        return MainResult(Status.INFRA, f"pytest wrote no results (exit {status})")
    results = report.read_junit(junit)
    tested = {str(r.properties.get("kernel_identity") or "") for r in results} - {""}
    if tested - {built.identity}:
        return MainResult(
            Status.INFRA,
            f"the scenarios ran on kernel "
            f"{', '.join(sorted(tested))}, not on {built.identity} "
            f"built for this report (did the source change "
            f"meanwhile?)",
            results,
        )
    title = f"uprobe-harness: {built.label}" + (f" + {built.series}" if built.series else "")
    context = {
        "kernel": built.label,
        "series": built.series or "none",
        "release": built.release,
        "identity": built.identity,
        "pytest exit status": status,
    }
    html_path = report.render_html(results, title, context, results_dir / "report.html")
    summary = report.format_summary(results, title)
    if status == 5:
        verdict = Status.USAGE
    elif status == 3 or any(
        r.outcome == "error" and r.exception in ("InfraError", "BootError") for r in results
    ):
        verdict = Status.INFRA
    else:
        verdict = Status.PASSED if status == 0 else Status.FAILED
    return MainResult(verdict, "", results, summary, html_path, junit)
