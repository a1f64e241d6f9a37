"""The plugin's known-bug rewrite, end to end in a child pytest (pytester): a failure that a
known-bugs entry explains is an xfail; a pass where the entry says the bug must show is a
*stale* entry, reported as a failure (XPASS(strict) in JUnit, "xpass" for the harness); a
kernel whose release is at or past the entry's fixed_upstream is expected to pass."""

import json

import pytest

from harness.results import report

ENTRY = "test_profile_counts_every_hit?smp4?"  # the entry's key: its first test pattern

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

class FakeKernel:
    spec = "debian:6.1"
    label = "debian:6.1 (fake)"
    metadata = None
    series = ""
    release = "{release}"

@pytest.fixture
def kernel():
    return FakeKernel()
"""

TESTS = """
def test_profile_counts_every_hit(kernel, smp):
    assert {passes}, "lost hits"
"""


def _run(pytester, release, passes):
    pytester.makeconftest(CONFTEST.format(release=release))
    pytester.makepyfile(test_known_bug_case=TESTS.format(passes=passes))
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--smp=4", f"--junitxml={junit}")
    return result, {r.name: r for r in report.read_junit(junit)}


@pytest.mark.parametrize("release", ["6.1.192", ""])
def test_a_failure_the_table_explains_is_an_xfail(pytester, release):
    result, by_name = _run(pytester, release, passes=False)
    result.assert_outcomes(xfailed=1)
    verdict = by_name["test_profile_counts_every_hit[smp4]"]
    assert verdict.outcome == "xfail" and "known bug" in verdict.message
    # the nightly's stale-entry check reads which entry applied and that its bug showed
    assert json.loads(verdict.properties["known_bugs"]) == {ENTRY: "showed"}


def test_a_pass_where_the_bug_must_show_is_a_stale_entry(pytester):
    result, by_name = _run(pytester, "6.1.192", passes=True)
    result.assert_outcomes(failed=1)
    verdict = by_name["test_profile_counts_every_hit[smp4]"]
    assert verdict.outcome == "xpass"
    assert "stale known-bugs entry" in verdict.message and "debian:6.1 (fake)" in verdict.message
    assert json.loads(verdict.properties["known_bugs"]) == {ENTRY: "absent"}


def test_fixed_upstream_expects_a_pass_and_a_failure_stays_a_failure(pytester):
    result, by_name = _run(pytester, "6.12.117", passes=True)
    result.assert_outcomes(passed=1)
    assert "known_bugs" not in by_name["test_profile_counts_every_hit[smp4]"].properties
    result, by_name = _run(pytester, "7.3.0-rc7", passes=False)
    result.assert_outcomes(failed=1)
    assert by_name["test_profile_counts_every_hit[smp4]"].outcome == "failed"
