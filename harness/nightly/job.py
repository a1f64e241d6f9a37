"""The nightly's stages as requests and results, for the front door (cli) to call: run a
shard of a matrix, fold shards into one history, or report on a stored run. Each ends by
comparing the run with the previous one and writing the reports; its status says whether
the job gates (0 or 1, per `fail_on`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import HarnessError
from harness.nightly import matrix as nightly_matrix
from harness.nightly import runner
from harness.results import regressions
from harness.results.db import ResultsDB, check_run_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reporting:
    """How the run is judged and shown."""

    fail_on: str | None = None  # new (default) | failures | never
    history: int = 10
    flake_window: int = regressions.FLAKE_WINDOW
    flake_threshold: float = regressions.FLAKE_THRESHOLD


@dataclass(frozen=True)
class NightlyResult:
    status: int  # 0 pass, 1 gate failed
    summary: str
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # lines for the user before the summary


@dataclass(frozen=True)
class ShardRequest:
    matrix: Path
    results_dir: Path
    shard: str = "1/1"
    run_id: str = ""
    db: Path | None = None
    jobs: int = 0
    reporting: Reporting = Reporting()


def run_shard(request: ShardRequest) -> NightlyResult:
    matrix = nightly_matrix.load_matrix(request.matrix)
    index, count = nightly_matrix.parse_shard(request.shard)
    if request.run_id:
        try:
            check_run_id(request.run_id)
        except ValueError as error:
            raise HarnessError(f"--run-id: {error}") from None
    if count > 1 and not request.run_id:
        raise HarnessError(
            f"--shard {request.shard}: give every shard of the run the same "
            f"--run-id (e.g. the CI pipeline id), or they never form one run."
        )
    cells = nightly_matrix.shard_cells(matrix.cells, index, count)
    results_dir = request.results_dir.resolve()
    db_path = request.db.resolve() if request.db else results_dir / "results.db"
    options = runner.NightlyOptions(
        results_dir,
        db_path,
        request.run_id or runner.default_run_id(),
        index,
        count,
        request.jobs,
        request.reporting.history,
    )
    log.info(
        f"nightly {options.run_id}: {matrix.name}, shard {index}/{count}: "
        f"{len(cells)} of {len(matrix.cells)} cell(s)"
    )
    try:
        runner.run_nightly(matrix, cells, options)
    except ValueError as error:
        raise HarnessError(str(error)) from error
    notes: tuple[str, ...] = ()
    reporting = request.reporting
    if count > 1:
        notes = (
            f"shard {index}/{count} stored in {db_path}; fold the shards with "
            f"`python -m harness merge --into DIR SHARD_DIR...`",
        )
        # a shard alone has no complete history: the merge step gates, unless told otherwise
        if reporting.fail_on is None:
            reporting = replace(reporting, fail_on="never")
    return replace(report(results_dir, db_path, options.run_id, reporting), notes=notes)


def merge(
    into: Path,
    sources: list[Path],
    run_id: str = "",
    keep_run_dirs: int | None = None,
    reporting: Reporting = Reporting(),
) -> NightlyResult:
    """Fold shard (or other) results directories into one history and report on a run:
    the one named, else the latest merged, else the latest stored."""
    into = into.resolve()
    merged = runner.merge(into, [s.resolve() for s in sources])
    if keep_run_dirs is not None:
        runner.prune_run_dirs(into, keep_run_dirs)
    chosen = run_id or (merged[0] if merged else None)
    notes: tuple[str, ...] = ()
    if chosen is None:
        with ResultsDB(into / "results.db") as db:
            chosen = db.latest_run()
        if chosen is None:
            raise HarnessError("merge: the sources hold no runs.")
        notes = (f"merge: nothing new; reporting the latest run, {chosen}",)
    return replace(report(into, into / "results.db", chosen, reporting), notes=notes)


def report_stored(
    results_dir: Path, run_id: str = "", reporting: Reporting = Reporting()
) -> NightlyResult:
    results_dir = results_dir.resolve()
    db_path = results_dir / "results.db"
    if not db_path.is_file():
        raise HarnessError(
            f"{results_dir} holds no results.db: run `python -m harness nightly` first."
        )
    with ResultsDB(db_path) as db:
        chosen = run_id or db.latest_run()
    if chosen is None:
        raise HarnessError(f"{db_path} holds no runs.")
    return report(results_dir, db_path, chosen, reporting)


def report(
    results_dir: Path, db_path: Path, run_id: str, reporting: Reporting = Reporting()
) -> NightlyResult:
    """Compare RUN_ID with each cell's previous run, write the reports, judge."""
    with ResultsDB(db_path) as db:
        if db.run(run_id) is None:
            raise HarnessError(
                f"{db_path} has no run {run_id!r} (runs: "
                f"{', '.join(r['run_id'] for r in db.runs()[-5:]) or 'none'})."
            )
        comparison = regressions.compare_run(
            db, run_id, reporting.flake_window, reporting.flake_threshold
        )
        summary = runner.format_summary(db, run_id, comparison)
        outputs = runner.write_outputs(db, run_id, comparison, results_dir, reporting.history)
    return NightlyResult(
        regressions.exit_status(comparison, reporting.fail_on or "new"), summary, outputs
    )
