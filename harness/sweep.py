"""The differential instruction sweep: every generated form (harness/sweep_corpus.py) runs
in the guest once unprobed and once with a uprobe on it; the two states are compared.

Forms are batched: one program per batch (one case function per form) and one probe per
form, all registered for one probed run (harness/transparency.py does the runs). Verdicts
are classified per form: identical, differs (names what), signal (a different signal),
hits (probe hit count wrong), refused (the kernel would not probe it, with errno), crashed
(a kernel splat while it ran), missing (the unprobed run printed nothing).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import insn, known_bugs, sweep_corpus, transparency
from .errors import HarnessError
from .targets import target_from_binary

DEFAULT_BATCH = 700
DIFFERENCES = ("differs", "signal", "hits", "crashed", "missing")


@dataclass
class FormResult:
    form: sweep_corpus.Form
    verdict: transparency.CaseVerdict
    known_bug: str = ""          # the known-bugs reason, if one matches

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    def line(self) -> str:
        known = f"  [known bug: {self.known_bug[:90]}]" if self.known_bug else ""
        return (f"{self.outcome:<9} {self.form.klass:<8} {self.form.display()}\n"
                f"{'':<18}{self.verdict.detail[:300]}{known}")


@dataclass
class SweepReport:
    kernel: str
    results: list[FormResult]
    corpus_size: int
    candidates: int
    dropped: Counter
    seconds: float
    batches: int
    timings: dict = field(default_factory=dict)

    def table(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {}
        for result in self.results:
            table.setdefault(result.form.klass, Counter())[result.outcome] += 1
        return table

    def differences(self, klass: str | None = None) -> list[FormResult]:
        return [r for r in self.results if r.outcome in DIFFERENCES
                and (klass is None or r.form.klass == klass)]

    def unexpected(self, klass: str | None = None) -> list[FormResult]:
        return [r for r in self.differences(klass) if not r.known_bug]


def run_sweep(guest, forms: list[sweep_corpus.Form], batch: int = DEFAULT_BATCH,
              note=print) -> tuple[dict[str, transparency.CaseVerdict], int]:
    """Run the forms in the guest; {form name: verdict} and the number of batches."""
    verdicts: dict[str, transparency.CaseVerdict] = {}
    chunks = [forms[i:i + batch] for i in range(0, len(forms), batch)]
    for number, chunk in enumerate(chunks, start=1):
        cases = [sweep_corpus.to_case(f) for f in chunk]
        program = insn.build_program(cases, f"sweep{number}", source="the instruction sweep")
        problems = sweep_corpus.verify_program(program, chunk)
        if problems:
            raise HarnessError(f"sweep batch {number}: {len(problems)} form(s) did not link "
                               f"as generated ({program.binary.parent}): "
                               + "; ".join(problems[:5]))
        path = guest.upload(target_from_binary(f"sweep{number}", program.binary,
                                               program.digest))
        start = time.monotonic()
        batch_verdicts = transparency.run_cases(guest, program, path)
        verdicts.update(batch_verdicts)
        odd = sum(v.outcome != "identical" for v in batch_verdicts.values())
        note(f"sweep batch {number}/{len(chunks)}: {len(chunk)} forms in "
             f"{time.monotonic() - start:.1f}s, {odd} not identical")
        guest.ensure_alive()
    return verdicts, len(chunks)


def attach_known_bugs(results: list[FormResult], kernel) -> None:
    """A difference listed in known_bugs.toml (test = "sweep:<form name pattern>")."""
    bugs = known_bugs.load()
    for result in results:
        if result.outcome in DIFFERENCES:
            bug = known_bugs.match(bugs, f"sweep:{result.form.name}", kernel)
            if bug:
                result.known_bug = f"{bug.reason} ({bug.link})" if bug.link else bug.reason


def sweep_guest(guest, kernel, filters: list[str] = (), batch: int = DEFAULT_BATCH,
                note=print) -> SweepReport:
    """Generate the corpus for the guest's CPU, run it, classify, attach known bugs."""
    start = time.monotonic()
    flags = transparency.guest_cpu_flags(guest)
    corpus = sweep_corpus.generate(flags)
    forms = sweep_corpus.select(corpus, list(filters))
    if not forms:
        raise HarnessError(f"sweep: no form matches --filter {' '.join(filters)}")
    note(f"sweep: {len(forms)} forms ({corpus.candidates} candidates, "
         f"{sum(corpus.dropped.values())} dropped) in batches of {batch}")
    verdicts, batches = run_sweep(guest, forms, batch, note)
    results = [FormResult(f, verdicts[f.name]) for f in forms]
    attach_known_bugs(results, kernel)
    label = kernel.label + (f" + {kernel.series}" if kernel.series else "")
    return SweepReport(label, results, len(forms), corpus.candidates, corpus.dropped,
                       time.monotonic() - start, batches)


def format_report(report: SweepReport, limit: int = 0) -> str:
    table = report.table()
    outcomes = [o for o in transparency.OUTCOMES if any(c[o] for c in table.values())]
    lines = [f"instruction sweep on {report.kernel}: {report.corpus_size} forms in "
             f"{report.seconds / 60:.1f} min ({report.batches} batches)",
             f"{'class':<10}{'forms':>7}" + "".join(f"{o:>10}" for o in outcomes)]
    total = Counter()
    for klass in sweep_corpus.CLASSES:
        if klass in table:
            row = table[klass]
            total.update(row)
            lines.append(f"{klass:<10}{sum(row.values()):>7}"
                         + "".join(f"{row[o]:>10}" for o in outcomes))
    lines.append(f"{'total':<10}{sum(total.values()):>7}"
                 + "".join(f"{total[o]:>10}" for o in outcomes))
    dropped = ", ".join(f"{reason}: {count}" for reason, count in report.dropped.most_common())
    lines.append(f"generated {report.candidates} candidates; dropped {dropped}")
    refused = Counter(r.verdict.detail for r in report.results if r.outcome == "refused")
    if refused:
        lines.append("refused: " + ", ".join(f"{d} x{n}" for d, n in refused.most_common()))
    differences = report.differences()
    lines.append(f"{len(differences)} difference(s), {len(report.unexpected())} not in the "
                 f"known-bugs table:")
    shown = differences if not limit else differences[:limit]
    lines += [r.line() for r in shown]
    if len(shown) < len(differences):
        lines.append(f"... {len(differences) - len(shown)} more (see --json)")
    return "\n".join(lines)


def write_json(report: SweepReport, path: Path) -> None:
    data = {
        "kernel": report.kernel, "forms": report.corpus_size, "candidates": report.candidates,
        "dropped": dict(report.dropped), "seconds": round(report.seconds, 1),
        "batches": report.batches,
        "table": {k: dict(v) for k, v in report.table().items()},
        "results": [{"name": r.form.name, "class": r.form.klass,
                     "bytes": r.form.display().split("  ")[0].strip(), "insn": r.form.text,
                     "outcome": r.outcome, "detail": r.verdict.detail, "hits": r.verdict.hits,
                     "known_bug": r.known_bug} | ({"form": asdict(r.form) | {
                         "head": r.form.head.hex(), "imm": r.form.imm.hex()}}
                         if r.outcome != "identical" else {})
                    for r in report.results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
