"""pytest plugin: options, markers and the verdict hooks (kernel-log attribution, known-bug
xfails, the exception class as a property). The fixtures live in harness.scenarios, which
this plugin registers."""

from __future__ import annotations

import os

import pytest

from harness import scenarios
from harness.machine import console
from harness.probing.guest import Guest
from harness.results import families, known_bugs
from harness.scenarios import CONSOLE_START, GUEST

# plugin state on pytest's own objects (config, items); a report carries one flag as an
# attribute (reports travel between xdist workers and have no stash)
KNOWN_BUGS = pytest.StashKey[list]()
CRASHED = "_uph_crashed"


def pytest_addoption(parser):
    group = parser.getgroup("uprobe-harness")
    group.addoption(
        "--kernel",
        default=os.environ.get("UPH_KERNEL", ""),
        help="debian:6.1 (default), debian:6.12, /path/to/linux[@REV], bzImage",
    )
    group.addoption(
        "--series",
        default=os.environ.get("UPH_SERIES"),
        help="patch series (default: the kernel's default series; 'none')",
    )
    group.addoption("--config-fragment", action="append", default=[], dest="config_fragments")
    group.addoption(
        "--smp",
        default=os.environ.get("UPH_SMP", "1,4"),
        help="vCPU counts for SMP-parametrized scenarios, e.g. 1,4",
    )
    group.addoption("--accel", default=os.environ.get("UPH_ACCEL", "auto"))
    group.addoption(
        "--machine",
        default=os.environ.get("UPH_MACHINE", "auto"),
        help="QEMU machine type: auto (microvm where the kernel has virtio-mmio), microvm, pc",
    )
    group.addoption("--repeat", type=int, default=1, help="repeat race-sensitive checks N times")


def pytest_configure(config):
    for name, text in families.markers().items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[KNOWN_BUGS] = known_bugs.load()
    if not config.pluginmanager.has_plugin("harness.scenarios"):
        config.pluginmanager.register(scenarios, "harness.scenarios")


def _smp_values(config) -> list[int]:
    try:
        values = [int(v) for v in str(config.getoption("--smp")).split(",") if v.strip()]
    except ValueError as error:
        raise pytest.UsageError(
            f"--smp takes a comma-separated list of integers: {error}"
        ) from error
    return values or [1]


def pytest_generate_tests(metafunc):
    if "smp" in metafunc.fixturenames:
        params = [
            pytest.param(n, marks=[pytest.mark.smp] if n >= 2 else [], id=f"smp{n}")
            for n in _smp_values(metafunc.config)
        ]
        metafunc.parametrize("smp", params)


# -- verdicts ----------------------------------------------------------------------------------


_PLAIN = (str, int, float, bool)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # a pytest-xdist worker sends its reports to the controller through execnet, which
    # serializes plain values only (a Path property broke the run); JUnit writes str() anyway
    report.user_properties = [
        (name, value if isinstance(value, _PLAIN) else str(value))
        for name, value in report.user_properties
    ]
    if (
        report.failed
        and call.excinfo is not None
        and not any(name == "exception" for name, _ in item.user_properties)
    ):
        # the exception's class, for the tools that read the JUnit (main, bisect, mutate):
        # recorded by the harness, so a guest's output in a message cannot fake it
        kind = call.excinfo.type
        prop = ("exception", f"{kind.__module__}.{kind.__qualname__}")
        item.user_properties.append(prop)
        if prop not in report.user_properties:  # a teardown report copied them already
            report.user_properties.append(prop)
    g: Guest | None = item.stash.get(GUEST, None)
    if call.when == "teardown" and g is not None and report.passed:
        _attribute_teardown(item, g, report)  # e.g. a splat while the probes were removed
    if call.when != "call":
        return
    if g is not None:
        _attribute_kernel_log(item, g, report)
    kernel = item.funcargs.get("kernel") or (g.vm.kernel if g else None)
    if kernel is None:
        return
    bug = known_bugs.match(item.config.stash[KNOWN_BUGS], item.name, kernel)
    if bug is None:
        return
    crash_title = dict(item.user_properties).get("crash_title", "")
    state = "unclear"  # failed, but not as the entry says it must
    if report.failed and (not getattr(report, CRASHED, False) or bug.explains_crash(crash_title)):
        report.outcome = "skipped"
        report.wasxfail = f"known bug: {bug.reason} ({bug.link})" + (
            f" [{crash_title}]" if crash_title else ""
        )
        setattr(report, CRASHED, False)  # the splat is the known bug's
        state = "showed"
    elif report.passed:
        # the entry says this kernel has the bug: a pass means the table is stale
        report.outcome = "failed"
        report.longrepr = f"[XPASS(strict)] {bug.stale_message(kernel.label)}"
        state = "absent"
    prop = known_bugs.states_property({bug.key: state})
    item.user_properties.append(prop)
    report.user_properties.append(prop)


def _attribute_kernel_log(item, g: Guest, report) -> None:
    vm = g.vm
    answered = False  # the guest answered the marker's SSH command: it is responsive
    if vm.alive():
        try:
            g.kmsg_marker(f"END {item.nodeid}", wait_s=1.0)
            answered = True
        except Exception:
            pass
    end = vm.console_offset()
    text = vm.console_since(item.stash.get(CONSOLE_START, 0), end)
    item.stash[CONSOLE_START] = end  # the teardown is checked from here on
    findings = console.scan(text, boot_banner_expected=False)
    problem = title = None
    if findings:
        title = f"kernel {findings[0].title}"
        problem = f"crashed: {title}\n{findings[0].excerpt}"
    elif not vm.alive():
        title = "the VM died during the test"
        problem = f"crashed: {title} (console: {vm.console_log})"
    elif not answered and not vm.responsive():
        title = "guest unresponsive"
        problem = f"crashed: {title}"
    if problem is None:
        return
    item.user_properties.append(("verdict", "crashed"))
    item.user_properties.append(("crash_title", title))
    report.outcome = "failed"
    setattr(report, CRASHED, True)
    report.longrepr = f"{problem}\n\n(test output)\n{report.longreprtext}"
    pool = item.funcargs.get("vm_pool")
    if pool is not None:
        pool.retire(g)


def _attribute_teardown(item, g: Guest, report) -> None:
    vm = g.vm
    text = vm.console_since(item.stash.get(CONSOLE_START, 0))
    findings = console.scan(text, boot_banner_expected=False)
    problem = None
    if findings:
        problem = f"crashed in teardown: kernel {findings[0].title}\n{findings[0].excerpt}"
    elif not vm.alive() and not vm.closed:  # the last test's teardown closes the pool
        problem = f"crashed in teardown: the VM died (console: {vm.console_log})"
    if problem is None:
        return
    report.outcome = "failed"
    setattr(report, CRASHED, True)
    report.longrepr = problem
    pool = item.funcargs.get("vm_pool")
    if pool is not None:
        pool.retire(g)


def pytest_report_teststatus(report, config):
    if getattr(report, CRASHED, False) and report.when == "call":
        return "failed", "C", "CRASHED"
