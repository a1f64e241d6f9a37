"""Family 3 - FP and SIMD instructions executed out of line (x87, SSE, AVX).

Oracle: the full FP/SIMD state (x87 stack, FCW/FSW/FTW, MXCSR, xmm, ymm upper halves),
the GPRs, RFLAGS and memory after the probed instruction equal the unprobed run; each probe
is hit exactly once. Cases are data: testcases/cases/fp.toml.

The same cases also run in a 32-bit (compat) task, which uprobes decodes and fixes up with
tables of its own: a RIP-relative operand becomes an absolute one there (the same ModRM
encoding, no RIP-relative fixup allowed), and cases that are not 32-bit code are left out
(harness.probing.insn.compat_cases)."""

import pytest

from harness.paths import REPO_ROOT
from harness.probing.insn import compat_cases, load_cases
from harness.scenarios import check_case

pytestmark = [pytest.mark.fp, pytest.mark.vm(smp=1)]
CASES = [c.name for c in load_cases(REPO_ROOT / "testcases" / "cases" / "fp.toml")]
COMPAT_CASES = [
    c.name for c in compat_cases(load_cases(REPO_ROOT / "testcases" / "cases" / "fp.toml"))
]


@pytest.mark.parametrize("case", CASES)
def test_fp_instruction_transparent(request, insn_family, case):
    check_case(request, insn_family("fp"), case)


@pytest.mark.parametrize("case", COMPAT_CASES)
def test_fp_instruction_transparent_compat(request, insn_family, case):
    check_case(request, insn_family("fp", bits=32), case)
