"""The `confirmed` fixture (harness/scenarios.py), end to end in a child pytest: under
multi-threaded TCG a failed check counts only when a second run fails too, and the first
failure is kept as a property; under thread=single (or one vCPU) the first failure counts."""

import xml.etree.ElementTree as ET

pytest_plugins = ["pytester"]

TESTS = """
import types
import pytest

def fake_guest(tcg_threads, vcpus):
    return types.SimpleNamespace(
        record=types.SimpleNamespace(tcg_threads=tcg_threads, vcpus_seen=vcpus))

@pytest.fixture
def guest(request):
    return fake_guest(*request.param)

def flaky(results):
    runs = []
    def check():
        runs.append(1)
        ok = results[len(runs) - 1]
        assert ok, f"run {len(runs)} failed"
        return len(runs)
    return check, runs

@pytest.mark.parametrize("guest", [("multi", 4)], indirect=True)
def test_multi_once_then_passes(guest, confirmed):
    check, runs = flaky([False, True])
    assert confirmed(check) == 2 and len(runs) == 2

@pytest.mark.parametrize("guest", [("multi", 4)], indirect=True)
def test_multi_fails_twice(guest, confirmed):
    check, runs = flaky([False, False, True])
    confirmed(check)

@pytest.mark.parametrize("guest", [("single", 4), ("multi", 1)], indirect=True)
def test_first_failure_counts(guest, confirmed):
    check, runs = flaky([False, True])
    confirmed(check)

@pytest.mark.parametrize("guest", [("multi", 4)], indirect=True)
def test_passing_check_runs_once(guest, confirmed):
    check, runs = flaky([True, True])
    assert confirmed(check) == 1
"""


def test_a_failure_under_multi_threaded_tcg_is_confirmed_by_a_second_run(pytester):
    pytester.makepyfile(test_confirmed_case=TESTS)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("-p", "harness.pytest_plugin", f"--junitxml={junit}")
    result.assert_outcomes(passed=2, failed=3)
    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}

    def first_failure(name):
        return {p.get("name"): p.get("value") for p in cases[name].iter("property")}.get(
            "mttcg_first_failure"
        )

    assert first_failure("test_multi_once_then_passes[guest0]") == "run 1 failed assert False"
    failed = cases["test_multi_fails_twice[guest0]"].find("failure")
    assert failed is not None and "run 2 failed" in failed.get("message")
    assert first_failure("test_multi_fails_twice[guest0]") == "run 1 failed assert False"
    for name in ("test_first_failure_counts[guest0]", "test_first_failure_counts[guest1]"):
        assert "run 1 failed" in cases[name].find("failure").get("message")
        assert first_failure(name) is None
    assert first_failure("test_passing_check_runs_once[guest0]") is None
