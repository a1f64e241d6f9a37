"""Bad input, generated (hypothesis): every parser a user or a guest feeds gives a verdict or
a clear HarnessError, never a traceback of another kind. Structured files are generated as
TOML documents whose keys are the real ones (and some others) and whose values are of any
type, so the validators are reached, not only the TOML reader."""

from __future__ import annotations

import json
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.build import kconfig, series
from harness.errors import HarnessError
from harness.jobs import mutate
from harness.machine import console
from harness.nightly import matrix as nightly_matrix
from harness.probing import probes
from harness.results import known_bugs, report

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

words = st.text(alphabet=string.ascii_letters + string.digits + "._-/:@ *?[]", max_size=24)
scalars = st.one_of(
    words, st.integers(-3, 10**6), st.booleans(), st.floats(allow_nan=False, width=32)
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.lists(words, max_size=4))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value else "0"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def _toml(document: dict) -> str:
    """Top-level key = value lines, then [table]s, then [[array]] tables."""
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}"
        for k, v in document.items()
        if not isinstance(v, (dict, tuple))
    ]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, tuple):
            for entry in value:
                lines.append(f"[[{json.dumps(key)}]]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def tables(keys: list[str]):
    return st.dictionaries(st.sampled_from(keys + ["extra"]), values, max_size=len(keys) + 1)


def _verdict_or_harness_error(call):
    try:
        return call()
    except HarnessError as error:
        assert str(error).strip(), "an error without a message"
        return None


# -- files the user writes ----------------------------------------------------------------------

MATRIX_KEYS = ["name", "kernel", "series", "smp", "selection", "accel", "config_fragments"]


@SETTINGS
@given(
    top=tables(["name"]),
    defaults=tables(["series", "smp", "selection", "accel"]),
    selection=st.dictionaries(words, st.one_of(values, st.lists(words, max_size=5)), max_size=3),
    kernels=st.lists(tables(MATRIX_KEYS), max_size=3),
)
def test_matrix_files(tmp_path_factory, top, defaults, selection, kernels):
    path = tmp_path_factory.mktemp("m") / "matrix.toml"
    document = {**top, "defaults": defaults, "selection": selection, "kernel": tuple(kernels)}
    path.write_text(_toml(document))
    _verdict_or_harness_error(lambda: nightly_matrix.load_matrix(path))


@SETTINGS
@given(text=st.text(max_size=300))
def test_matrix_files_as_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("m") / "matrix.toml"
    path.write_text(text)
    _verdict_or_harness_error(lambda: nightly_matrix.load_matrix(path))


@SETTINGS
@given(
    spec=tables(["summary", "kernel", "mechanism", "file", "breaks"]),
    series_text=st.text(max_size=200),
)
def test_mutant_directories(tmp_path_factory, spec, series_text):
    directory = tmp_path_factory.mktemp("mutant")
    (directory / "mutant.toml").write_text(_toml(spec))
    (directory / "series").write_text(series_text)
    _verdict_or_harness_error(lambda: mutate.load_mutant(directory))


@SETTINGS
@given(
    entries=st.lists(
        tables(["test", "kernels", "reason", "fixed_by", "fixed_upstream", "link"]), max_size=3
    )
)
def test_known_bugs_files(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("kb") / "known_bugs.toml"
    path.write_text(_toml({"bug": tuple(entries)}))
    _verdict_or_harness_error(lambda: known_bugs.load(path))


@SETTINGS
@given(
    series_text=st.text(max_size=200),
    patch=st.binary(max_size=400),
    header=st.sampled_from([b"", b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"]),
)
def test_quilt_series(tmp_path_factory, series_text, patch, header):
    directory = tmp_path_factory.mktemp("s")
    (directory / "series").write_text(series_text)
    for word in series_text.split()[:3]:
        if "/" not in word and word not in (".", "..") and "\0" not in word:
            try:
                (directory / word).write_bytes(header + patch)
            except OSError:
                pass
    _verdict_or_harness_error(lambda: series.load_series(directory))


@SETTINGS
@given(body=st.binary(max_size=600))
def test_mbox_series(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("mbox") / "series.mbox"
    path.write_bytes(b"From 0 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n" + body)
    _verdict_or_harness_error(lambda: series.load_series(path))


@SETTINGS
@given(
    lines=st.lists(
        st.one_of(
            st.builds(
                lambda s, v: f"CONFIG_{s}={v}",
                st.text(string.ascii_uppercase + "_", max_size=8),
                st.one_of(st.sampled_from(["y", "n", "m", '""']), words),
            ),
            st.builds(
                lambda s: f"# CONFIG_{s} is not set", st.text(string.ascii_uppercase, max_size=6)
            ),
            st.text(max_size=40),
        ),
        max_size=8,
    )
)
def test_config_fragments(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("frag") / "extra.config"
    path.write_text("\n".join(lines) + "\n")
    _verdict_or_harness_error(lambda: kconfig.parse_fragment(path))


# -- what the guest and pytest write ------------------------------------------------------------


@SETTINGS
@given(text=st.text(max_size=2000))
def test_console_logs(text):
    findings = console.scan(text)
    assert all(f.title for f in findings)


@SETTINGS
@given(text=st.text(max_size=600))
def test_uprobe_profile_output(text):
    parsed = probes.parse_profile(text)
    assert all(isinstance(v, int) for v in parsed.values())


@SETTINGS
@given(
    case=st.text(max_size=60),
    message=st.text(max_size=80),
    kind=st.sampled_from(["failure", "error", "skipped", "system-out", "properties"]),
    raw=st.booleans(),
)
def test_junit_files(tmp_path_factory, case, message, kind, raw):
    from xml.sax.saxutils import quoteattr

    path = tmp_path_factory.mktemp("junit") / "junit.xml"
    if raw:
        path.write_text(case + message)
    else:
        path.write_text(
            f'<?xml version="1.0"?><testsuites><testsuite name="pytest">'
            f"<testcase classname={quoteattr(case)} name={quoteattr(message)} "
            f'time="x"><{kind} message={quoteattr(message)}/></testcase>'
            f"</testsuite></testsuites>"
        )
    _verdict_or_harness_error(lambda: report.read_junit(path))


def test_the_generator_reaches_the_validators(tmp_path):
    """A sanity check of the generator itself: a well-formed document it can produce loads."""
    path = tmp_path / "matrix.toml"
    path.write_text(_toml({"name": "x", "kernel": ({"name": "a", "kernel": "debian:6.1"},)}))
    assert nightly_matrix.load_matrix(path).cells
    assert Path(path).read_text().startswith('"name" = "x"')
