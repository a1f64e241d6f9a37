"""Family 4 - RIP-relative instructions, rewritten by the kernel to use a scratch register.

Oracle: register file (the scratch register included), RFLAGS, memory and the private stack
after the probed instruction equal the unprobed run; each probe is hit exactly once.
Cases are data: testcases/cases/riprel.toml (loads, stores, read-modify-write, cmp/test,
indirect jmp/call, push, lea, implicit-register instructions, REX and VEX forms).

In a 32-bit (compat) task the same encoding (ModRM mod=00 rm=101) is an absolute disp32
operand, which the kernel must leave alone: the cases that are 32-bit code run there too,
with their operands made absolute (harness.probing.insn.compat_cases)."""

import pytest

from harness.paths import REPO_ROOT
from harness.probing.insn import compat_cases, load_cases
from harness.scenarios import check_case

pytestmark = [pytest.mark.riprel, pytest.mark.vm(smp=1)]
CASES = [c.name for c in load_cases(REPO_ROOT / "testcases" / "cases" / "riprel.toml")]
COMPAT_CASES = [
    c.name for c in compat_cases(load_cases(REPO_ROOT / "testcases" / "cases" / "riprel.toml"))
]


@pytest.mark.parametrize("case", CASES)
def test_riprel_instruction_transparent(request, insn_family, case):
    check_case(request, insn_family("riprel"), case)


@pytest.mark.parametrize("case", COMPAT_CASES)
def test_riprel_instruction_transparent_compat(request, insn_family, case):
    check_case(request, insn_family("riprel", bits=32), case)
