"""The plugin's kernel-log attribution, end to end in a child pytest (pytester): a test that
passed is failed as CRASHED when the guest's console shows a splat in the test's own window,
when the VM died or stopped answering; a splat while the fixtures are torn down fails the
teardown; a splat before the test began is not the test's."""

import pytest

from harness.results import report

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

from harness.scenarios import GUEST, CONSOLE_START


class FakeKernel:
    spec = "debian:6.1"
    label = "debian:6.1 (fake)"
    metadata = None
    series = ""
    release = "6.1.192"


class FakeVM:
    console_log = "console.log"
    kernel = FakeKernel()

    def __init__(self):
        # a splat from before any test: no test's window holds it
        self.text = ("[    0.000000] Linux version 6.1.192\\n"
                     "[    0.100000] WARNING: CPU: 0 PID: 1 at mm/memory.c:1 boot_time+0x1/0x2\\n")
        self.dead = self.silent = self.closed = False

    def emit(self, line):
        self.text += f"[   12.345678] {line}\\n"

    def console_offset(self):
        return len(self.text)

    def console_since(self, start, end=None):
        return self.text[start:end]

    def alive(self):
        return not self.dead

    def responsive(self):
        return not self.silent


class FakeGuest:
    def __init__(self, vm):
        self.vm = vm

    def kmsg_marker(self, text, wait_s=0.0):
        if self.vm.silent:        # a guest that stopped answering does not run the command
            raise TimeoutError("ssh: no answer")
        self.vm.emit(f"uprobe-harness: {text}")
        return True


VM = FakeVM()


class FakePool:
    def retire(self, guest):        # the plugin retires a crashed machine: it is shut down
        guest.vm.closed = True


@pytest.fixture
def vm_pool():
    return FakePool()


@pytest.fixture
def guest(request, vm_pool):
    VM.dead = VM.silent = VM.closed = False      # the pool's next machine
    g = FakeGuest(VM)
    request.node.stash[GUEST] = g
    request.node.stash[CONSOLE_START] = VM.console_offset()
    return g


@pytest.fixture
def splat_in_teardown(guest):
    yield
    guest.vm.emit("WARNING: CPU: 0 PID: 1 at kernel/events/uprobes.c:1234 "
                  "uprobe_free_utask+0x1/0x2")
"""

TESTS = """
OOPS = "BUG: kernel NULL pointer dereference, address: 0000000000000008"

def test_a_splat_before_the_test(guest):
    pass

def test_clean(guest):
    guest.vm.console_offset()

def test_oops_during_the_call(guest):
    guest.vm.emit(OOPS)

def test_after_the_oops(guest):
    pass

def test_vm_dies(guest):
    guest.vm.dead = True

def test_after_the_death(guest):
    guest.vm.dead = False

def test_guest_stops_answering(guest):
    guest.vm.silent = True

def test_after_the_silence(guest):
    guest.vm.silent = False

def test_splat_while_tearing_down(splat_in_teardown):
    pass
"""


@pytest.fixture
def run(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_crash_case=TESTS)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "harness.pytest_plugin", "-p", "no:randomly", "-v", f"--junitxml={junit}"
    )
    return result, report.read_junit(junit)


def _by_name(results):
    out = {}
    for r in results:
        out.setdefault(r.name, []).append(r)
    return out


def test_a_splat_in_the_window_fails_a_passing_test_as_crashed(run):
    result, results = run
    by_name = _by_name(results)
    oops = by_name["test_oops_during_the_call"][0]
    assert oops.outcome == "crashed"
    assert oops.properties.get("crash_title", "").startswith(
        "kernel BUG: kernel NULL pointer dereference"
    )
    result.stdout.fnmatch_lines(["*test_oops_during_the_call CRASHED*"])


def test_tests_outside_the_window_pass_and_a_dead_or_silent_guest_is_a_crash(run):
    _, results = run
    by_name = _by_name(results)
    for name in (
        "test_a_splat_before_the_test",
        "test_clean",
        "test_after_the_oops",
        "test_after_the_death",
        "test_after_the_silence",
    ):
        verdicts = by_name[name]
        assert [v.outcome for v in verdicts] == ["passed"], verdicts
        assert "verdict" not in verdicts[0].properties
    for name, title in (
        ("test_vm_dies", "the VM died during the test"),
        ("test_guest_stops_answering", "guest unresponsive"),
    ):
        verdicts = by_name[name]
        assert [v.outcome for v in verdicts] == ["crashed"], verdicts
        assert verdicts[0].properties.get("crash_title") == title


def test_a_splat_in_teardown_fails_the_teardown(run):
    _, results = run
    outcomes = sorted(v.outcome for v in _by_name(results)["test_splat_while_tearing_down"])
    assert "error" in outcomes, outcomes
    result, _ = run
    result.stdout.fnmatch_lines(["*crashed in teardown: kernel WARNING*uprobe_free_utask*"])
