"""Run instruction cases in a guest unprobed and probed, and classify each case.

One SSH round trip per run: the probed run starts the program stopped (--pause) so that
enabling each probe analyses the instruction while the file is mapped; a refusal is then
reported with its errno instead of silently leaving the probe uninstalled."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

from harness.machine import console
from harness.phases import PhaseTimer
from harness.probing import insn, probes
from harness.probing.guest import Guest
from harness.probing.probes import TRACEFS, Probe

OUTCOMES = ("identical", "differs", "refused", "hits", "signal", "missing", "crashed")


@dataclass(frozen=True)
class CaseVerdict:
    name: str
    outcome: str  # one of OUTCOMES
    detail: str = ""
    hits: int = 0
    fx_pointer_differs: bool = False  # x87 FIP/FDP reveal the XOL slot (informational)
    execution: int = 1  # which execution of the case the verdict is about (1 or 2)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first 'flags' line of /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def guest_cpu_flags(guest) -> set[str]:
    return cpu_flags(guest.run("grep -m1 '^flags' /proc/cpuinfo", check=True).stdout)


def supported(cases: list[insn.Case], flags: set[str]) -> tuple[list[insn.Case], list[insn.Case]]:
    ok = [c for c in cases if all(n in flags for n in c.needs)]
    return ok, [c for c in cases if c not in ok]


# each case runs twice in both runs (the driver's --twice): on 7.x a probe's first hit takes
# another path than its later ones (a nop10 is rewritten into a call to the trampoline)
EXECUTION_SUFFIXES = ("", "@2")


# every probe of a batched run is a location of this one event
BATCH_EVENT = "batch"
OUTPUT = "/tmp/uph-insn.out"
MARK = "uph-mark"  # a guest script's step marks on its stderr: 'uph-mark STEP UPTIME'


def _mark(step: str) -> str:
    """Script line: the guest's uptime (10 ms resolution) at the end of `step`, on stderr."""
    return f'read t _ < /proc/uptime; echo "{MARK} {step} $t" >&2'


def step_seconds(stderr: str) -> dict[str, float]:
    """{step: seconds since the previous mark} from a script's marks (the first mark only
    starts the clock)."""
    seconds: dict[str, float] = {}
    previous = None
    for line in stderr.splitlines():
        words = line.split()
        if len(words) != 3 or words[0] != MARK:
            continue
        try:
            now = float(words[2])
        except ValueError:
            continue
        if previous is not None:
            seconds[words[1]] = seconds.get(words[1], 0.0) + now - previous
        previous = now
    return seconds


def batched_run_script(path: str, program_probes: list[Probe], output: str) -> str:
    """One guest script for many probes, all locations of ONE event (a multi-probe event)
    enabled before the program starts: registering finds no process that maps the program,
    and each probe is installed when the program's exec maps it. An instruction the kernel
    refuses is then silently left unprobed: it shows as a case without hits, which
    run_cases() asks about again with probed_run_script(). Disabling one event waits for
    RCU once; 6.12 and later wait for an RCU tasks-trace grace period per disabled event,
    700 times for a sweep batch of one event per probe. A line 'unbatched ERROR' says the
    event could not be enabled at all."""
    enable = f"{TRACEFS}/events/{probes.GROUP}/{BATCH_EVENT}/enable"
    lines = [_mark("start"), *_fresh_tracing(), _mark("clear")]
    for probe in program_probes:  # one write per definition (see probed_run_script)
        lines.append(_add(probe, Probe(BATCH_EVENT, probe.path, probe.offset, probe.kind)))
    lines += [
        _mark("register"),
        f"echo 1 > {enable} 2>{probes.ERR_FILE} || {probes.say_error('unbatched')}",
        _mark("enable"),
        f'{shlex.quote(path)} --kmsg --twice > {shlex.quote(output)} 2>&1; echo "status=$?"',
        _mark("run"),
        *_report(output, probes.address_counts_command(BATCH_EVENT)),
    ]
    return "\n".join(lines)


def _fresh_tracing() -> list[str]:
    """Script lines: no probes left, an empty and large enough trace buffer, tracing on
    (comm recording is off since the guest's init: see init.sh.j2)."""
    return [
        probes.remove_all_command(),
        f"echo 16384 > {TRACEFS}/buffer_size_kb; echo > {TRACEFS}/trace; "
        f"echo 1 > {TRACEFS}/tracing_on",
    ]


def _add(probe: Probe, defined: Probe) -> str:
    """Script line: define `defined` (the probe itself, or the probe as a location of the
    batch event); a refusal is printed as 'refused NAME add ERROR' with the probe's name."""
    return f"{probes.add_command(defined)} 2>{probes.ERR_FILE} || " + probes.say_error(
        f"refused {probe.name} add"
    )


def _report(output: str, counts_command: str) -> list[str]:
    """Script lines after the run: the program's output, ===, the hit counts, ===, the
    ring-buffer stats; then the probes go."""
    return [
        f"cat {shlex.quote(output)}",
        f"echo ===; {counts_command}",
        f"echo ===; cat {TRACEFS}/per_cpu/cpu*/stats",
        _mark("report"),
        probes.remove_all_command(),
        _mark("remove"),
    ]


def probed_run_script(path: str, program_probes: list[Probe], output: str) -> str:
    """One guest script: start the program stopped, register and enable every probe, let it
    run, print its output, the trace counts and the ring-buffer stats. Each probe is defined
    by its own write (a write of many lines could split one, and the kernel would take the
    piece for a definition) and enabled by its own write, once (a write to the group's enable
    file would try every probe, and a refused one would be tried again alone to name its
    error: each refused attempt registers and unregisters, waiting for RCU grace periods),
    so that `refused NAME add|enable ERROR` names it. When none could be enabled, the
    program is killed instead of run ("status=skipped")."""
    group = f"{TRACEFS}/events/{probes.GROUP}"
    lines = [_mark("start"), *_fresh_tracing()] + [
        f"{shlex.quote(path)} --pause --kmsg --twice > {shlex.quote(output)} 2>&1 & pid=$!",
        "n=0; while ! grep -q '^State:.*T' /proc/$pid/status 2>/dev/null && [ $n -lt 500 ]; "
        "do sleep 0.01; n=$((n+1)); done",
    ]
    lines.append(_mark("clear"))
    lines += [_add(probe, probe) for probe in program_probes]
    lines.append(_mark("register"))
    for probe in program_probes:  # each once: a refused enable costs RCU grace periods
        enable = f"{group}/{probe.name}/enable"
        lines.append(
            f"[ ! -e {enable} ] || echo 1 > {enable} 2>{probes.ERR_FILE} || "
            + probes.say_error(f"refused {probe.name} enable")
        )
    lines += [
        _mark("enable"),
        # with every probe refused there is nothing to watch: the program is not run
        f"if grep -qx 1 {group}/*/enable 2>/dev/null; then "
        'kill -CONT $pid; wait $pid; echo "status=$?"; '
        'else kill -KILL $pid; wait $pid; echo "status=skipped"; fi',
        _mark("run"),
        *_report(output, probes.trace_counts_command()),
    ]
    return "\n".join(lines)


def run_cases(
    guest,
    program: insn.Program,
    guest_path: str,
    states: dict | None = None,
    phases: PhaseTimer | None = None,
) -> dict[str, CaseVerdict]:
    """{case name: verdict}; with `states`, also fill {case name: [(unprobed, probed) of
    each execution]}.

    The program runs unprobed, then with every case probed through one multi-probe event
    (batched_run_script); the cases that were reached but never hit (a refused instruction,
    or a probe that does not fire) run again probed one event each, the program stopped
    while they are enabled (probed_run_script), so that a refusal names its error and the
    verdict of such a case is the one the one-event-per-probe run gives. With `phases`, the
    wall time of each run (unprobed, batched, alone) and of each step inside the guest's
    probed-run scripts (batched.register, alone.run, ...) is added there."""
    timer = phases if phases is not None else PhaseTimer()
    with timer("unprobed"):
        unprobed = guest.run([guest_path, "--twice"], timeout=300)
    expected = insn.parse_output(unprobed.stdout)
    places = probes.symbol_places(program.binary, [f"probe_{i}" for i in range(len(program.cases))])
    case_probes = {
        case.name: Probe(f"c{index}", guest_path, places[f"probe_{index}"][1])
        for index, case in enumerate(program.cases)
    }
    at_address = {places[f"probe_{index}"][0]: f"c{index}" for index in range(len(program.cases))}
    # a case whose probed instruction is a breakpoint itself stays out of the batch: a
    # uprobe registered before the program maps the file cannot be prepared there, and the
    # kernel then restarts the program's own int3 for ever instead of sending SIGTRAP
    # (known_bugs.toml: test_own_breakpoint_under_a_probe_registered_before_exec)
    code = program.binary.read_bytes()
    traps = {
        case.name
        for index, case in enumerate(program.cases)
        if code[places[f"probe_{index}"][1]] == 0xCC
    }
    in_batch = [case for case in program.cases if case.name not in traps]
    run = _ProbedRun(guest, case_probes, expected, unprobed.status, timer)
    batched = batched_run_script(guest_path, [case_probes[c.name] for c in in_batch], OUTPUT)
    with timer("batched"):
        verdicts, runs, unbatched = run.verdicts(batched, in_batch, at_address, "batched")
    again = [
        case
        for case in program.cases
        if case.name in traps
        or unbatched
        or (verdicts[case.name].hits == 0 and expected.get(case.name) is not None)
    ]
    if again:
        alone = probed_run_script(guest_path, [case_probes[c.name] for c in again], OUTPUT)
        with timer("alone"):
            more, more_runs, _ = run.verdicts(alone, again, None, "alone")
        verdicts.update(more)
        runs.update(more_runs)
    if states is not None:
        states.update(runs)
    return verdicts


@dataclass
class _ProbedRun:
    """One probed run of a cases program, classified against its unprobed run."""

    guest: Guest
    case_probes: dict[str, Probe]
    expected: dict
    unprobed_status: int
    phases: PhaseTimer

    def verdicts(
        self,
        script: str,
        cases: Sequence[insn.Case],
        at_address: dict[int, str] | None,
        label: str,
    ) -> tuple[dict[str, CaseVerdict], dict[str, list], bool]:
        """Run `script` (probing `cases`); their verdicts, their (unprobed, probed) states,
        and whether the script said its multi-probe event could not be enabled. Hits are
        counted per event name, or per address of the batch event (`at_address`:
        {address: probe name}). The script's steps are timed as "LABEL.STEP"."""
        guest = self.guest
        console_start = guest.vm.console_offset()
        # as a script, not `sh -c SCRIPT`: one argument is limited to 128 KiB (MAX_ARG_STRLEN)
        result = guest.run(script, timeout=600)
        for step, seconds in step_seconds(result.stderr).items():
            self.phases.add(f"{label}.{step}", seconds)
        time.sleep(0.1)  # let the console drain the last lines
        crashes = crashes_by_case(guest.vm.console_since(console_start))
        main_text, counts_text, stats_text = (result.stdout.split("===\n") + ["", ""])[:3]
        refused, unbatched = {}, False
        for line in main_text.splitlines():
            if line.startswith("refused "):
                _, name, step, *message = line.split(" ", 3)
                refused[name] = f"{step}: {' '.join(message).strip()}"
            elif line.startswith("unbatched "):
                unbatched = True
        actual = insn.parse_output(main_text)
        if at_address is None:
            counts = probes.parse_trace_counts(counts_text)
        else:
            counts = {
                at_address[address]: hits
                for address, hits in probes.parse_address_counts(counts_text).items()
                if address in at_address
            }
        overruns = probes.parse_overruns(stats_text)
        status_words = [w for w in main_text.split() if w.startswith("status=")]
        if status_words and status_words[-1] == "status=skipped":  # every probe refused
            probed_status = self.unprobed_status
        else:
            probed_status = int(status_words[-1].split("=")[1]) if status_words else -1
        verdicts, runs = {}, {}
        for case in cases:
            probe = self.case_probes[case.name]
            hits = counts.get(probe.name, 0)
            runs[case.name] = [
                (self.expected.get(case.name + suffix), actual.get(case.name + suffix))
                for suffix in EXECUTION_SUFFIXES
            ]
            verdicts[case.name] = _classify(
                case.name,
                runs[case.name],
                refused.get(probe.name),
                hits,
                overruns,
                self.unprobed_status,
            )
        for name, title in crashes.items():
            if name in verdicts:
                verdicts[name] = CaseVerdict(name, "crashed", title, verdicts[name].hits)
        if probed_status != self.unprobed_status:  # e.g. a stray SIGTRAP after the last case
            for name, verdict in verdicts.items():
                if verdict.outcome == "identical":
                    verdicts[name] = CaseVerdict(
                        name,
                        "signal",
                        f"the probed run exited with status {probed_status}, "
                        f"the unprobed one with {self.unprobed_status}",
                        verdict.hits,
                    )
        return verdicts, runs, unbatched


def crashes_by_case(console_text: str) -> dict[str, str]:
    """Kernel splats in the console, attributed to the case whose CASE marker precedes
    them (the driver writes one to /dev/kmsg before each case): {case name: title}."""
    crashes: dict[str, str] = {}
    current, lines = "", []  # type: tuple[str, list[str]]

    def flush():
        if current and lines:
            found = console.scan("\n".join(lines), boot_banner_expected=False)
            if found:
                crashes[current] = found[0].title

    for line in console_text.splitlines():
        if "uprobe-harness: CASE " in line:
            flush()
            current, lines = line.split("uprobe-harness: CASE ", 1)[1].strip(), []
        else:
            lines.append(line)
    flush()
    return crashes


def _classify(name, runs, refused, hits, overruns, status) -> CaseVerdict:
    """runs: (unprobed state, probed state) of each execution of the case, in order."""
    if runs[0][0] is None:
        return CaseVerdict(name, "missing", f"the unprobed run printed no state (exit {status})")
    if refused:
        return CaseVerdict(name, "refused", refused)
    pointer = False
    for number, (expected, actual) in enumerate(runs, start=1):
        which = "" if number == 1 else f"execution {number} (the probe's hit {number}): "
        if expected is None:
            return CaseVerdict(
                name,
                "missing",
                f"the unprobed run printed no state for execution {number} (exit {status})",
                execution=number,
            )
        if actual is None:
            return CaseVerdict(
                name,
                "signal",
                "the probed run died before printing "
                + ("this case" if number == 1 else f"execution {number} of this case"),
                hits,
                execution=number,
            )
        differences = insn.diff_states(expected, actual)
        pointer = pointer or insn.fx_pointer_differs(expected, actual)
        if differences:
            outcome = (
                "signal"
                if expected.fields.get("sig", "0") != actual.fields.get("sig", "0")
                else "differs"
            )
            return CaseVerdict(name, outcome, which + "; ".join(differences), hits, pointer, number)
    if overruns == 0 and hits != len(runs):
        return CaseVerdict(
            name,
            "hits",
            f"probe hit {hits} times in {len(runs)} executions, expected {len(runs)}",
            hits,
            pointer,
        )
    return CaseVerdict(name, "identical", "", hits, pointer)
