"""The plugin under pytest-xdist (end to end in a child pytest with two workers): a test's
properties reach the controller's JUnit report even when a value is not a plain one (a
Path: execnet serializes plain values only, and the whole run used to stop with an
INTERNALERROR), and the known-bug and exception properties travel with the reports."""

import xml.etree.ElementTree as ET
from pathlib import Path

pytest_plugins = ["pytester"]

TESTS = """
from pathlib import Path

def test_path_property(record_property):
    record_property("console_log", Path("/tmp/some/console.log"))
    record_property("vcpus", 4)

def test_fails():
    assert False, "on purpose"
"""


def test_properties_travel_from_xdist_workers(pytester):
    pytester.makepyfile(test_xdist_case=TESTS)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-n", "2", f"--junitxml={junit}")
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    props = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(junit).iter("testcase")
    }
    assert props["test_path_property"]["console_log"] == str(Path("/tmp/some/console.log"))
    assert props["test_path_property"]["vcpus"] == "4"
    assert props["test_fails"]["exception"] == "builtins.AssertionError"
