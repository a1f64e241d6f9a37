"""The README's figures table is generated from the benchmarks' records: which session a row
shows, the ratio against REV, the target's verdict, and that the README holds the table
the committed records give (no hand-edited figures)."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import figures  # noqa: E402


def _write(path: Path, *entries: dict) -> None:
    base = dict(rev="aaaaaaaaaaaa", date="2026-12-02", note="")
    path.write_text("".join(json.dumps(base | e) + "\n" for e in entries))


def _row(records: Path, figure: str) -> figures.Row:
    table = figures.rows(figures.load_figures(), figures.load_records(records))
    return next(r for r in table if r.figure.id == figure)


def test_a_figure_never_measured_says_so(tmp_path):
    table = figures.render(figures.load_figures(), figures.load_records(tmp_path / "none"))
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == 1 + len(figures.load_figures())
    assert all("not measured yet" in line for line in lines[1:])


def test_the_row_is_the_latest_session_of_this_tree_with_its_own_before(tmp_path):
    records = tmp_path / "figures.jsonl"
    _write(
        records,
        dict(figure="boot_smp4", session="s1", tree="before", values=[3.0, 3.2, 3.1]),
        dict(figure="boot_smp4", session="s1", tree="now", values=[2.0, 2.2, 2.1]),
        dict(figure="boot_smp4", session="s2", tree="now", values=[1.4, 1.6, 1.2]),
        dict(figure="boot_smp1", session="s3", tree="before", values=[9.0]),  # no "now": unused
    )
    latest = _row(records, "boot_smp4")
    assert latest.now is not None and latest.now.session == "s2"
    assert latest.now.median == 1.4
    assert latest.before is None, "REV's runs of another session are not comparable"
    assert latest.ratio is None
    assert latest.status == "met"  # target 1.5
    assert _row(records, "boot_smp1").now is None


def test_ratio_and_missed_target_within_one_session(tmp_path):
    records = tmp_path / "figures.jsonl"
    _write(
        records,
        dict(figure="full_suite", session="s1", tree="before", values=[800.0, 820.0, 900.0]),
        dict(figure="full_suite", session="s1", tree="now", values=[410.0, 400.0, 500.0]),
    )
    row = _row(records, "full_suite")
    assert row.ratio == pytest.approx(410.0 / 820.0)
    assert row.status == "missed"  # target 120
    rendered = figures.render(figures.load_figures(), figures.load_records(records))
    line = next(line for line in rendered.splitlines() if line.startswith("| full scenario"))
    assert "**410 s (6 min 50 s)**" in line and "0.50" in line and "**missed**" in line
    assert "`aaaaaaaaaaaa`: 820 s" in line


def test_record_appends_a_line_the_loader_reads_back(tmp_path):
    records = tmp_path / "figures.jsonl"
    figures.record("edit_verdict", [28.2, 29.9, 26.9], rev="bbbbbbbbbbbb", path=records)
    figures.record("edit_verdict", [20.0], rev="cccccccccccc", path=records)
    row = _row(records, "edit_verdict")
    assert row.now is not None and row.now.values == [20.0] and row.now.rev == "cccccccccccc"
    assert row.now.session == figures.SESSION


def test_recording_an_unknown_figure_or_no_runs_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no figure 'boot_smp3'"):
        figures.record("boot_smp3", [1.0], path=tmp_path / "r")
    with pytest.raises(SystemExit, match="no runs"):
        figures.record("boot_smp4", [], path=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_bad_record_line_names_the_file_and_line(tmp_path):
    records = tmp_path / "figures.jsonl"
    records.write_text('{"figure": "boot_smp4"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"figures.jsonl, line 1: not a figure record"):
        figures.load_records(records)


def test_the_block_is_replaced_between_its_markers_and_nothing_else():
    text = f"# R\nabove\n{figures.BEGIN}\nold table\n{figures.END}\nbelow\n"
    new = figures.replace_block(text, "| new |\n")
    assert new == f"# R\nabove\n{figures.BEGIN}\n| new |\n{figures.END}\nbelow\n"
    assert figures.replace_block(new, "| new |\n") == new
    with pytest.raises(SystemExit, match="needs exactly one figures block"):
        figures.replace_block("no markers\n", "| new |")


def test_check_fails_on_a_stale_readme_and_write_mends_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{figures.BEGIN}\n| hand-edited | 1 s |\n{figures.END}\n")
    records = tmp_path / "figures.jsonl"
    _write(records, dict(figure="boot_smp4", session="s", tree="now", values=[1.8]))
    assert figures.main(["--records", str(records), "--check", str(readme)]) == 1
    assert figures.main(["--records", str(records), "--write", str(readme)]) == 0
    assert figures.main(["--records", str(records), "--check", str(readme)]) == 0
    assert "**1.80 s**" in readme.read_text()


def test_the_readme_holds_the_table_of_the_committed_records():
    assert figures.main(["--check", str(ROOT / "README.md")]) == 0


def test_every_figure_a_benchmark_records_is_defined_and_every_command_exists():
    ids = {f.id for f in figures.load_figures()}
    for script in (ROOT / "benchmarks").glob("bench_*.py"):
        for figure in re.findall(r'figures\.record\(\s*"(\w+)"', script.read_text()):
            assert figure in ids, f"{script.name} records {figure}, not in figures.toml"
    for figure in figures.load_figures():
        script = figure.command.split()[0]
        assert (ROOT / script).is_file(), f"figure {figure.id}: no {script}"
    for kernel in ("debian:6.1", "debian:6.12", "debian:7.3"):  # bench_sweep's names
        assert f"sweep_{kernel.replace(':', '_')}" in ids
    assert {"boot_smp1", "boot_smp4"} <= ids  # bench_boot's names
