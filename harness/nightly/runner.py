"""The nightly job: run every cell of a matrix (or one shard of it), store the results in
the history database, compare each cell with its previous run, write the reports.

Results directory layout (the history lives here across nights; CI keeps it as an artefact):
    results.db                       the history (harness.results.db)
    runs/RUN/CELL/junit.xml          pytest's JUnit XML of one cell
    runs/RUN/CELL/pytest.log         its output; runs/RUN/CELL/tmp/ holds the VMs' console logs
    runs/RUN/report.html, kcidb.json, summary.txt
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import children
from harness.errors import HarnessError
from harness.jobs import scenario_run
from harness.nightly.matrix import Cell, Matrix
from harness.results import regressions, report
from harness.results.db import Result, ResultsDB
from harness.results.outcome import FAILING
from harness.results.outcome import severity as outcome_severity
from harness.version import harness_version

log = logging.getLogger(__name__)

SETUP_TEST = "(kernel build)"  # the synthetic test a failed build is recorded as


@dataclass(frozen=True)
class NightlyOptions:
    results_dir: Path
    db_path: Path
    run_id: str
    shard: int = 1
    shard_count: int = 1
    jobs: int = 0
    history: int = 10  # runs shown in the report's sparklines


@dataclass
class CellRun:
    row: dict
    results: list[Result]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def default_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def input_digest(row: dict) -> str:
    """Everything that, when unchanged, makes an outcome change a flake."""
    keys = (
        "kernel_identity",
        "series_digest",
        "config_digest",
        "smp",
        "accel",
        "selection",
        "harness_version",
    )
    return hashlib.sha256(json.dumps([row.get(k) for k in keys]).encode()).hexdigest()[:16]


# -- one cell ----------------------------------------------------------------------------------


class HarnessCellRunner:
    """Build the cell's kernel (shared through the build cache) and run its selection in a
    pytest subprocess; the VMs' console logs stay in the cell directory."""

    def __init__(self, options: NightlyOptions):
        self.options = options

    def run(self, cell: Cell, cell_dir: Path) -> CellRun:
        from harness.build import kernel

        row: dict[str, Any] = {
            "kernel_spec": cell.kernel,
            "series": cell.series_name,
            "smp": cell.smp,
            "accel": cell.accel,
            "selection": json.dumps(list(cell.selection)),
        }
        started = time.monotonic()
        try:
            built = kernel.build(
                kernel.BuildRequest(
                    kernel=cell.kernel,
                    series=cell.series,
                    fragments=cell.fragments,
                    jobs=self.options.jobs,
                )
            )
        except HarnessError as error:
            row.update(
                status="error", error=f"build failed: {error}", seconds=time.monotonic() - started
            )
            return CellRun(row, [Result(SETUP_TEST, "build", "error", 0.0, str(error))])
        row.update(_kernel_fields(built))
        junit = cell_dir / "junit.xml"  # run() removes a stale one (a rerun shard)
        cmd = scenario_run.pytest_command(
            cell.kernel,
            junit,
            series=cell.series,
            fragments=cell.fragments,
            smp=cell.smp,
            accel=cell.accel,
            extra=(*cell.selection, f"--basetemp={cell_dir / 'tmp'}", "-q"),
        )
        log.info(
            f"{cell.key}: {built.label}{' + ' + built.series if built.series else ''}: "
            f"pytest {' '.join(cell.selection) or '(all scenarios)'}"
        )
        status = scenario_run.run(cmd, junit, log=cell_dir / "pytest.log").status
        row.update(
            seconds=round(time.monotonic() - started, 1), pytest_exit=status, junit=str(junit)
        )
        if not junit.exists():
            row.update(
                status="error",
                error=f"pytest wrote no results (exit {status}); see {cell_dir / 'pytest.log'}",
            )
            return CellRun(row, [Result("(pytest)", "harness", "error", 0.0, row["error"])])
        tests = report.read_junit(junit)
        results = merge_duplicates([to_result(r) for r in tests])
        row["status"] = "ok" if status in (0, 1) else "error"
        if status not in (0, 1):  # 2 interrupted, 3 internal error, 4 usage, 5 no tests
            row["error"] = f"pytest exit {status}; see {cell_dir / 'pytest.log'}"
            results.append(Result("(pytest)", "harness", "error", 0.0, row["error"]))
        # the accelerator kind actually used (auto resolves per host); the TCG threading
        # of each test is in its machine column (it follows a runtime canary, not an input)
        kinds = sorted({r.machine.split("/")[0].split(" ")[0] for r in results if r.machine})
        if kinds:
            row["accel"] = f"{cell.accel}:{'+'.join(kinds)}"
        # the kernel the tests actually ran (pytest resolves the spec again)
        tested = {t.properties.get("kernel_identity") for t in tests} - {None, ""}
        if len(tested) == 1 and tested != {row["kernel_identity"]}:
            log.warning(
                f"{cell.key}: pytest tested kernel {next(iter(tested))}, not the "
                f"{row['kernel_identity']} built first (the source moved?)"
            )
            row["kernel_identity"] = next(iter(tested))
        return CellRun(row, results)


def _kernel_fields(built) -> dict:
    meta = {}
    if built.metadata and Path(built.metadata).is_file():
        meta = json.loads(Path(built.metadata).read_text())
    return {
        "kernel_label": built.label,
        "kernel_identity": built.identity,
        "kernel_commit": meta.get("source_commit", ""),
        "kernel_release": built.release,
        "series_digest": meta.get("series_digest", ""),
        "config_digest": meta.get("fragments_digest", ""),
    }


def merge_duplicates(results: list[Result]) -> list[Result]:
    """pytest reports a test twice when it fails in its call and again in its teardown (a
    splat while the probes were removed): keep one result, the worse outcome, both texts."""
    merged: dict[str, Result] = {}
    for result in results:
        seen = merged.get(result.test)
        if seen is None:
            merged[result.test] = result
            continue
        worse, other = sorted((seen, result), key=lambda r: outcome_severity(r.outcome))
        merged[result.test] = replace(
            worse,
            seconds=seen.seconds + result.seconds,
            message="\n\n".join(m for m in (worse.message, other.message) if m),
            crash_title=worse.crash_title or other.crash_title,
            console_log=worse.console_log or other.console_log,
        )
    return list(merged.values())


_CRASH = re.compile(r"^crashed(?: in teardown)?: (?:kernel )?(.*)$")


def to_result(test: report.TestResult) -> Result:
    props = test.properties
    title = props.get("crash_title", "")
    if not title and test.outcome == "crashed":
        match = _CRASH.match(test.message.splitlines()[0] if test.message else "")
        title = match[1] if match else "crashed"
    machine = ""
    if props.get("accel"):
        machine = props["accel"] + (f"/{props['tcg_threads']}" if props.get("tcg_threads") else "")
        if props.get("vcpus"):
            machine += f" {props['vcpus']}vCPU"
    return Result(
        test=f"{test.family}::{test.name}",
        family=test.family,
        outcome=test.outcome,
        seconds=test.seconds,
        message=test.message[:20000],
        crash_title=title,
        console_log=props.get("console_log", ""),
        machine=machine,
        known_bugs=props.get("known_bugs", ""),
    )


# -- the run -----------------------------------------------------------------------------------


def run_nightly(
    matrix: Matrix, cells: list[Cell], options: NightlyOptions, runner=None
) -> regressions.Comparison:
    """Run `cells` (this shard's part of `matrix`) and commit them to the history. The shard
    is marked complete only after its last cell; an interruption marks it interrupted."""
    runner = runner or HarnessCellRunner(options)
    run_dir = options.results_dir / "runs" / options.run_id
    version = harness_version()
    with _shard_lock(options), ResultsDB(options.db_path) as db:
        db.begin_shard(
            options.run_id,
            now(),
            matrix.name,
            matrix.digest,
            version,
            options.shard,
            options.shard_count,
            socket.gethostname(),
        )
        try:
            with children.sigterm_interrupts():
                for index, cell in enumerate(cells, start=1):
                    log.info(f"cell {index}/{len(cells)}: {cell.key}")
                    cell_dir = run_dir / cell.slug
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    started = now()
                    outcome = runner.run(cell, cell_dir)
                    row = {
                        **outcome.row,
                        "cell": cell.key,
                        "shard": options.shard,
                        "started": started,
                        "harness_version": version,
                        "dir": _relpath(str(cell_dir), options.results_dir),
                    }
                    row.setdefault("status", "ok")
                    row["input_digest"] = input_digest(row)
                    results = [_relative(r, options.results_dir) for r in outcome.results]
                    if row.get("junit"):
                        row["junit"] = _relpath(row["junit"], options.results_dir)
                    last = index == len(cells)
                    db.add_cell(
                        options.run_id, row, results, completes_shard=now() if last else None
                    )
        except BaseException:
            db.finish_shard(options.run_id, options.shard, now(), "interrupted")
            raise
        if not cells:
            db.finish_shard(options.run_id, options.shard, now(), "complete")
        return regressions.compare_run(db, options.run_id)


@contextlib.contextmanager
def _shard_lock(options: NightlyOptions):
    """One process per shard of a run and history: a rerun with the same run id must not
    delete the rows of a shard another process is still writing."""
    path = options.db_path.with_name(
        f"{options.db_path.name}.{options.run_id}.{options.shard}.lock"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(
                f"shard {options.shard} of run {options.run_id} is being run "
                f"by another process into {options.db_path}; wait for it, or "
                f"give this run another --run-id."
            ) from None
        yield


def _relpath(path: str, base: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:
        return path


def _relative(result: Result, base: Path) -> Result:
    if not result.console_log:
        return result
    return replace(result, console_log=_relpath(result.console_log, base))


# -- summary -----------------------------------------------------------------------------------


def format_summary(
    db: ResultsDB, run_id: str, comparison: regressions.Comparison, limit: int = 12
) -> str:
    run = db.run(run_id)
    cells = db.cells(run_id)
    status = (
        f"{run['complete_shards']}/{run['shard_count']} shard(s) complete" if run else "unknown run"
    )
    lines = [
        f"nightly {run_id} ({run['matrix'] if run else '?'}): {len(cells)} cell(s), "
        f"{status}, harness {run['harness_version'] if run else '?'}"
    ]
    for cell in cells:
        results = db.results(run_id, cell["cell"]).values()
        counts: dict[str, int] = {}
        for r in results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        text = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        lines.append(
            f"  {cell['cell']:<44} {text}"
            f"{'  [' + cell['error'][:60] + ']' if cell['error'] else ''}"
        )
    counts = comparison.counts()
    lines.append(
        "compared with the previous run: "
        + ", ".join(f"{n} {c}" for c, n in counts.items())
        + f", {len(comparison.vanished)} gone"
    )
    if comparison.cells_without_history:
        lines.append(f"  no previous run for: {', '.join(comparison.cells_without_history)}")
    for category in regressions.CATEGORIES:
        changes = comparison.of(category)
        for change in changes[:limit]:
            first = change.result.crash_title or (change.result.message.splitlines() or [""])[0]
            lines.append(
                f"  {category.upper():<14} {change.cell} {change.test} "
                f"({change.before or 'new'} -> {change.after}) {first[:80]}"
            )
        if len(changes) > limit:
            lines.append(f"  ... and {len(changes) - limit} more {category}")
    for cell_key, test in comparison.vanished[:limit]:
        lines.append(f"  {'GONE':<14} {cell_key} {test} (in the previous run, not in this one)")
    rates = comparison.flake_rates()
    if rates:
        lines.append(
            f"flake rates (verdict flips over the last {comparison.window} runs with "
            f"identical inputs; flaky from {comparison.threshold:.0%} and "
            f"{regressions.MIN_FLIPS} flips):"
        )
        for rate in rates[:limit]:
            mark = "FLAKY" if rate.flaky(comparison.threshold) else ""
            lines.append(f"  {mark:<6}{rate.cell} {rate.test}: {rate.text()}")
    for entry in comparison.stale[:limit]:
        lines.append(
            f"  {'STALE ENTRY':<14} known_bugs.toml {entry.entry!r} did not show on "
            f"{entry.kernel} ({entry.cell}: {', '.join(entry.tests)[:120]})"
            + ("" if entry.reason else " [no longer in the table]")
        )
    if comparison.unexercised:
        names = comparison.unexercised
        more = f", and {len(names) - 4} more" if len(names) > 4 else ""
        lines.append(
            f"known-bugs entries no test of this run met (not run here, or not "
            f"for these kernels): {len(names)}: {', '.join(names[:4])}{more}"
        )
    return "\n".join(lines)


def write_outputs(
    db: ResultsDB,
    run_id: str,
    comparison: regressions.Comparison,
    results_dir: Path,
    history: int = 10,
) -> dict[str, Path]:
    from harness.nightly import kcidb
    from harness.nightly import report as nightly_report

    run_dir = results_dir / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "summary": run_dir / "summary.txt",
        "report": run_dir / "report.html",
        "kcidb": run_dir / "kcidb.json",
        "junit": run_dir / "junit.xml",
    }
    outputs["summary"].write_text(format_summary(db, run_id, comparison, limit=1000) + "\n")
    nightly_report.render(db, run_id, comparison, results_dir, outputs["report"], history)
    outputs["kcidb"].write_text(json.dumps(kcidb.export(db, run_id), indent=1) + "\n")
    merge_junit(db, run_id, outputs["junit"])
    return outputs


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str | None) -> str:
    """Text XML 1.0 can carry: a guest's console or a test's output may hold any byte."""
    return _NOT_XML.sub("\ufffd", text or "")


def merge_junit(db: ResultsDB, run_id: str, out: Path) -> None:
    """The run as one JUnit file (from the database, so it works after a merge too): one
    <testsuite> per cell, named by the cell's key."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name=f"uprobe-harness nightly {run_id}")
    for cell in db.cells(run_id):
        results = db.results(run_id, cell["cell"])
        suite = ET.SubElement(
            root,
            "testsuite",
            name=cell["cell"],
            tests=str(len(results)),
            failures=str(sum(r.outcome in FAILING for r in results.values())),
            errors=str(sum(r.outcome == "error" for r in results.values())),
        )
        for test, result in sorted(results.items()):
            family, _, name = test.partition("::")
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_xml(f"{cell['cell']}.{family}"),
                name=_xml(name or test),
                time=f"{result.seconds or 0:.3f}",
            )
            first = _xml((result.message.splitlines() or [""])[0][:500])
            if result.outcome in FAILING:
                ET.SubElement(
                    case, "failure", message=_xml(result.crash_title) or first
                ).text = _xml(result.message)
            elif result.outcome == "error":
                ET.SubElement(case, "error", message=first).text = _xml(result.message)
            elif result.outcome in ("skipped", "xfail"):
                ET.SubElement(
                    case, "skipped", type=f"uprobe-harness.{result.outcome}", message=first
                )
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


def merge(into: Path, sources: list[Path]) -> list[str]:
    """Fold results directories (shards, or another machine's history) into `into`: the
    databases row by row, and the directories of exactly the cells taken from each.
    Returns the run ids that received cells, latest first."""
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    touched: set[str] = set()
    with ResultsDB(into / "results.db") as db:
        for source in sources:
            source_db = source / "results.db" if source.is_dir() else source
            if not source_db.is_file():
                raise HarnessError(
                    f"merge: {source} holds no results.db (give a nightly "
                    f"--results-dir or a results database)."
                )
            if source_db.resolve() == (into / "results.db").resolve():
                continue
            try:
                taken = db.merge_from(source_db)
            except ValueError as error:
                raise HarnessError(f"merge: {error}") from error
            for run_id, cell in taken:
                row = next(c for c in db.cells(run_id) if c["cell"] == cell)
                if row["dir"] and (source_db.parent / row["dir"]).is_dir():
                    target = into / row["dir"]
                    if not target.resolve().is_relative_to(into.resolve()):
                        raise HarnessError(
                            f"merge: cell {cell} of run {run_id} would be "
                            f"copied to {target.resolve()}, outside {into}."
                        )
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(source_db.parent / row["dir"], target, symlinks=True)
            runs = sorted({r for r, _ in taken})
            log.info(f"merged {source}: {len(taken)} cell(s) of run(s) {', '.join(runs) or 'none'}")
            touched.update(runs)
        order = [r["run_id"] for r in db.runs()]
    return sorted(touched, key=order.index, reverse=True)


def prune_run_dirs(results_dir: Path, keep: int) -> list[str]:
    """Delete the directories (JUnit, logs, console logs, reports) of all but the latest
    `keep` runs; their rows stay in results.db, so comparisons and flake rates keep them.
    Only directories of runs the history knows are touched. Returns the pruned run ids."""
    import shutil

    runs_dir = results_dir / "runs"
    with ResultsDB(results_dir / "results.db") as db:
        order = [r["run_id"] for r in db.runs()]
    pruned = []
    for run_id in order[: max(len(order) - keep, 0)]:
        path = runs_dir / run_id
        if path.is_dir() and not path.is_symlink() and path.parent == runs_dir:
            shutil.rmtree(path)
            pruned.append(run_id)
    if pruned:
        log.info(
            f"pruned the directories of {len(pruned)} older run(s) (kept the latest {keep}; "
            f"their results stay in results.db)"
        )
    return pruned
