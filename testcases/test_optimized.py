"""Family 5 - optimized uprobes: the nop10 -> trampoline -> syscall 336 path of 7.x x86-64.

A uprobe on the 10-byte nop `66 2e 0f 1f 84 00 00 00 00 00` is hit through int3 once; the
kernel then rewrites the site into `lea -0x80(%rsp),%rsp; call <[uprobes-trampoline]>`; the
trampoline saves rcx/r11/rax, makes syscall 336 (the consumers run there), restores them and
returns with `ret $0x80`. Unregistering restores the nop's first five bytes and keeps the
call's displacement in the last five; the trampoline mapping stays.

Whether a kernel optimizes is found out by behaviour (the site's bytes after it was hit), not
by version: the exactness and transparency checks run on every kernel (elsewhere the nop10
is an ordinary probe) and record the path they took; the byte-level checks skip where the
site is never rewritten, saying so.

Oracles: the program's own atomic call count against the trace buffer (overruns checked);
every general-purpose register (rax, rcx and r11 included), the flags, xmm0-15 and the 128-
byte red zone compared before/after each call by the program itself (opt_sites.S); the
site's bytes read by the program in each state; /proc/self/maps for the trampoline;
syscall 336 from ordinary code. The threads family also runs its hits and toggle scenarios
on a nop10 site (test_threads.py, site `nop10`)."""

import errno
import shlex

import pytest

from harness import probes

pytestmark = pytest.mark.optimized

NOP10 = "662e0f1f840000000000"
INT3_STAGED = "cc2e0f1f840000000000"      # the first hit goes through this int3
OPTIMIZED = "488d642480e8"                # lea -0x80(%rsp),%rsp; call rel32
UNOPTIMIZED = "662e0f1f84e8"              # nop10 again, the call's rel32 kept as its disp32
ITERATIONS = 300


def _fields(text: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def _path(site: str) -> str:
    return ("optimized" if site.startswith(OPTIMIZED) else
            "int3" if site == INT3_STAGED else f"unexpected bytes {site}")


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("threads", [1, 8])
def test_nop10_probe_is_exact_and_transparent(request, guest, target, uprobe, threads, smp):
    """Every hit counted across the int3 -> optimized transition, and every register, the
    flags, xmm0-15 and the red zone unchanged by each call of the probed nop10."""
    path, binary = target("opt")
    uprobe.add("opt", path, binary, "site_opt")
    result = guest.run([path, "state", str(threads), str(ITERATIONS)], timeout=600)
    assert result.status == 0, f"probed program failed ({result.status}): {result.stdout}" \
                               f"{result.stderr}"
    f = _fields(result.stdout)
    calls = int(f["calls"])
    mode = _path(f["site"])
    request.node.user_properties.append(("probe_path", mode))
    request.node.user_properties.append(("below_red_zone_written", f["below_bad"]))
    assert calls == threads * ITERATIONS
    hits = uprobe.hits()["opt"]
    assert hits.overruns == 0, "trace ring buffer overran"
    assert hits.trace == calls, f"trace saw {hits.trace} hits for {calls} calls ({mode})"
    assert mode in ("optimized", "int3"), mode
    for what in ("gpr", "flags", "xmm", "redzone"):
        assert int(f[f"{what}_bad"]) == 0, \
            f"{f[f'{what}_bad']} of {calls} calls changed the {what} state ({mode} path)"
    below = int(f["below_bad"])
    if mode == "int3":
        assert below == 0, "the int3 path wrote below the stack pointer"
    else:
        assert f["site_call_target"] == "in", "the rewritten call does not reach the trampoline"
        # By design the optimized path stores the trampoline's return address and the saved
        # rcx/r11/rax in the 32 bytes under the red zone (the ABI does not protect them): on
        # every optimized hit, and never on the first hit, which goes through int3.
        assert 0 < below <= calls - 1
        if threads == 1:
            assert below == calls - 1


@pytest.mark.vm(tcg="exact")
def test_nop10_site_bytes_in_every_state(guest, target, uprobe):
    """Registered but never hit: int3 staged; removed: the original nop10. Hit: rewritten
    into lea + call to a [uprobes-trampoline] mapping; removed: the nop10 with the call's
    displacement, and the trampoline still mapped (a thread may sit between lea and call)."""
    path, binary = target("opt")
    probe = uprobe.add("opt", path, binary, "site_opt")
    exe = shlex.quote(path)
    script = (
        f"{exe} pause 0 > /tmp/uph-opt0 & p0=$!\n"
        f"{exe} pause 3 > /tmp/uph-opt3 & p3=$!\n"
        "i=0; while [ $i -lt 200 ] && ! { [ -s /tmp/uph-opt0 ] && [ -s /tmp/uph-opt3 ]; }; do\n"
        "  sleep 0.05; i=$((i+1)); done\n"
        f"{probes.enable_command(probe, on=False)} || exit 91\n"
        "kill -USR1 $p0 $p3; wait $p0; s0=$?; wait $p3; s3=$?\n"
        "echo \"status0=$s0 status3=$s3\"\n"
        "sed 's/^/never_hit_/; s/ \\([a-z]\\)/ never_hit_\\1/g' /tmp/uph-opt0\n"
        "sed 's/^/hit_/; s/ \\([a-z]\\)/ hit_\\1/g' /tmp/uph-opt3\n")
    result = guest.run(["sh", "-c", script], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert f["status0"] == "0" and f["status3"] == "0", result.stdout
    assert f["never_hit_site"] == INT3_STAGED, result.stdout
    assert f["never_hit_detached"] == NOP10, result.stdout
    if not f["hit_site"].startswith(OPTIMIZED):
        assert f["hit_site"] == INT3_STAGED and f["hit_detached"] == NOP10, result.stdout
        pytest.skip(f"this kernel does not optimize uprobes: the nop10 probed and hit 3 times "
                    f"still reads {f['hit_site']} (int3 staged)")
    assert f["hit_site_tramp"] == "[uprobes-trampoline]", result.stdout
    assert f["hit_site_call_target"] == "in", result.stdout
    assert f["hit_detached"].startswith(UNOPTIMIZED), result.stdout
    assert f["hit_detached"][12:] == f["hit_site"][12:], "the call's rel32 was not kept"
    assert f["hit_detached_call_target"] == "in", \
        "the trampoline mapping went away with the probe: " + result.stdout


@pytest.mark.vm(tcg="exact")
def test_nop10_across_a_page_boundary_is_hit(guest, target, uprobe):
    """The same nop10 at the last five bytes of a page: it cannot be rewritten atomically,
    so it stays an int3 probe, and must still count every call (opt time runs 1,000 warm-up
    calls, then N)."""
    path, binary = target("opt")
    uprobe.add("split", path, binary, "site_opt_split")
    result = guest.run([path, "time", "nop10_split", "100"], check=True)
    calls = int(_fields(result.stdout)["calls"]) + 1000
    hits = uprobe.hits()["split"]
    assert hits.overruns == 0
    assert hits.trace == calls, f"{hits.trace} hits for {calls} calls of a page-straddling nop10"


def test_uprobe_syscall_from_ordinary_code_is_refused(guest, target):
    """syscall 336 made outside a uprobe trampoline must fail with EPROTO (and change
    nothing); on a kernel without the syscall it is ENOSYS."""
    path, _ = target("opt")
    symbols = guest.run("grep -c ' __x64_sys_uprobe$' /proc/kallsyms || true", check=True)
    has_syscall = symbols.stdout.strip() not in ("", "0")
    result = guest.run([path, "sys"], check=True)
    f = _fields(result.stdout)
    assert f["sys336"] == "-1", result.stdout
    wanted = errno.EPROTO if has_syscall else errno.ENOSYS
    assert int(f["errno"]) == wanted, \
        f"syscall 336 from ordinary code: errno {f['errno']}, expected {wanted}"


@pytest.mark.vm(tcg="exact")
def test_entry_and_return_probes_on_a_nop10_function(guest, target, uprobe, smp):
    """A uprobe and a uretprobe on a function whose entry is the nop10, 8 threads: both count
    every call, every result and register right (the hits program checks them)."""
    path, binary = target("hits")
    uprobe.add("entry", path, binary, "site_nop10")
    uprobe.add("exit", path, binary, "site_nop10", kind="r")
    result = guest.run([path, "nop10", "8", str(ITERATIONS)], timeout=600)
    assert result.status == 0, f"probed program failed ({result.status}): {result.stdout}"
    f = _fields(result.stdout)
    calls = int(f["calls"])
    assert calls == 8 * ITERATIONS and int(f["bad"]) == 0, result.stdout
    hits = uprobe.hits()
    for name in ("entry", "exit"):
        assert hits[name].overruns == 0
        assert hits[name].trace == calls, f"{name}: {hits[name].trace} hits for {calls} calls"
