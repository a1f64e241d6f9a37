"""The differential instruction sweep as scenarios: one test per instruction class.

Every generated form (harness/sweep_corpus.py, ~10,000 of them) runs unprobed and probed in
one guest; a class fails on any difference (registers, flags, FP/SIMD state, memory, signal,
hit count, kernel splat) that the known-bugs table (harness/configs/known_bugs.toml,
`test = "sweep:<form name>"`) does not explain. A class whose only differences are known
bugs is an XFAIL naming them (the nightly matrix and history show it turn to passed when
the fixes land); a class without differences passes. Refusals are not differences: they
are listed in the summary (`python -m harness sweep` prints the whole table)."""

from collections import Counter

import pytest

from harness.sweep_corpus import CLASSES

pytestmark = [pytest.mark.sweep, pytest.mark.vm(smp=1)]


@pytest.mark.parametrize("klass", CLASSES)
def test_sweep_class_transparent(request, instruction_sweep, klass):
    forms = [r for r in instruction_sweep.results if r.form.klass == klass]
    assert forms, f"the corpus has no {klass} forms"
    outcomes = {}
    for result in forms:
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
    request.node.user_properties.append(("forms", len(forms)))
    for outcome, count in sorted(outcomes.items()):
        request.node.user_properties.append((f"outcome_{outcome}", count))
    known = [r for r in instruction_sweep.differences(klass) if r.known_bug]
    if known:
        request.node.user_properties.append(("known_differences", len(known)))
    unexpected = instruction_sweep.unexpected(klass)
    assert not unexpected, (f"{len(unexpected)} of {len(forms)} {klass} forms are not "
                            f"transparent under a uprobe:\n"
                            + "\n".join(r.line() for r in unexpected[:40]))
    if known:
        pytest.xfail(known_bugs_reason(known, len(forms)))


def known_bugs_reason(known, total: int) -> str:
    """One xfail reason for the known differences of a class: count per known bug."""
    per_bug = Counter(r.known_bug for r in known)
    return (f"known bug: {len(known)} of {total} forms differ, all explained by the known-bugs "
            "table: " + "; ".join(f"{n} x {reason}" for reason, n in per_bug.most_common()))
