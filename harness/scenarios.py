"""What the scenarios use: the session's kernel and image, a pool of VMs, the guest a test
needs, compiled target programs, uprobe sessions and instruction-case runs. Registered by
harness.pytest_plugin; testcases/ import check_case from here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from harness.errors import HarnessError
from harness.machine.vm import VM
from harness.phases import PhaseTimer
from harness.phases import summary as phase_summary
from harness.probing.guest import Guest, Hits
from harness.probing.probes import Probe, symbol_offset, symbol_offsets
from harness.probing.targets import compile_target

log = logging.getLogger(__name__)
T = TypeVar("T")

# per-test state the verdict hooks read (harness.pytest_plugin)
GUEST = pytest.StashKey[Guest]()
CONSOLE_START = pytest.StashKey[int]()  # where the test's window of the console begins


# -- session objects ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel(request):
    from harness.build.kernel import BuildRequest, build
    from harness.progress import Progress

    config = request.config
    try:
        return build(
            BuildRequest(
                kernel=config.getoption("--kernel"),
                series=config.getoption("--series"),
                fragments=tuple(config.getoption("config_fragments")),
            ),
            Progress.auto(),
        )
    except HarnessError as error:
        pytest.exit(f"uprobe-harness: cannot build the kernel under test: {error}", returncode=3)


@pytest.fixture(scope="session")
def image():
    from harness.machine.image import build_image

    return build_image()


@dataclass
class _Slot:
    vm: VM
    guest: Guest
    spoiled: bool = False  # left in a state later tests must not inherit


class VMPool:
    """One VM per (smp, TCG threading), shared across tests; replaced after a crash. `copy`
    asks for another VM of the same kind (a test that spreads its work over several)."""

    def __init__(self, kernel, image, accel: str, workdir, machine: str = "auto"):
        self.kernel, self.image, self.accel, self.workdir = kernel, image, accel, workdir
        self.machine = machine
        self._slots: dict[tuple[int, str, int], _Slot] = {}
        self._serial = 0

    def get(self, smp: int, tcg: str, copy: int = 0) -> Guest:
        from harness.machine.vm import VM, MachineSpec

        key = (smp, tcg, copy)
        slot = self._slots.get(key)
        if slot is not None and slot.vm.alive() and not slot.spoiled:
            return slot.guest
        if slot is not None:
            self.retire(slot.guest)
        self._serial += 1
        spec = MachineSpec(smp=smp, accel=self.accel, tcg_threads=tcg, machine=self.machine)
        vm = VM(
            self.kernel,
            self.image,
            spec,
            name=f"smp{smp}-{tcg}-{self._serial}",
            workdir=self.workdir / f"vm-smp{smp}-{tcg}-{self._serial}",
        )
        vm.start()
        guest = Guest(vm)
        try:
            guest.run_selfcheck()
        except BaseException:
            vm.shutdown()
            raise
        self._slots[key] = _Slot(vm, guest)
        return guest

    def spoil(self, guest: Guest) -> None:
        """The guest stays up for the rest of the test (its verdict reads the console and the
        trace), and the next test gets a fresh machine."""
        for slot in self._slots.values():
            if slot.guest is guest:
                slot.spoiled = True

    def is_spoiled(self, guest: Guest) -> bool:
        return any(slot.spoiled for slot in self._slots.values() if slot.guest is guest)

    def retire(self, guest: Guest) -> None:
        for key, slot in list(self._slots.items()):
            if slot.guest is guest:
                slot.vm.shutdown()
                del self._slots[key]

    def close(self) -> None:
        for slot in self._slots.values():
            slot.vm.shutdown()
        self._slots.clear()


@pytest.fixture(scope="session")
def vm_pool(request, kernel, image, tmp_path_factory):
    pool = VMPool(
        kernel,
        image,
        request.config.getoption("--accel"),
        tmp_path_factory.mktemp("vms"),
        machine=request.config.getoption("--machine"),
    )
    yield pool
    pool.close()


def _wanted_machine(request) -> tuple[int, str]:
    marker = request.node.get_closest_marker("vm")
    kwargs = dict(marker.kwargs) if marker else {}
    callspec = getattr(request.node, "callspec", None)
    smp = callspec.params["smp"] if callspec and "smp" in callspec.params else kwargs.get("smp", 1)
    return smp, kwargs.get("tcg", "exact")


@pytest.fixture
def guest(request, vm_pool) -> Guest:
    """A guest whose machine suits the test. tcg='parallel' forces multi-threaded TCG (true
    parallelism, for data races); 'exact' uses it only when the VM's cross-modifying-code
    canary is clean there, else single-threaded TCG; 'single'/'multi' force a mode."""
    smp, tcg = _wanted_machine(request)
    mode = {"parallel": "multi"}.get(tcg, tcg)
    if mode == "exact":
        candidate = vm_pool.get(smp, "multi")
        mode = "multi" if smp == 1 or candidate.selfcheck.xmc_exact else "single"
    g = vm_pool.get(smp, mode)
    record, check = g.record, g.selfcheck
    for name, value in (
        ("kernel", g.vm.kernel.label),
        ("kernel_identity", record.kernel_identity),
        ("kernel_release", record.kernel_release),
        ("accel", record.accel),
        ("tcg_threads", record.tcg_threads),
        ("machine", record.machine),
        ("vcpus", record.vcpus_seen),
        ("xmc_stale", check.xmc_stale),
        ("xmc_runs", check.xmc_runs),
        ("console_log", g.vm.console_log),
    ):
        request.node.user_properties.append((name, value))
    request.node.stash[GUEST] = g
    request.node.stash[CONSOLE_START] = g.vm.console_offset()
    # written on the host: the previous test's END marker went through the guest's kernel
    # log (a barrier), so nothing of the guest's is in flight here; costs no round trip
    g.vm.console_note(f"BEGIN {request.node.nodeid}")
    return g


@pytest.fixture
def target(guest):
    """target('hits') -> guest path of the compiled, uploaded program (and host binary)."""

    def make(name: str):
        compiled = compile_target(name)
        return guest.upload(compiled), compiled.binary

    return make


class UprobeSession:
    def __init__(self, guest: Guest):
        self.guest = guest
        self.probes: list[Probe] = []
        guest.reset_tracing()

    def add(self, name: str, guest_path: str, host_binary, location: str, kind: str = "p") -> Probe:
        probe = Probe(name, guest_path, symbol_offset(host_binary, location), kind)
        self.guest.add_probe(probe)
        self.probes.append(probe)
        return probe

    def add_many(
        self, guest_path: str, host_binary, named: dict[str, str], kind: str = "p"
    ) -> list[Probe]:
        """{probe name: location} registered in one guest command."""
        offsets = symbol_offsets(host_binary, list(named.values()))
        batch = [
            Probe(name, guest_path, offsets[location], kind) for name, location in named.items()
        ]
        self.guest.add_probes(batch)
        self.probes.extend(batch)
        return batch

    def hits(self) -> dict[str, Hits]:
        return self.guest.hits([p.name for p in self.probes])

    def clear(self) -> None:
        self.guest.remove_probes()
        self.probes.clear()


@pytest.fixture
def confirmed(request, guest) -> Callable[[Callable[[], T]], T]:
    """confirmed(check) returns check(). On a guest under multi-threaded TCG with several
    vCPUs, a failed check is run once more and counts only if it fails again: QEMU 7.2's
    MTTCG can run stale code after cross-modifying code, so distinct probes stepped out of
    line at once can fail for reasons that are not the kernel's (the canary does not catch
    every such case). The first failure is kept as the test's `mttcg_first_failure`
    property. check() must start from a clean state each time (e.g. an empty trace buffer)."""

    def run(check: Callable[[], T]) -> T:
        try:
            return check()
        except AssertionError as first:
            record = guest.record
            if record.tcg_threads != "multi" or record.vcpus_seen < 2:
                raise
            text = " ".join(str(first).split())[:2000]
            request.node.user_properties.append(("mttcg_first_failure", text))
            log.warning(
                "%s: failed once under multi-threaded TCG, checking again: %s",
                request.node.nodeid,
                text[:300],
            )
            return check()

    return run


@pytest.fixture
def uprobe(guest, vm_pool):
    session = UprobeSession(guest)
    yield session
    # a spoiled machine is replaced before the next test: removing the probes there could
    # only wait on what spoiled it (a task stuck for ever in the uprobe code)
    if guest.vm.alive() and not vm_pool.is_spoiled(guest):
        session.clear()


@pytest.fixture(scope="session")
def _insn_results():
    return {}


@pytest.fixture
def insn_family(request, guest, _insn_results):
    """insn_family('fp') -> (verdicts by case name, {unsupported case: missing flags}).
    The family's cases run once per guest: unprobed, then all probed in one run.
    insn_family('fp', bits=32): the same cases as a 32-bit task (insn.compat_cases)."""
    from harness.paths import REPO_ROOT
    from harness.probing import insn, transparency

    def run(family: str, bits: int = 64):
        key = (id(guest), family, bits)
        if key not in _insn_results:
            cases = insn.load_cases(REPO_ROOT / "testcases" / "cases" / f"{family}.toml")
            if bits == 32:
                cases = insn.compat_cases(cases)
            flags = transparency.guest_cpu_flags(guest)
            runnable, unsupported = transparency.supported(cases, flags)
            name = family if bits == 64 else f"{family}{bits}"
            program = insn.build_program(runnable, name, bits=bits)
            from harness.probing.targets import target_from_binary

            path = guest.upload(target_from_binary(name, program.binary, program.digest))
            verdicts = transparency.run_cases(guest, program, path)
            missing = {c.name: [n for n in c.needs if n not in flags] for c in unsupported}
            _insn_results[key] = (verdicts, missing)
            # splats during the family run are attributed per case by run_cases (CASE
            # markers); the first test's own window starts after the run
            request.node.stash[CONSOLE_START] = guest.vm.console_offset()
        return _insn_results[key]

    return run


@pytest.fixture
def instruction_sweep(request, guest, kernel, vm_pool, _insn_results):
    """The sweep report for this guest (run once per guest and session)."""
    from harness.sweep import runner as sweep

    key = (id(guest), "sweep")
    if key not in _insn_results:
        # more guests of the same kind share the batches (one per host CPU), retired after
        helpers = [
            vm_pool.get(1, guest.vm.spec.tcg_threads, copy=number)
            for number in range(1, sweep.default_machines())
        ]
        try:
            _insn_results[key] = sweep.sweep_guest(guest, kernel, helpers=helpers)
            # where the sweep spent its time
            request.node.user_properties.append(
                ("phases", phase_summary(_insn_results[key].timings))
            )
        except Exception as error:  # one failed sweep, not one per class test
            _insn_results[key] = error
        finally:
            for helper in helpers:
                vm_pool.retire(helper)
        request.node.stash[CONSOLE_START] = guest.vm.console_offset()
    if isinstance(_insn_results[key], Exception):
        raise _insn_results[key]
    return _insn_results[key]


def check_case(request, results, case: str) -> None:
    """Shared assertion for instruction-case scenarios."""
    verdicts, unsupported = results
    if case in unsupported:
        pytest.skip(f"guest CPU lacks {', '.join(unsupported[case])}")
    verdict = verdicts[case]
    request.node.user_properties.append(("outcome", verdict.outcome))
    if verdict.fx_pointer_differs:
        request.node.user_properties.append(("note", "x87 FIP/FDP show the XOL slot"))
    if verdict.outcome == "refused":  # every case is an insn uprobes should support
        pytest.fail(f"refused by the kernel: {verdict.detail}")
    if verdict.outcome == "crashed":
        request.node.user_properties.append(("verdict", "crashed"))
        pytest.fail(f"crashed: kernel {verdict.detail} (while this case ran probed)")
    assert verdict.outcome == "identical", f"{verdict.outcome}: {verdict.detail}"


@pytest.fixture
def phases(request) -> Iterator[PhaseTimer]:
    timer = PhaseTimer()
    yield timer
    if timer.seconds:
        request.node.user_properties.append(("phases", timer.summary()))


@pytest.fixture
def repeat(request) -> int:
    return max(1, request.config.getoption("--repeat"))
