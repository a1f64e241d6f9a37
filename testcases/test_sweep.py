"""The differential instruction sweep as scenarios: one test per instruction class.

Every generated form (harness/sweep/corpus.py, ~10,000 of them) runs unprobed and probed in
one guest; a class fails on any difference (registers, flags, FP/SIMD state, memory, signal,
hit count, kernel splat) that the known-bugs table (harness/configs/known_bugs.toml,
`test = "sweep:<form name>"`) does not explain. A class whose only differences are known
bugs is an XFAIL naming them (the nightly matrix and history show it turn to passed when
the fixes land); a class without differences passes. A known-bugs entry that applies to the
kernel but whose forms in the class all ran identical is stale: the class fails. Refusals
are not differences: they are listed in the summary (`python -m harness sweep` prints the
whole table)."""

import pytest

from harness.results import known_bugs
from harness.sweep.corpus import CLASSES

pytestmark = [pytest.mark.sweep, pytest.mark.vm(smp=1)]


@pytest.mark.parametrize("klass", CLASSES)
def test_sweep_class_transparent(request, instruction_sweep, klass):
    outcomes = instruction_sweep.table().get(klass)
    assert outcomes, f"the corpus has no {klass} forms"
    forms = sum(outcomes.values())
    request.node.user_properties.append(("forms", forms))
    for outcome, count in sorted(outcomes.items()):
        request.node.user_properties.append((f"outcome_{outcome}", count))
    states = instruction_sweep.known_states.get(klass)
    if states:  # which entries applied and whether they showed
        request.node.user_properties.append(known_bugs.states_property(states))
    known = instruction_sweep.known(klass)
    if known:
        request.node.user_properties.append(("known_differences", known.total()))
    unexpected = instruction_sweep.unexpected(klass)
    assert not unexpected, (
        f"{len(unexpected)} of {forms} {klass} forms are not "
        f"transparent under a uprobe:\n" + "\n".join(r.line() for r in unexpected[:40])
    )
    stale = instruction_sweep.stale.get(klass, [])
    assert not stale, "\n".join(stale)
    if known:
        pytest.xfail(
            f"known bug: {known.total()} of {forms} forms differ, all explained by "
            "the known-bugs table: "
            + "; ".join(f"{n} x {reason}" for reason, n in known.most_common())
        )
