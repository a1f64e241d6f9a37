"""Run instruction cases in a guest unprobed and probed, and classify each case.

One SSH round trip per run: the probed run starts the program stopped (--pause) so that
enabling each probe analyses the instruction while the file is mapped; a refusal is then
reported with its errno instead of silently leaving the probe uninstalled."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from harness.machine import console
from harness.probing import insn, probes
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


def probed_run_script(path: str, program_probes: list[Probe], output: str) -> str:
    """One guest script: start the program stopped, register and enable every probe, let it
    run, print its output, the trace counts and the ring-buffer stats. Each probe is defined
    by its own write (a write of many lines could split one, and the kernel would take the
    piece for a definition); all are enabled by one write to the group's enable file, and a
    probe that stayed disabled is enabled alone again, so that `refused NAME add|enable
    ERROR` names it."""
    group = f"{TRACEFS}/events/{probes.GROUP}"
    lines = [
        f"{probes.remove_all_command()}",
        f"echo 16384 > {TRACEFS}/buffer_size_kb; echo > {TRACEFS}/trace; "
        f"echo 1 > {TRACEFS}/tracing_on",
        f"{shlex.quote(path)} --pause --kmsg --twice > {shlex.quote(output)} 2>&1 & pid=$!",
        "n=0; while ! grep -q '^State:.*T' /proc/$pid/status 2>/dev/null && [ $n -lt 500 ]; "
        "do sleep 0.01; n=$((n+1)); done",
    ]
    for probe in program_probes:
        lines.append(
            f"{probes.add_command(probe)} 2>/tmp/uph-err || "
            f'echo "refused {probe.name} add $(cat /tmp/uph-err)"'
        )
    if program_probes:
        lines.append(f"echo 1 > {group}/enable 2>/dev/null")
    for probe in program_probes:
        enable = f"{group}/{probe.name}/enable"
        lines.append(
            f'[ ! -e {enable} ] || {{ read v < {enable}; [ "$v" = 1 ] || '
            f"echo 1 > {enable} 2>/tmp/uph-err || "
            f'echo "refused {probe.name} enable $(cat /tmp/uph-err)"; }}'
        )
    lines += [
        'kill -CONT $pid; wait $pid; echo "status=$?"',
        f"cat {shlex.quote(output)}",
        f"echo ===; {probes.trace_counts_command()}",
        f"echo ===; cat {TRACEFS}/per_cpu/cpu*/stats",
        probes.remove_all_command(),
    ]
    return "\n".join(lines)


def run_cases(
    guest, program: insn.Program, guest_path: str, states: dict | None = None
) -> dict[str, CaseVerdict]:
    """{case name: verdict}; with `states`, also fill {case name: [(unprobed, probed) of
    each execution]}."""
    unprobed = guest.run([guest_path, "--twice"], timeout=300)
    expected = insn.parse_output(unprobed.stdout)
    offsets = probes.symbol_offsets(
        program.binary, [f"probe_{i}" for i in range(len(program.cases))]
    )
    case_probes = {
        case.name: Probe(f"c{index}", guest_path, offsets[f"probe_{index}"])
        for index, case in enumerate(program.cases)
    }
    script = probed_run_script(guest_path, list(case_probes.values()), "/tmp/uph-insn.out")
    console_start = guest.vm.console_offset()
    # as a script, not `sh -c SCRIPT`: one argument is limited to 128 KiB (MAX_ARG_STRLEN)
    result = guest.run(script, timeout=600)
    time.sleep(0.1)  # let the console drain the last lines
    crashes = crashes_by_case(guest.vm.console_since(console_start))
    main_text, counts_text, stats_text = (result.stdout.split("===\n") + ["", ""])[:3]
    refused = {}
    for line in main_text.splitlines():
        if line.startswith("refused "):
            _, name, step, *message = line.split(" ", 3)
            refused[name] = f"{step}: {' '.join(message).strip()}"
    actual = insn.parse_output(main_text)
    counts = probes.parse_trace_counts(counts_text)
    overruns = probes.parse_overruns(stats_text)
    status_words = [w for w in main_text.split() if w.startswith("status=")]
    probed_status = int(status_words[-1].split("=")[1]) if status_words else -1
    verdicts = {}
    for case in program.cases:
        probe = case_probes[case.name]
        hits = counts.get(probe.name, 0)
        runs = [
            (expected.get(case.name + suffix), actual.get(case.name + suffix))
            for suffix in EXECUTION_SUFFIXES
        ]
        verdicts[case.name] = _classify(
            case.name, runs, refused.get(probe.name), hits, overruns, unprobed.status
        )
        if states is not None:
            states[case.name] = runs
    for name, title in crashes.items():
        if name in verdicts:
            verdicts[name] = CaseVerdict(name, "crashed", title, verdicts[name].hits)
    if probed_status != unprobed.status:  # e.g. a stray SIGTRAP after the last case
        for name, verdict in verdicts.items():
            if verdict.outcome == "identical":
                verdicts[name] = CaseVerdict(
                    name,
                    "signal",
                    f"the probed run exited with status {probed_status}, "
                    f"the unprobed one with {unprobed.status}",
                    verdict.hits,
                )
    return verdicts


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
