"""The `phases` fixture sums the wall time of each named phase of a test and writes one
`phases` property into the JUnit report (end to end in a child pytest), also when the test
fails; a test that times nothing gets no property."""

import re
import xml.etree.ElementTree as ET

pytest_plugins = ["pytester"]

TESTS = """
import time

def test_two_phases(phases):
    with phases("slow"):
        time.sleep(0.3)
    with phases("fast"):
        pass
    with phases("slow"):
        time.sleep(0.3)

def test_fails_inside_a_phase(phases):
    with phases("broken"):
        time.sleep(0.1)
        assert False

def test_times_nothing(phases):
    pass
"""


def _properties(junit) -> dict[str, dict[str, str]]:
    return {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(junit).iter("testcase")
    }


def test_phases_become_one_property(pytester):
    pytester.makepyfile(test_phase_case=TESTS)
    junit = pytester.path / "junit.xml"
    pytester.runpytest("-p", "harness.pytest_plugin", f"--junitxml={junit}")
    props = _properties(junit)
    summary = props["test_two_phases"]["phases"]
    match = re.fullmatch(r"slow=(\d+\.\d) fast=(\d+\.\d)", summary)
    assert match, summary
    assert 0.6 <= float(match[1]) < 3.0  # both "slow" blocks summed
    assert float(match[2]) < 0.1
    broken = re.fullmatch(r"broken=(\d+\.\d)", props["test_fails_inside_a_phase"]["phases"])
    assert broken and float(broken[1]) >= 0.1
    assert "phases" not in props["test_times_nothing"]
