"""The differential instruction sweep: every generated form (harness/sweep/corpus.py) runs
in the guest once unprobed and once with a uprobe on it; the two states are compared.

Forms are batched: one program per batch (one case function per form) and one probe per
form, all locations of one event for one probed run (harness/probing/transparency.py does
the runs, and runs the forms never hit again, one event each). Verdicts
are classified per form: identical, differs (names what), signal (a different signal),
hits (probe hit count wrong), refused (the kernel would not probe it, with errno), crashed
(a kernel splat while it ran), missing (the unprobed run printed nothing).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.phases import PhaseTimer
from harness.phases import summary as phase_summary
from harness.probing import insn, transparency
from harness.probing.targets import target_from_binary
from harness.results import known_bugs
from harness.sweep import corpus as sweep_corpus

log = logging.getLogger(__name__)

DEFAULT_BATCH = 700
DIFFERENCES = ("differs", "signal", "hits", "crashed", "missing")
# not kernel verdicts: the emulator disagrees with itself or with the hardware
OUTCOMES = transparency.OUTCOMES + ("unstable", "emulator")


@dataclass
class FormResult:
    form: sweep_corpus.Form
    verdict: transparency.CaseVerdict
    known_bug: str = ""  # the known-bugs reason, if one matches
    unprobed: insn.CaseState | None = None  # kept for forms that were not identical
    probed: insn.CaseState | None = None

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    def line(self) -> str:
        known = f"  [known bug: {self.known_bug[:90]}]" if self.known_bug else ""
        return (
            f"{self.outcome:<9} {self.form.klass:<8} {self.form.display()}\n"
            f"{'':<18}{self.verdict.detail[:300]}{known}"
        )


@dataclass
class SweepReport:
    kernel: str
    results: list[FormResult]
    corpus_size: int
    candidates: int
    dropped: Counter
    seconds: float
    batches: int
    machines: int = 1
    timings: dict = field(default_factory=dict)  # {phase: seconds, summed over the guests}
    stale: dict = field(default_factory=dict)  # {class: [stale known-bugs entry message]}
    known_states: dict = field(default_factory=dict)  # {class: {entry: showed|absent}}

    def table(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {}
        for result in self.results:
            table.setdefault(result.form.klass, Counter())[result.outcome] += 1
        return table

    def differences(self, klass: str | None = None) -> list[FormResult]:
        return [
            r
            for r in self.results
            if r.outcome in DIFFERENCES and (klass is None or r.form.klass == klass)
        ]

    def unexpected(self, klass: str | None = None) -> list[FormResult]:
        return [r for r in self.differences(klass) if not r.known_bug]

    def known(self, klass: str | None = None) -> Counter:
        """{known-bugs reason: number of differing forms it explains}."""
        return Counter(r.known_bug for r in self.differences(klass) if r.known_bug)


def default_machines() -> int:
    """How many guests share a sweep: one per host CPU (each guest has one vCPU, one TCG
    thread), at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class _MachineDied(Exception):
    pass


def run_sweep(
    guests: list,
    forms: list[sweep_corpus.Form],
    batch: int = DEFAULT_BATCH,
    states: dict | None = None,
    phases: PhaseTimer | None = None,
) -> tuple[dict[str, transparency.CaseVerdict], int]:
    """Run the forms in the guests (each takes the next batch when it is free); {form name:
    verdict} and the number of batches. With `states`, keep {name: (unprobed, probed)} of
    every form that was not identical; with `phases`, add the time of each phase of each
    batch there. A guest whose machine dies marks its batch "crashed" and takes no more;
    batches no guest could run are "missing"."""
    timer = phases if phases is not None else PhaseTimer()
    if batch < 1:
        raise HarnessError(f"sweep: --batch must be at least 1, not {batch}")
    verdicts: dict[str, transparency.CaseVerdict] = {}
    host_flags = _host_cpu_flags()
    chunks = []
    for bits in (64, 32):  # a program is either 64-bit or a 32-bit task
        same = [f for f in forms if f.bits == bits]
        chunks += [same[i : i + batch] for i in range(0, len(same), batch)]
    pending = deque(enumerate(chunks, start=1))
    lock = threading.Lock()
    deaths: list[int] = []
    errors: list[BaseException] = []

    def work(guest) -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                number, chunk = pending.popleft()
            try:
                batch_verdicts, batch_states = _run_batch(
                    guest, number, len(chunks), chunk, host_flags, timer
                )
            except _MachineDied as died:
                with lock:
                    deaths.append(number)
                    for form in chunk:
                        verdicts[form.name] = transparency.CaseVerdict(
                            form.name, "crashed", f"the VM died during batch {number}: {died}"
                        )
                return
            except BaseException as error:  # re-raised by run_sweep
                with lock:
                    errors.append(error)
                return
            with lock:
                verdicts.update(batch_verdicts)
                if states is not None:
                    states.update(
                        {
                            name: pair
                            for name, pair in batch_states.items()
                            if batch_verdicts[name].outcome != "identical"
                        }
                    )

    threads = [
        threading.Thread(target=work, args=(g,), name=f"sweep-{number}")
        for number, g in enumerate(guests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for _, chunk in pending:
        for form in chunk:
            verdicts[form.name] = transparency.CaseVerdict(
                form.name, "missing", f"not run: the VM died during batch {min(deaths)}"
            )
    return verdicts, len(chunks)


def _run_batch(
    guest,
    number: int,
    total: int,
    chunk: list[sweep_corpus.Form],
    host_flags: set[str],
    phases: PhaseTimer,
) -> tuple[dict[str, transparency.CaseVerdict], dict]:
    """One batch in one guest: its verdicts and {name: [(unprobed, probed)]}; _MachineDied
    (with the console's last line) when the machine died while it ran."""
    cases = [sweep_corpus.to_case(f) for f in chunk]
    with phases("build"):
        program = insn.build_program(
            cases, f"sweep{number}", source="the instruction sweep", bits=chunk[0].bits
        )
    with phases("verify"):
        problems = sweep_corpus.verify_program(program, chunk)
    if problems:
        raise HarnessError(
            f"sweep batch {number}: {len(problems)} form(s) did not link "
            f"as generated ({program.binary.parent}): " + "; ".join(problems[:5])
        )
    with phases("upload"):
        path = guest.upload(target_from_binary(f"sweep{number}", program.binary, program.digest))
    start = time.monotonic()
    try:
        batch_states: dict = {}
        batch_verdicts = transparency.run_cases(guest, program, path, batch_states, phases)
        with phases("emulator_check"):
            batch_verdicts = check_emulator(
                guest, path, program, chunk, batch_verdicts, batch_states, host_flags
            )
    except Exception:
        if guest.vm.alive():
            raise
        # the machine died (a kernel panic, or the emulator itself): the console says why
        last = [line for line in guest.vm.console_text().splitlines() if line.strip()]
        why = last[-1][:200] if last else "no console output"
        log.warning(f"sweep batch {number}/{total}: the VM died ({why})")
        raise _MachineDied(why) from None
    with phases("referee"):
        batch_verdicts = referee_natively(program, chunk, batch_verdicts, batch_states, host_flags)
    odd = sum(v.outcome != "identical" for v in batch_verdicts.values())
    log.info(
        f"sweep batch {number}/{total}: {len(chunk)} forms in "
        f"{time.monotonic() - start:.1f}s, {odd} not identical"
    )
    guest.ensure_alive()
    return batch_verdicts, batch_states


def check_emulator(
    guest,
    path: str,
    program: insn.Program,
    forms: list[sweep_corpus.Form],
    verdicts: dict[str, transparency.CaseVerdict],
    states: dict,
    host_flags: set[str],
) -> dict[str, transparency.CaseVerdict]:
    """Self-checks of the emulator for the forms that were not identical: another unprobed
    run must print the state the verdict's unprobed run printed ("unstable" otherwise;
    `states`: {name: (unprobed, probed)}), and single-stepping with TF, which
    is how the kernel runs a probed insn out of line, must stop where the host CPU stops
    ("emulator" otherwise; without a host reference: right after the insn, except for
    rep-prefixed string insns, which stop per iteration)."""
    import subprocess

    odd = [f for f in forms if verdicts[f.name].outcome not in ("identical", "refused")]
    if not odd:
        return verdicts
    # only the odd cases (the driver resets every case's state, so a case runs the same
    # alone or after the others); a long argument list goes as a script (guest.run)
    names = [f.name for f in odd]
    again = insn.parse_output(guest.run([path, "--twice", *names], timeout=300).stdout)
    stepped = insn.parse_output(guest.run([path, "--tf", *names], timeout=300).stdout)
    hardware = insn.parse_output(
        subprocess.run(
            [str(program.binary), "--tf", *names], capture_output=True, text=True, timeout=300
        ).stdout
    )
    checked = dict(verdicts)
    for form in odd:
        verdict = verdicts[form.name]
        runs = states[form.name]
        index = min(verdict.execution, len(runs)) - 1
        a = runs[index][0]
        b = again.get(form.name + transparency.EXECUTION_SUFFIXES[index])
        if a and b and insn.diff_states(a, b):
            checked[form.name] = transparency.CaseVerdict(
                form.name,
                "unstable",
                "two unprobed runs differ: "
                + "; ".join(insn.diff_states(a, b))
                + f" (probed: {verdict.detail})",
                verdict.hits,
            )
            continue
        step = stepped.get(form.name)
        if step is None or step.fields.get("sig") != "0":
            continue
        reference = hardware.get(form.name)
        if all(n in host_flags for n in form.needs) and reference is not None:
            expected = reference.fields.get("tf")
        elif form.branch or form.text.split()[0] in ("rep", "repne", "repe"):
            continue
        else:
            expected = str(form.length)
        if step.fields.get("tf") != expected:
            checked[form.name] = transparency.CaseVerdict(
                form.name,
                "emulator",
                f"single-stepping it with TF stops at "
                f"+{step.fields.get('tf')}, the CPU at +{expected}: the emulator's "
                f"single-step is wrong, so out-of-line execution is too "
                f"(probed: {verdict.detail})",
                verdict.hits,
            )
    return checked


def referee_natively(
    program: insn.Program,
    forms: list[sweep_corpus.Form],
    verdicts: dict[str, transparency.CaseVerdict],
    states: dict,
    host_flags: set[str],
) -> dict[str, transparency.CaseVerdict]:
    """Run the batch's program on the host CPU (real hardware, no probes; the same binary,
    so the same addresses). A difference only says something about the kernel if the
    emulator ran the unprobed insn as the hardware does: otherwise reclassify it as
    "emulator" (naming what the hardware disagrees with)."""
    import subprocess

    if program.avx and "avx" not in host_flags:
        return verdicts  # every case of this program starts with AVX loads
    suspects = [
        f
        for f in forms
        if verdicts[f.name].outcome in ("differs", "signal")
        and all(n in host_flags for n in f.needs)
    ]
    if not suspects:
        return verdicts
    native = insn.parse_output(
        subprocess.run([str(program.binary)], capture_output=True, text=True, timeout=300).stdout
    )
    checked = dict(verdicts)
    for form in suspects:
        hardware, (unprobed, probed) = native.get(form.name), states[form.name][0]
        if hardware is None or unprobed is None:
            continue
        wrong = insn.diff_states(hardware, unprobed)
        if wrong:
            verdict = verdicts[form.name]
            agrees = probed is not None and not insn.diff_states(hardware, probed)
            checked[form.name] = transparency.CaseVerdict(
                form.name,
                "emulator",
                f"the host CPU disagrees with the unprobed guest run ({'; '.join(wrong[:3])})"
                + (", and agrees with the probed one" if agrees else "")
                + f": the emulator runs this insn wrongly (probed: {verdict.detail})",
                verdict.hits,
            )
    return checked


def attach_known_bugs(
    results: list[FormResult], kernel, states: dict | None = None
) -> dict[str, list[str]]:
    """A difference listed in known_bugs.toml (test = "sweep:<form name pattern>").
    Returns the stale entries per class: {class: [message]}, an entry that applies to this
    kernel and matched forms of the class that ran, none of which differed. `states`, if
    given, receives {class: {entry: "showed" | "absent"}} for every applying entry."""
    bugs = known_bugs.load()
    patches = known_bugs.patches_of(kernel)
    release = getattr(kernel, "release", "") or ""
    applying = [b for b in bugs if b.applies_to_kernel(kernel.spec, patches, release)]
    expected: dict[tuple[int, str], int] = Counter()  # (entry, class) -> forms that ran
    showed: set[tuple[int, str]] = set()
    for result in results:
        name = f"sweep:{result.form.name}"
        for index, bug in enumerate(applying):
            if bug.matches_test(name) and result.outcome not in (
                "refused",
                "unstable",
                "emulator",
                "crashed",
            ):
                expected[index, result.form.klass] += 1
        if result.outcome in DIFFERENCES:
            # the first applying entry that names the form (what known_bugs.match() finds,
            # without re-reading the kernel's metadata for every differing form)
            first = next((i for i, b in enumerate(applying) if b.matches_test(name)), None)
            if first is not None:
                bug = applying[first]
                result.known_bug = f"{bug.reason} ({bug.link})" if bug.link else bug.reason
                showed.add((first, result.form.klass))
    stale: dict[str, list[str]] = {}
    if states is not None:
        for index, klass in set(expected) | showed:
            states.setdefault(klass, {})[applying[index].key] = (
                "showed" if (index, klass) in showed else "absent"
            )
    for (index, klass), forms in expected.items():
        if (index, klass) not in showed and forms:
            stale.setdefault(klass, []).append(
                f"{applying[index].stale_message(kernel.label)} ({forms} matching forms ran, "
                f"all identical)"
            )
    return stale


def sweep_guest(
    guest,
    kernel,
    filters: tuple[str, ...] | list[str] = (),
    batch: int = DEFAULT_BATCH,
    helpers: list | tuple = (),
) -> SweepReport:
    """Generate the corpus for the guest's CPU, run it (sharing the batches with `helpers`,
    more guests of the same kernel), classify, attach known bugs."""
    start = time.monotonic()
    phases = PhaseTimer()
    with phases("corpus"):
        flags = transparency.guest_cpu_flags(guest)
        corpus = sweep_corpus.generate(flags)
        forms = sweep_corpus.select(corpus, list(filters))
    if not forms:
        raise HarnessError(f"sweep: no form matches --filter {' '.join(filters)}")
    log.info(
        f"sweep: {len(forms)} forms ({corpus.candidates} candidates, "
        f"{sum(corpus.dropped.values())} dropped) in batches of {batch}"
    )
    states: dict = {}
    verdicts, batches = run_sweep([guest, *helpers], forms, batch, states, phases)
    results = [
        FormResult(f, verdicts[f.name], "", *states.get(f.name, [(None, None)])[0]) for f in forms
    ]
    known_states: dict = {}
    with phases("known_bugs"):
        stale = attach_known_bugs(results, kernel, known_states)
    label = kernel.label + (f" + {kernel.series}" if kernel.series else "")
    return SweepReport(
        label,
        results,
        len(forms),
        corpus.candidates,
        corpus.dropped,
        time.monotonic() - start,
        batches,
        machines=1 + len(helpers),
        stale=stale if not filters else {},  # a filter may leave out forms
        known_states=known_states if not filters else {},
        timings=dict(phases.seconds),
    )


def _host_cpu_flags() -> set[str]:
    return transparency.cpu_flags(Path("/proc/cpuinfo").read_text())


def format_report(report: SweepReport, limit: int = 0) -> str:
    table = report.table()
    outcomes = [o for o in OUTCOMES if any(c[o] for c in table.values())]
    lines = [
        f"instruction sweep on {report.kernel}: {report.corpus_size} forms in "
        f"{report.seconds / 60:.1f} min ({report.batches} batches, {report.machines} "
        f"machine{'s' if report.machines > 1 else ''})",
        f"{'class':<10}{'forms':>7}" + "".join(f"{o:>10}" for o in outcomes),
    ]
    total: Counter[str] = Counter()
    for klass in sweep_corpus.CLASSES:
        if klass in table:
            row = table[klass]
            total.update(row)
            lines.append(
                f"{klass:<10}{sum(row.values()):>7}" + "".join(f"{row[o]:>10}" for o in outcomes)
            )
    lines.append(
        f"{'total':<10}{sum(total.values()):>7}" + "".join(f"{total[o]:>10}" for o in outcomes)
    )
    dropped = ", ".join(f"{reason}: {count}" for reason, count in report.dropped.most_common())
    lines.append(f"generated {report.candidates} candidates; dropped {dropped}")
    if report.timings:
        lines.append(
            "seconds per phase, summed over the machines: " + phase_summary(report.timings)
        )
    refused = Counter(r.verdict.detail for r in report.results if r.outcome == "refused")
    if refused:
        lines.append("refused: " + ", ".join(f"{d} x{n}" for d, n in refused.most_common()))
    differences = report.differences()
    lines.append(
        f"{len(differences)} difference(s), {len(report.unexpected())} not in the known-bugs table:"
    )
    lines += [
        f"STALE ({klass}): {message}"
        for klass, messages in report.stale.items()
        for message in messages
    ]
    shown = differences if not limit else differences[:limit]
    lines += [r.line() for r in shown]
    if len(shown) < len(differences):
        lines.append(f"... {len(differences) - len(shown)} more (see --json)")
    return "\n".join(lines)


def write_json(report: SweepReport, path: Path) -> None:
    data = {
        "kernel": report.kernel,
        "forms": report.corpus_size,
        "candidates": report.candidates,
        "dropped": dict(report.dropped),
        "seconds": round(report.seconds, 1),
        "batches": report.batches,
        "machines": report.machines,
        "timings": {name: round(seconds, 2) for name, seconds in report.timings.items()},
        "table": {k: dict(v) for k, v in report.table().items()},
        "results": [
            {
                "name": r.form.name,
                "class": r.form.klass,
                "bytes": r.form.hex_bytes(),
                "insn": r.form.text,
                "outcome": r.outcome,
                "detail": r.verdict.detail,
                "hits": r.verdict.hits,
                "known_bug": r.known_bug,
            }
            | (
                {"form": asdict(r.form) | {"head": r.form.head.hex(), "imm": r.form.imm.hex()}}
                if r.outcome != "identical"
                else {}
            )
            for r in report.results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
