"""Family 2 - stack-VMA faults: a probed push/call whose store lands below the stack.

The kernel emulates `push %reg` (also with REX 41) and `call rel32` by writing the stack
itself; when that write lands below the lowest page of the stack VMA it must grow the stack
while handling the probe. At RLIMIT_STACK, or in a thread's guard page, the probed program
must die exactly as the unprobed one. Non-emulated pushes (rex.W, 66) run out of line.
`uffd`: the store lands on a page only a user-mode fault can populate (userfaultfd with
UFFD_USER_MODE_ONLY): the emulation's kernel-mode store fails and the instruction is
executed out of line instead, which must still resume at the next instruction.

The same sites run in a 32-bit (compat) task too (`stack32`, built with -m32): there the
kernel emulates push and call with 4-byte stores (push %ebp, push %ebx, call rel32; pushw
runs out of line), and must grow the stack, fault at the limit and in the guard page, and
fall back on a user-mode-only page exactly as for a 64-bit task.

Oracle: the unprobed run of the same program (output, fatal signal, si_code, si_addr
relative to sp, faulting ip) and one hit per run in the trace buffer."""

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.vm(smp=1)]

SITES = ["push", "push_r12", "push_rexw", "pushw", "call"]
SCENARIOS = ["grow", "rlimit", "guard", "uffd"]


SITES_COMPAT = ["push", "push_ebx", "pushw", "call"]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probed_stack_write_is_transparent(guest, target, uprobe, scenario, site):
    check_stack_site(guest, target, uprobe, "stack", scenario, site)


@pytest.mark.parametrize("site", SITES_COMPAT)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probed_stack_write_is_transparent_compat(guest, target, uprobe, scenario, site):
    check_stack_site(guest, target, uprobe, "stack32", scenario, site)


def check_stack_site(guest, target, uprobe, program: str, scenario: str, site: str) -> None:
    path, binary = target(program)
    unprobed = guest.run([path, scenario, site], timeout=60)
    if scenario == "uffd" and unprobed.status == 3:
        pytest.skip(f"the kernel lacks userfaultfd (CONFIG_USERFAULTFD): {unprobed.stdout}")
    assert unprobed.status == 0, unprobed.stdout + unprobed.stderr
    if scenario == "uffd":
        assert "stored=ok" in unprobed.stdout and "after=ok" in unprobed.stdout
    elif scenario == "grow":
        assert "stored=ok" in unprobed.stdout and "grew_pages=1" in unprobed.stdout
    else:
        assert "signal=11" in unprobed.stdout, "the unprobed run did not fault as designed"

    uprobe.add("stack_site", path, binary, f"probe_{site}")
    probed = guest.run([path, scenario, site], timeout=60)
    hits = uprobe.hits()["stack_site"]
    assert (probed.status, probed.stdout) == (unprobed.status, unprobed.stdout)
    assert hits.trace == 1, f"probe hit {hits.trace} times in one run"
