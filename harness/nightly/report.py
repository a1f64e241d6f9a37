"""The nightly report: one self-contained HTML file (jinja2): regressions first, then the
tests x cells matrix with per-test history sparklines, then failure details with console
excerpts and the known-bug reasons of expected failures."""

from __future__ import annotations

import html
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jinja2

from harness.paths import TEMPLATES_DIR
from harness.results.db import Result
from harness.results.outcome import BAD, Outcome
from harness.results.regressions import CATEGORIES, Comparison

COLOURS = {o.value: o.colour for o in Outcome}
SYMBOLS = {o.value: o.symbol for o in Outcome}
CONSOLE_EXCERPT_LINES = 60


@dataclass
class Detail:
    anchor: str
    cell: str
    result: Result
    console_link: str
    console_excerpt: str


def sparkline(outcomes: list[str]) -> str:
    """A small inline SVG: one bar per run, oldest left, coloured by outcome."""
    width = 5 * len(outcomes)
    bars = "".join(
        f'<rect x="{5 * i}" y="{2 if o in BAD else 6}" '
        f'width="4" height="{10 if o in BAD else 6}" '
        f'fill="{COLOURS.get(o, "#999")}"><title>{html.escape(o)}</title></rect>'
        for i, o in enumerate(outcomes)
    )
    return (
        f'<svg class="spark" width="{width}" height="12" viewBox="0 0 {width} 12" '
        f'role="img" aria-label="history">{bars}</svg>'
    )


def _console_excerpt(path: Path, test: str, crashed: bool) -> str:
    """The test's own window of the shared VM console: between the BEGIN/END markers the
    pytest plugin writes to /dev/kmsg around each test. Without markers (the VM died before
    the END, or never booted) the last lines, for crashes only."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    name = test.partition("::")[2] or test
    begin = end = None
    for index, line in enumerate(lines):
        if "uprobe-harness: BEGIN " in line and line.rstrip().endswith("::" + name):
            begin, end = index, None
        elif (
            begin is not None
            and end is None
            and "uprobe-harness: END " in line
            and line.rstrip().endswith("::" + name)
        ):
            end = index
    if begin is not None:
        window = lines[begin : (end + 1) if end is not None else None]
        if len(window) > CONSOLE_EXCERPT_LINES:
            window = window[:CONSOLE_EXCERPT_LINES] + [f"... ({len(window)} lines)"]
        return "\n".join(window)
    return "\n".join(lines[-CONSOLE_EXCERPT_LINES:]) if crashed else ""


def _own_console_log(results_dir: Path, stored: str | None) -> Path | None:
    """A result's console log, only when it is a file below the results directory once
    resolved (the database may come from elsewhere: an absolute path, `..`, or a symlink
    copied in by a merge must not put host files into the report)."""
    if not stored:
        return None
    path = results_dir / stored
    try:
        resolved = path.resolve()
    except OSError:
        return None
    if not resolved.is_relative_to(results_dir.resolve()) or not resolved.is_file():
        return None
    return resolved


def build_context(
    db, run_id: str, comparison: Comparison, results_dir: Path, report_path: Path, history: int
) -> dict:
    cells = db.cells(run_id)
    columns = [c["cell"] for c in cells]
    matrix: dict[str, dict[str, Result]] = {}
    for cell in columns:
        for test, result in db.results(run_id, cell).items():
            matrix.setdefault(test, {})[cell] = result
    rows = sorted(matrix, key=lambda t: (t.split("::")[0], t))
    sparks = {
        (test, cell): sparkline(db.history(cell, test, run_id, history))
        for test in rows
        for cell in matrix[test]
    }
    details: list[Detail] = []
    anchors: dict[tuple[str, str], str] = {}
    for test in rows:
        for cell in columns:
            result = matrix[test].get(cell)
            if result is None or result.outcome in ("passed", "skipped"):
                continue
            anchor = f"d{len(details)}"
            anchors[(test, cell)] = anchor
            link = excerpt = ""
            console = _own_console_log(results_dir, result.console_log)
            if console is not None:  # linked as stored (a symlinked results dir)
                link = urllib.parse.quote(
                    os.path.relpath(results_dir / result.console_log, report_path.parent)
                )
                if result.outcome in ("crashed", "error", "failed"):
                    excerpt = _console_excerpt(console, test, result.outcome == "crashed")
            details.append(Detail(anchor, cell, result, link, excerpt))
    run = db.run(run_id)
    return {
        "run_id": run_id,
        "run": dict(run) if run else {},
        "cells": [dict(c) for c in cells],
        "columns": columns,
        "rows": rows,
        "matrix": matrix,
        "sparks": sparks,
        "details": details,
        "anchors": anchors,
        "comparison": comparison,
        "categories": CATEGORIES,
        "symbols": SYMBOLS,
        "colours": COLOURS,
        "history": history,
        "known_bugs": [d for d in details if d.result.outcome == "xfail"],
    }


def render(
    db, run_id: str, comparison: Comparison, results_dir: Path, out: Path, history: int = 10
) -> Path:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    context = build_context(db, run_id, comparison, results_dir, out, history)
    env.filters["markup"] = lambda text: jinja2.utils.markupsafe.Markup(text)
    out.write_text(env.get_template("nightly.html.j2").render(**context))
    return out
