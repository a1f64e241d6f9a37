"""Family: realcode - real programs built by someone else (Debian), their own workload run
probed and unprobed, with a uprobe on every function entry, and (second mode) on every
instruction of the functions the workload enters most.

Sites: every FDE of the unwind table and every function symbol (Debian strips the symbol
table; `harness.probing.functions`); in the second mode, every instruction of the chosen
functions (capstone, linear over the FDE's range). The probed copy of the program is mapped
by an idle process of its own (the program's `idle` arguments) while the probes are enabled,
so the kernel analyses every site then and a refusal is reported with its errno (not
silently skipped at a later mmap). Address-space randomization is off meanwhile.

Oracles, per command of the workload (testcases/real_programs.toml): the unprobed run's
output and exit status; a ptrace breakpoint counter (testcases/targets/bpcount.c, no uprobes
involved) for how often each site ran, which must equal uprobe_profile's count (it emulates
the simple forms that make up most of the hits, endbr64, push, pop, mov, jumps, call, ret,
add/or/and/sub/xor/cmp/test between registers or with an immediate or a memory operand it
only reads, loads and movsxd, instead of single-stepping them: tests/test_bpcount.py holds
it to single-stepping's counts and results on the host).
"""

import hashlib
import re
import shlex
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from harness.phases import PhaseTimer
from harness.probing.functions import (
    FunctionEntry,
    RealProgram,
    function_entries,
    hot_functions,
    instructions_of,
    load_programs,
)
from harness.probing.probes import (
    ERR_FILE,
    GROUP,
    TRACEFS,
    hits_by_offset,
    parse_definitions,
    parse_profile_rows,
    say_error,
)
from harness.probing.targets import target_from_binary

pytestmark = pytest.mark.realcode

PROGRAMS = load_programs(REPO_ROOT / "testcases" / "real_programs.toml")
SITES_PER_EVENT = 200  # probes appended to one trace event
CHUNK = 400  # shell lines per guest command


def _one_event_per_site(path: str, entries: list[FunctionEntry]) -> list[str]:
    """Shell lines registering and enabling each entry as an event of its own, printing
    "REFUSED NAME STEP ERRNO-TEXT" for each the kernel refuses."""
    lines = []
    for entry in entries:
        name = entry.probe_name
        definition = shlex.quote(f"p:{GROUP}/{name} {path}:{entry.offset:#x}")
        enable = f"{TRACEFS}/events/{GROUP}/{name}/enable"
        lines.append(
            f"if echo {definition} >> {TRACEFS}/uprobe_events 2>{ERR_FILE}; then "
            f"echo 1 > {enable} 2>{ERR_FILE} || {say_error(f'REFUSED {name} enable')}; "
            f"else {say_error(f'REFUSED {name} register')}; fi"
        )
    return lines


def _definitions(guest) -> list[tuple[str, int]]:
    return parse_definitions(guest.run(f"cat {TRACEFS}/uprobe_events", check=True).stdout)


def _run_lines(guest, lines: list[str]) -> list[str]:
    out = []
    for start in range(0, len(lines), CHUNK):
        out += guest.run("\n".join(lines[start : start + CHUNK]), timeout=600).stdout.splitlines()
    return out


@dataclass
class Registered:
    """The probes of one test as the kernel holds them: `definitions` is uprobe_events in
    the kernel's order, [(event, file offset)], which uprobe_profile follows."""

    refused: dict[str, str]  # {probe name: why the kernel refused it}
    definitions: list[tuple[str, int]]
    names: dict[int, str]  # {file offset: probe name}

    def profile(self, guest) -> dict[str, int]:
        """{probe name: hits so far}."""
        rows = parse_profile_rows(guest.run(f"cat {TRACEFS}/uprobe_profile", check=True).stdout)
        return {self.names[o]: n for o, n in hits_by_offset(self.definitions, rows).items()}


def _register(guest, path: str, entries: list[FunctionEntry]) -> Registered:
    """Register and enable a probe on every entry, SITES_PER_EVENT of them appended to one
    trace event: disabling an event costs 6.12 and later an RCU grace period
    (uprobe_unregister_sync) whatever its number of probes, so 4,000 events of one probe
    cost 4,000 of them. An event that cannot be enabled (one refused site makes the kernel
    roll back the whole event) is removed and its sites registered as events of their own,
    so each refusal names its site and the kernel's reason."""
    groups = [entries[i : i + SITES_PER_EVENT] for i in range(0, len(entries), SITES_PER_EVENT)]
    lines = []
    for number, group in enumerate(groups):
        event = f"e_{number}"
        lines += [
            f"echo {shlex.quote(f'p:{GROUP}/{event} {path}:{entry.offset:#x}')} >> "
            f"{TRACEFS}/uprobe_events 2>/dev/null"
            for entry in group
        ]
        lines.append(
            f"echo 1 > {TRACEFS}/events/{GROUP}/{event}/enable 2>/dev/null "
            f'|| echo "UNENABLED {number}"'
        )
    unenabled = {
        int(line.split()[1]) for line in _run_lines(guest, lines) if line.startswith("UNENABLED ")
    }
    listing = _definitions(guest)
    held = {offset for _, offset in listing}
    removals = [
        f"echo {shlex.quote(f'-:{GROUP}/e_{n}')} >> {TRACEFS}/uprobe_events" for n in unenabled
    ]
    alone = [  # a refused event's sites, and any site the kernel did not append
        entry
        for number, group in enumerate(groups)
        for entry in group
        if number in unenabled or entry.offset not in held
    ]
    refused: dict[str, str] = {}
    for line in _run_lines(guest, removals + _one_event_per_site(path, alone)):
        if line.startswith("REFUSED "):
            _, name, why = line.split(" ", 2)
            refused[name] = why
    definitions = _definitions(guest) if alone else listing  # a fallback changed the list
    names = {entry.offset: entry.probe_name for entry in entries}
    held_names = {names.get(offset) for _, offset in definitions}
    missing = [e.probe_name for e in entries if e.probe_name not in held_names | refused.keys()]
    assert not missing, f"{len(missing)} probe(s) neither registered nor refused: {missing[:10]}"
    return Registered(refused, definitions, names)


def _command_line(program: str, argv: list[str], stdin: str) -> str:
    line = shlex.join([program, *argv])
    return f"{line} < {shlex.quote(stdin)}" if stdin else line


@pytest.fixture
def no_aslr(guest):
    """Address-space randomization off while the test runs: the three runs of a command are
    three processes, and code whose branches depend on addresses (e.g. a string compare's
    page-crossing check) would run a different number of times in each."""
    knob = "/proc/sys/kernel/randomize_va_space"
    before = guest.run(["cat", knob], check=True).stdout.strip()
    guest.run(f"echo 0 > {knob}", check=True)
    yield
    if guest.vm.alive():  # a dead guest is replaced anyway
        guest.run(f"echo {shlex.quote(before)} > {knob}", timeout=30, check=True)


@dataclass(frozen=True)
class Workload:
    program: RealProgram
    binary: Path  # on the host
    path: str  # the program in the guest
    work: str  # the workload directory in the guest
    counter: str  # bpcount in the guest


def _prepare(guest, target, program: RealProgram) -> Workload:
    binary = Path(program.path)
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    path = guest.upload(target_from_binary(program.name, binary, digest))
    counter, _ = target("bpcount")
    work = f"/tmp/uph-real-{program.name}"
    guest.run(f"rm -rf {work} && mkdir -p {work}", check=True)
    guest.run(f"cd {work} && {program.setup}", check=True)
    return Workload(program, binary, path, work, counter)


def _unprobed_and_counted(
    guest, workload: Workload, sites: list[FunctionEntry], tag: str, phases: PhaseTimer
):
    """Each command run unprobed, then under the ptrace counter with a breakpoint on every
    site: ([unprobed results], [{probe name: times executed}])."""
    addresses = f"{workload.work}/{tag}.addresses"
    unique = sorted({s.address for s in sites})
    guest.vm.ssh.put("".join(f"{a:x}\n" for a in unique).encode(), addresses)
    unprobed, counted = [], []
    for command in workload.program.commands:
        line = _command_line(workload.path, command.argv, command.stdin)
        with phases("unprobed"):
            plain = guest.run(f"cd {workload.work} && {line}", timeout=300)
        with phases("ptrace_counted"):
            traced = guest.run(
                f"cd {workload.work} && {workload.counter} {addresses} -- {line}", timeout=900
            )
        summary = re.search(
            r"^bpcount status=(\d+) traps=(\d+) emulated=(\d+)$", traced.stderr, re.M
        )
        assert summary, f"bpcount failed on {command.argv}: {traced.stderr[-2000:]}"
        assert traced.stdout == plain.stdout, f"{command.argv}: the ptrace oracle changed output"
        counts = {
            f"f_{a}": int(n) for a, n in re.findall(r"^([0-9a-f]+) (\d+)$", traced.stderr, re.M)
        }
        unprobed.append(plain)
        counted.append(counts)
    return unprobed, counted


def _probed_differences(
    guest, workload: Workload, sites: list[FunctionEntry], unprobed, counted, phases: PhaseTimer
):
    """A probe on every site, the workload run again: (differences from the unprobed run
    and from the counted hits, {probe name: why it was refused})."""
    by_name = {s.probe_name: s for s in sites}
    path = workload.path
    # a sleeper maps the copy, so enabling analyses every site now
    idle = shlex.join([path, *workload.program.idle])
    sleeper = guest.run(
        f"cd {workload.work} && ({idle} >/dev/null 2>&1 & echo $!)", check=True
    ).stdout.strip()
    try:
        guest.run(f"echo 0 > {TRACEFS}/tracing_on", check=True)  # count, do not log
        with phases("register"):
            registered = _register(guest, path, sites)
        refused = registered.refused
        differences = []
        before = registered.profile(guest)  # each command's "after" is the next one's "before"
        for command, plain, expected in zip(
            workload.program.commands, unprobed, counted, strict=True
        ):
            line = _command_line(path, command.argv, command.stdin)
            with phases("probed"):
                probed = guest.run(f"cd {workload.work} && {line}", timeout=900)
            with phases("profile"):
                after = registered.profile(guest)
            if (probed.status, probed.stdout, probed.stderr) != (
                plain.status,
                plain.stdout,
                plain.stderr,
            ):
                differences.append(
                    f"{command.argv}: probed {probed.describe()} / output "
                    f"{probed.stdout[:200]!r} {probed.stderr[:200]!r}; unprobed "
                    f"{plain.describe()} / {plain.stdout[:200]!r} {plain.stderr[:200]!r}"
                )
            for name, site in by_name.items():
                if name in refused:
                    continue
                hits = after.get(name, 0) - before.get(name, 0)
                if hits != expected.get(name, 0):
                    differences.append(
                        f"{command.argv}: {site.label} ({site.insn}): "
                        f"{hits} hits, executed {expected.get(name, 0)} times"
                    )
            before = after
    finally:
        guest.run(f"kill {shlex.quote(sleeper)}", timeout=30)
    return differences, refused


def _record(request, sites, counted, refused) -> set[str]:
    by_name = {s.probe_name: s for s in sites}
    executed = {name for counts in counted for name in counts}
    request.node.user_properties.extend(
        [
            ("sites", len(sites)),
            ("sites_executed", len(executed)),
            ("refused", len(refused)),
            (
                "refused_sites",
                "; ".join(
                    f"{by_name[n].label} [{by_name[n].insn}]: {why}"
                    for n, why in sorted(refused.items())
                )[:4000],
            ),
        ]
    )
    return executed


# guest -> {program name: the unprobed runs and entry counts of its workload}: taken once
# per guest, shared by the two modes (weak: a retired guest takes its runs with it)
_ENTRY_RUNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _entry_runs(guest, workload: Workload, entries: list[FunctionEntry], phases: PhaseTimer):
    runs = _ENTRY_RUNS.setdefault(guest, {})
    if workload.program.name not in runs:
        runs[workload.program.name] = _unprobed_and_counted(
            guest, workload, entries, "entries", phases
        )
    return runs[workload.program.name]


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_every_function_entry_probed(guest, target, uprobe, no_aslr, program, request, phases):
    with phases("prepare"):
        workload = _prepare(guest, target, program)
        entries = function_entries(workload.binary)
    unprobed, counted = _entry_runs(guest, workload, entries, phases)
    differences, refused = _probed_differences(guest, workload, entries, unprobed, counted, phases)
    with phases("unregister"):
        uprobe.clear()
    executed = _record(request, entries, counted, refused)
    assert len(executed) > 50, f"the workload ran only {len(executed)} probed functions"
    assert not differences, f"{len(differences)} difference(s):\n" + "\n".join(differences[:40])


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("program", [p for p in PROGRAMS if p.hot_functions], ids=lambda p: p.name)
def test_every_instruction_of_hot_functions_probed(
    guest, target, uprobe, no_aslr, program, request, phases
):
    """The second mode: a probe on every instruction (capstone, linear over the unwind
    table's range) of the functions the workload enters most, so jumps, calls, returns,
    loads and stores of real code run under the probe in the middle of a function, with the
    same two oracles."""
    with phases("prepare"):
        workload = _prepare(guest, target, program)
        entries = function_entries(workload.binary)
    _, entry_counts = _entry_runs(guest, workload, entries, phases)
    totals: dict[str, int] = {}
    for counts in entry_counts:
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    hot = hot_functions(
        entries, totals, program.hot_functions, program.hot_calls_max, program.hot_bytes_min
    )
    assert len(hot) == program.hot_functions, f"only {len(hot)} hot functions"
    sites = [site for function in hot for site in instructions_of(workload.binary, function)]
    unprobed, counted = _unprobed_and_counted(guest, workload, sites, "hot", phases)
    differences, refused = _probed_differences(guest, workload, sites, unprobed, counted, phases)
    with phases("unregister"):
        uprobe.clear()
    executed = _record(request, sites, counted, refused)
    request.node.user_properties.append(
        ("hot_functions", ", ".join(f"{f.label} ({f.size} bytes)" for f in hot))
    )
    assert len(executed) > 50, f"the workload ran only {len(executed)} of {len(sites)} sites"
    assert not differences, f"{len(differences)} difference(s):\n" + "\n".join(differences[:40])
