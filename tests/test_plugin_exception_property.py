"""The plugin records the class of the exception that failed a test as a JUnit property
(end to end in a child pytest): main, bisect and mutate judge by it, and a message that
quotes the guest ("InfraError: ...") cannot pass for a harness error."""

from harness.results import report

pytest_plugins = ["pytester"]

TESTS = """
import pytest
from harness.errors import InfraError

@pytest.fixture
def broken():
    raise InfraError("qemu-system-x86_64 is not installed")

def test_setup_fails(broken):
    pass

def test_guest_quotes_an_infra_error():
    assert False, "the program printed: InfraError: not really"

def test_passes():
    pass

@pytest.fixture
def breaks_in_teardown():
    yield
    raise InfraError("the VM went away in teardown")

def test_teardown_fails(breaks_in_teardown):
    pass
"""


def test_the_exception_class_is_a_property(pytester):
    pytester.makepyfile(test_exception_case=TESTS)
    junit = pytester.path / "junit.xml"
    pytester.runpytest("-p", "harness.pytest_plugin", f"--junitxml={junit}")
    by_name = {r.name: r for r in report.read_junit(junit)}
    assert by_name["test_setup_fails"].outcome == "error"
    assert by_name["test_setup_fails"].exception == "InfraError"
    assert by_name["test_guest_quotes_an_infra_error"].outcome == "failed"
    assert by_name["test_guest_quotes_an_infra_error"].exception == "AssertionError"
    assert by_name["test_passes"].exception == ""
    assert by_name["test_teardown_fails"].outcome == "error"
    assert by_name["test_teardown_fails"].exception == "InfraError"
