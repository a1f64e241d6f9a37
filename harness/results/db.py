"""The results history: one SQLite file (runs, shards, cells, per-test results).

A shard's rows become visible to comparisons only once the shard is marked complete (after
its last cell is stored): an interrupted or killed run never becomes "the previous run".
Paths are stored relative to the results directory, so a history can be moved, archived
by CI and merged from several machines."""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.results.outcome import BAD as BAD_OUTCOMES

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started TEXT NOT NULL, matrix TEXT, matrix_digest TEXT,
    harness_version TEXT, shard_count INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS shards (
    run_id TEXT NOT NULL, shard INTEGER NOT NULL, status TEXT NOT NULL,
    started TEXT, finished TEXT, host TEXT, PRIMARY KEY (run_id, shard));
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL, cell TEXT NOT NULL, shard INTEGER NOT NULL,
    kernel_spec TEXT, kernel_label TEXT, kernel_identity TEXT, kernel_commit TEXT,
    kernel_release TEXT, series TEXT, series_digest TEXT, config_digest TEXT,
    smp TEXT, accel TEXT, selection TEXT, harness_version TEXT, input_digest TEXT,
    junit TEXT, dir TEXT, started TEXT, seconds REAL, status TEXT, error TEXT,
    pytest_exit INTEGER, PRIMARY KEY (run_id, cell));
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, cell TEXT NOT NULL, test TEXT NOT NULL, family TEXT,
    outcome TEXT NOT NULL, seconds REAL, message TEXT, crash_title TEXT, console_log TEXT,
    machine TEXT, known_bugs TEXT, PRIMARY KEY (run_id, cell, test));
"""

CELL_FIELDS = (
    "cell",
    "shard",
    "kernel_spec",
    "kernel_label",
    "kernel_identity",
    "kernel_commit",
    "kernel_release",
    "series",
    "series_digest",
    "config_digest",
    "smp",
    "accel",
    "selection",
    "harness_version",
    "input_digest",
    "junit",
    "dir",
    "started",
    "seconds",
    "status",
    "error",
    "pytest_exit",
)
RESULT_FIELDS = (
    "test",
    "family",
    "outcome",
    "seconds",
    "message",
    "crash_title",
    "console_log",
    "machine",
    "known_bugs",
)
BAD = BAD_OUTCOMES


@dataclass(frozen=True)
class Result:
    test: str
    family: str
    outcome: str
    seconds: float = 0.0
    message: str = ""
    crash_title: str = ""
    console_log: str = ""
    machine: str = ""
    known_bugs: str = ""  # JSON {known-bugs entry: showed|absent|unclear} (see regressions)

    @property
    def bad(self) -> bool:
        return self.outcome in BAD


class ResultsDB:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A history written by an older harness lacks the columns added since: add them
        (NULL in old rows), so a results database is never thrown away on an upgrade."""
        for table, columns in _schema_columns().items():
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        """Checkpoint the write-ahead log into the database file first: results.db alone
        (archived, copied as a CI artefact) then holds every row written, even while another
        connection keeps the log alive. A busy checkpoint (a reader mid-transaction) is
        reported, not fatal."""
        try:
            busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:
                log.warning(
                    "%s: the write-ahead log could not be checkpointed (a reader is "
                    "busy); copy results.db together with results.db-wal",
                    self.path,
                )
        except sqlite3.Error as error:
            log.warning("%s: checkpoint failed: %s", self.path, error)
        finally:
            self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------------

    def begin_shard(
        self,
        run_id: str,
        started: str,
        matrix: str,
        matrix_digest: str,
        harness_version: str,
        shard: int,
        shard_count: int,
        host: str,
    ) -> None:
        with self.transaction() as db:
            _check_run(db, run_id, shard_count, matrix_digest, self.path)
            _insert(
                db,
                "runs",
                {
                    "run_id": run_id,
                    "started": started,
                    "matrix": matrix,
                    "matrix_digest": matrix_digest,
                    "harness_version": harness_version,
                    "shard_count": shard_count,
                },
                "INSERT OR IGNORE",
            )
            existing = db.execute(
                "SELECT status FROM shards WHERE run_id=? AND shard=?", (run_id, shard)
            ).fetchone()
            if existing and existing["status"] == "complete":
                raise ValueError(
                    f"run {run_id} shard {shard} is already complete in "
                    f"{self.path}; use a new --run-id"
                )
            _insert(
                db,
                "shards",
                {
                    "run_id": run_id,
                    "shard": shard,
                    "status": "running",
                    "started": started,
                    "finished": None,
                    "host": host,
                },
                "INSERT OR REPLACE",
            )
            # a rerun of an interrupted shard replaces whatever it had written
            db.execute(
                "DELETE FROM results WHERE run_id=? AND cell IN (SELECT cell FROM cells "
                "WHERE run_id=? AND shard=?)",
                (run_id, run_id, shard),
            )
            db.execute("DELETE FROM cells WHERE run_id=? AND shard=?", (run_id, shard))

    def add_cell(
        self, run_id: str, cell: dict, results: list[Result], completes_shard: str | None = None
    ) -> None:
        """One cell and its results; with `completes_shard` (the finishing time), the last
        cell of its shard: the shard is marked complete in the same transaction, so that a
        kill between the two cannot leave a shard with every cell but not complete."""
        with self.transaction() as db:
            _insert(
                db,
                "cells",
                {"run_id": run_id, **{k: cell.get(k) for k in CELL_FIELDS}},
                "INSERT OR REPLACE",
            )
            db.execute("DELETE FROM results WHERE run_id=? AND cell=?", (run_id, cell["cell"]))
            for r in results:
                _insert(
                    db,
                    "results",
                    {
                        "run_id": run_id,
                        "cell": cell["cell"],
                        **{k: getattr(r, k) for k in RESULT_FIELDS},
                    },
                )
            if completes_shard is not None:
                db.execute(
                    "UPDATE shards SET status='complete', finished=? WHERE run_id=? AND shard=?",
                    (completes_shard, run_id, cell["shard"]),
                )

    def finish_shard(self, run_id: str, shard: int, finished: str, status: str) -> None:
        """A complete shard stays complete (an interruption after its last cell)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE shards SET status=?, finished=? WHERE run_id=? AND shard=? "
                "AND status != 'complete'",
                (status, finished, run_id, shard),
            )

    # -- reading -------------------------------------------------------------------------------

    def runs(self, complete_only: bool = False) -> list[sqlite3.Row]:
        rows = self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM shards s WHERE s.run_id=r.run_id AND "
            "s.status='complete') AS complete_shards, (SELECT COUNT(*) FROM shards s WHERE "
            "s.run_id=r.run_id) AS shards_seen FROM runs r ORDER BY r.started, r.run_id"
        ).fetchall()
        if complete_only:
            rows = [r for r in rows if r["complete_shards"] == r["shard_count"]]
        return rows

    def run(self, run_id: str) -> sqlite3.Row | None:
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def latest_run(self) -> str | None:
        runs = self.runs()
        return runs[-1]["run_id"] if runs else None

    def cells(self, run_id: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM cells WHERE run_id=? ORDER BY cell", (run_id,)
        ).fetchall()

    def results(self, run_id: str, cell: str) -> dict[str, Result]:
        rows = self.conn.execute(
            f"SELECT {', '.join(RESULT_FIELDS)} FROM results WHERE run_id=? AND cell=?",
            (run_id, cell),
        ).fetchall()
        return {r["test"]: Result(*r) for r in rows}

    def previous_cell(self, run_id: str, cell: str) -> sqlite3.Row | None:
        """The same cell in the latest earlier run whose shard holding it completed."""
        started = self.conn.execute("SELECT started FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if started is None:
            return None
        return self.conn.execute(
            "SELECT c.* FROM cells c JOIN runs r ON r.run_id=c.run_id JOIN shards s ON "
            "s.run_id=c.run_id AND s.shard=c.shard WHERE c.cell=? AND s.status='complete' AND "
            "c.run_id<>? AND (r.started<? OR (r.started=? AND r.run_id<?)) "
            "ORDER BY r.started DESC, r.run_id DESC LIMIT 1",
            (cell, run_id, started[0], started[0], run_id),
        ).fetchone()

    def previous_results(self, run_id: str, cell: str) -> dict[str, tuple[Result, str]]:
        """For every test ever seen in `cell`: its latest result in an earlier run whose
        shard completed, with that cell's input digest. Per test, so a night without results
        (a failed build) does not erase what each test did before."""
        started = self.conn.execute("SELECT started FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if started is None:
            return {}
        rows = self.conn.execute(
            f"SELECT * FROM (SELECT {', '.join('res.' + f for f in RESULT_FIELDS)}, "
            "c.input_digest, ROW_NUMBER() OVER (PARTITION BY res.test ORDER BY r.started DESC, "
            "r.run_id DESC) AS n FROM results res JOIN cells c ON c.run_id=res.run_id AND "
            "c.cell=res.cell JOIN shards s ON s.run_id=c.run_id AND s.shard=c.shard JOIN runs r "
            "ON r.run_id=c.run_id WHERE res.cell=? AND s.status='complete' AND c.run_id<>? AND "
            "(r.started<? OR (r.started=? AND r.run_id<?))) WHERE n=1",
            (cell, run_id, started[0], started[0], run_id),
        ).fetchall()
        return {
            r["test"]: (Result(*tuple(r)[: len(RESULT_FIELDS)]), r["input_digest"]) for r in rows
        }

    def same_input_outcomes(
        self, run_id: str, cell: str, input_digest: str | None, window: int
    ) -> dict[str, list[str]]:
        """Per test: its outcomes in the last `window` runs of `cell` (this one and earlier
        complete ones) whose input digest is `input_digest`, oldest first."""
        started = self.conn.execute("SELECT started FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if started is None or not input_digest:
            return {}
        runs = self.conn.execute(
            "SELECT c.run_id FROM cells c JOIN runs r ON r.run_id=c.run_id JOIN shards s ON "
            "s.run_id=c.run_id AND s.shard=c.shard WHERE c.cell=? AND c.input_digest=? AND "
            "(s.status='complete' OR c.run_id=?) AND (r.started<? OR (r.started=? AND "
            "r.run_id<=?)) ORDER BY r.started DESC, r.run_id DESC LIMIT ?",
            (cell, input_digest, run_id, started[0], started[0], run_id, window),
        ).fetchall()
        order = [row[0] for row in reversed(runs)]
        outcomes: dict[str, list[str]] = {}
        for run in order:
            for test, outcome in self.conn.execute(
                "SELECT test, outcome FROM results WHERE run_id=? AND cell=?", (run, cell)
            ):
                outcomes.setdefault(test, []).append(outcome)
        return outcomes

    def history(self, cell: str, test: str, before_run: str, limit: int) -> list[str]:
        """Outcomes of one test in one cell over the last `limit` committed runs up to and
        including `before_run`, oldest first."""
        started = self.conn.execute(
            "SELECT started FROM runs WHERE run_id=?", (before_run,)
        ).fetchone()
        rows = self.conn.execute(
            "SELECT res.outcome FROM results res JOIN cells c ON c.run_id=res.run_id AND "
            "c.cell=res.cell JOIN shards s ON s.run_id=c.run_id AND s.shard=c.shard JOIN runs r "
            "ON r.run_id=c.run_id WHERE res.cell=? AND res.test=? AND (r.started<? OR "
            "(r.started=? AND r.run_id<=?)) AND (s.status='complete' OR r.run_id=?) "
            "ORDER BY r.started DESC, r.run_id DESC LIMIT ?",
            (
                cell,
                test,
                started[0] if started else "9999",
                started[0] if started else "9999",
                before_run,
                before_run,
                limit,
            ),
        ).fetchall()
        return [r[0] for r in reversed(rows)]

    # -- merging -------------------------------------------------------------------------------

    def merge_from(self, other: Path) -> list[tuple[str, str]]:
        """Fold another results database into this one. A complete shard replaces a
        running/interrupted copy of the same shard; a shard already complete here is kept.
        Returns the (run id, cell) pairs taken from `other`."""
        src = sqlite3.connect(f"{Path(other).resolve().as_uri()}?mode=ro", uri=True)
        src.row_factory = sqlite3.Row
        taken: list[tuple[str, str]] = []
        try:
            _check_source(src, other)
            with self.transaction() as db:
                for run in src.execute("SELECT * FROM runs").fetchall():
                    _check_run(
                        db,
                        run["run_id"],
                        run["shard_count"],
                        run["matrix_digest"],
                        self.path,
                        other,
                    )
                    _insert(db, "runs", dict(run), "INSERT OR IGNORE")
                for shard in src.execute("SELECT * FROM shards").fetchall():
                    key = (shard["run_id"], shard["shard"])
                    mine = db.execute(
                        "SELECT status FROM shards WHERE run_id=? AND shard=?", key
                    ).fetchone()
                    if mine is not None and (
                        mine["status"] == "complete" or shard["status"] != "complete"
                    ):
                        continue
                    _insert(db, "shards", dict(shard), "INSERT OR REPLACE")
                    db.execute(
                        "DELETE FROM results WHERE run_id=? AND cell IN (SELECT cell "
                        "FROM cells WHERE run_id=? AND shard=?)",
                        (key[0], key[0], key[1]),
                    )
                    db.execute("DELETE FROM cells WHERE run_id=? AND shard=?", key)
                    for cell in src.execute(
                        "SELECT * FROM cells WHERE run_id=? AND shard=?", key
                    ).fetchall():
                        db.execute(
                            "DELETE FROM results WHERE run_id=? AND cell=?", (key[0], cell["cell"])
                        )
                        db.execute(
                            "DELETE FROM cells WHERE run_id=? AND cell=?", (key[0], cell["cell"])
                        )
                        _insert(db, "cells", dict(cell))
                        rows = src.execute(
                            "SELECT * FROM results WHERE run_id=? AND cell=?",
                            (key[0], cell["cell"]),
                        ).fetchall()
                        for row in rows:
                            _insert(db, "results", dict(row))
                        taken.append((key[0], cell["cell"]))
            return taken
        finally:
            src.close()


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
PATH_FIELDS = (("cells", "dir"), ("cells", "junit"), ("results", "console_log"))


def check_run_id(run_id: str) -> str:
    """A run id names a directory under the results dir: letters, digits, . _ + -."""
    if not RUN_ID.match(run_id or "") or run_id in (".", ".."):
        raise ValueError(
            f"run id {run_id!r} is not a plain name (letters, digits, '.', '_', "
            f"'+', '-'; at most 128 characters): it names a directory."
        )
    return run_id


def check_stored_path(value: str | None, where: str) -> None:
    """Paths in a history are relative to its results dir and stay below it."""
    if not value:
        return
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or "\0" in value:
        raise ValueError(
            f"{where}: stored path {value!r} is absolute or leaves the results "
            f"directory; a history only holds paths below its own directory."
        )


def _check_source(src: sqlite3.Connection, other: Path) -> None:
    """Everything a merge will use as a name or path, checked before anything is taken."""
    for (run_id,) in src.execute("SELECT DISTINCT run_id FROM cells UNION SELECT run_id FROM runs"):
        try:
            check_run_id(run_id)
        except ValueError as error:
            raise ValueError(f"{other}: {error}") from None
    for table, field in PATH_FIELDS:
        columns = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
        if field not in columns:
            continue
        for run_id, value in src.execute(f"SELECT run_id, {field} FROM {table}"):
            where = f"{other}: {table}.{field} of run {run_id}"
            check_stored_path(value, where)
            # a merge replaces a cell's directory: only ever one of that run's cells
            parts = Path(value).parts if value else ()
            if field == "dir" and value and (len(parts) != 3 or parts[:2] != ("runs", run_id)):
                raise ValueError(
                    f"{where}: a cell directory is runs/<run id>/<cell>, not {value!r}."
                )


def _insert(db, table: str, row: dict, verb: str = "INSERT") -> None:
    """By column name (tables of an upgraded history have their columns in another order);
    columns this schema does not know (a newer harness's history) are left out."""
    known = {name for name, _ in _schema_columns()[table]}
    names = [k for k in row if k in known]
    db.execute(
        f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [row[k] for k in names],
    )


@functools.cache
def _schema_columns() -> dict[str, list[tuple[str, str]]]:
    """(column, type) of every table, read from SCHEMA."""
    tables = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\);", SCHEMA, re.S):
        columns = []
        for part in re.split(r",\s*(?![^()]*\))", body):
            words = part.split()
            if words and words[0] != "PRIMARY":
                columns.append((words[0], words[1]))
        tables[name] = columns
    return tables


def _check_run(
    db, run_id: str, shard_count: int, matrix_digest: str, path: Path, other: Path | None = None
) -> None:
    """Shards of one run must agree on the shard count and the matrix."""
    row = db.execute(
        "SELECT shard_count, matrix_digest FROM runs WHERE run_id=?", (run_id,)
    ).fetchone()
    if row is None:
        return
    where = f" (merging {other})" if other else ""
    if row["shard_count"] != shard_count or row["matrix_digest"] != matrix_digest:
        raise ValueError(
            f"run {run_id} in {path} has {row['shard_count']} shard(s) of matrix "
            f"{row['matrix_digest']}, but this one{where} has {shard_count} of matrix "
            f"{matrix_digest}: shards of one run need the same --shard I/N count and the same "
            f"matrix file; use a new --run-id."
        )
