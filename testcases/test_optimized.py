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
import weakref

import pytest

from harness.probing import probes

pytestmark = pytest.mark.optimized

NOP10 = "662e0f1f840000000000"
INT3_STAGED = "cc2e0f1f840000000000"  # the first hit goes through this int3
OPTIMIZED = "488d642480e8"  # lea -0x80(%rsp),%rsp; call rel32
UNOPTIMIZED = "662e0f1f84e8"  # nop10 again, the call's rel32 kept as its disp32
INT3_UNOPTIMIZED = "cc2e0f1f84e8"  # re-registered after that: int3, the rel32 still kept
ITERATIONS = 300


def _fields(text: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


_OPTIMIZER: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def _has_optimizer(guest) -> bool:
    """Whether the kernel has the optimized-uprobe mechanism: its uprobe syscall (the
    trampoline's) is in kallsyms. Where it is, a nop10 that stays int3 is a failure. Asked
    once per booted machine (the pool reuses machines across tests)."""
    if guest.vm not in _OPTIMIZER:
        symbols = guest.run(
            "grep -c -E ' (__x64_sys_uprobe|__do_sys_uprobe)$' /proc/kallsyms || true", check=True
        )
        _OPTIMIZER[guest.vm] = symbols.stdout.strip() not in ("", "0")
    return _OPTIMIZER[guest.vm]


def _assert_optimized_where_possible(guest, site: str) -> None:
    """On a kernel with the optimizer the probed nop10 must have taken the optimized path
    (else a scenario about that path would pass without exercising it)."""
    if _has_optimizer(guest):
        assert site.startswith(OPTIMIZED), f"the probe was not optimized: {site}"


def _path(site: str) -> str:
    return (
        "optimized"
        if site.startswith(OPTIMIZED)
        else "int3"
        if site == INT3_STAGED
        else f"unexpected bytes {site}"
    )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("threads", [1, 8])
def test_nop10_probe_is_exact_and_transparent(request, guest, target, uprobe, threads, smp):
    """Every hit counted across the int3 -> optimized transition, and every register, the
    flags, xmm0-15 and the red zone unchanged by each call of the probed nop10."""
    path, binary = target("opt")
    uprobe.add("opt", path, binary, "site_opt")
    result = guest.run([path, "state", str(threads), str(ITERATIONS)], timeout=600)
    assert result.status == 0, (
        f"probed program failed ({result.status}): {result.stdout}{result.stderr}"
    )
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
        assert int(f[f"{what}_bad"]) == 0, (
            f"{f[f'{what}_bad']} of {calls} calls changed the {what} state ({mode} path)"
        )
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
        'echo "status0=$s0 status3=$s3"\n'
        "sed 's/^/never_hit_/; s/ \\([a-z]\\)/ never_hit_\\1/g' /tmp/uph-opt0\n"
        "sed 's/^/hit_/; s/ \\([a-z]\\)/ hit_\\1/g' /tmp/uph-opt3\n"
    )
    result = guest.run(["sh", "-c", script], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert f["status0"] == "0" and f["status3"] == "0", result.stdout
    assert f["never_hit_site"] == INT3_STAGED, result.stdout
    assert f["never_hit_detached"] == NOP10, result.stdout
    if not f["hit_site"].startswith(OPTIMIZED):
        assert f["hit_site"] == INT3_STAGED and f["hit_detached"] == NOP10, result.stdout
        assert not _has_optimizer(guest), (
            f"the nop10 hit 3 times reads {f['hit_site']} on a kernel with the uprobe syscall"
        )
        pytest.skip(
            f"this kernel does not optimize uprobes: the nop10 probed and hit 3 times "
            f"still reads {f['hit_site']} (int3 staged)"
        )
    assert f["hit_site_tramp"] == "[uprobes-trampoline]", result.stdout
    assert f["hit_site_call_target"] == "in", result.stdout
    assert f["hit_detached"].startswith(UNOPTIMIZED), result.stdout
    assert f["hit_detached"][12:] == f["hit_site"][12:], "the call's rel32 was not kept"
    assert f["hit_detached_call_target"] == "in", (
        "the trampoline mapping went away with the probe: " + result.stdout
    )


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


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("k", range(10), ids=[f"{0xFF6 + k:#x}" for k in range(10)])
def test_nop10_at_the_end_of_a_page(guest, target, uprobe, k):
    """The nop10 at each of the last ten bytes of a page (opt tail: site_tailK at page offset
    0xff6 + K): at 0xff6 it ends on the page boundary and may be optimized; from 0xff7 on it
    straddles the page, cannot be rewritten atomically and must stay an int3 probe. Every
    call counted and right wherever the linker put it."""
    path, binary = target("opt")
    uprobe.add("tail", path, binary, f"site_tail{k}")
    result = guest.run([path, "tail", "20"], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert int(f[f"tail{k}_offset"], 16) == 0xFF6 + k, result.stdout
    assert f[f"tail{k}_bad"] == "0", result.stdout
    site = f[f"tail{k}_site"]
    if k:
        assert not site.startswith(OPTIMIZED), (
            f"a nop10 straddling the page by {k} bytes was rewritten: {site}"
        )
    elif _has_optimizer(guest):
        assert site.startswith(OPTIMIZED), (
            f"the nop10 ending on the page boundary (0xff6) was not optimized: {site}"
        )
    hits = uprobe.hits()["tail"]
    assert hits.trace == 20, f"{hits.trace} hits for 20 calls of the nop10 at {0xFF6 + k:#x}"


def test_uprobe_syscall_from_ordinary_code_is_refused(guest, target):
    """syscall 336 made outside a uprobe trampoline must fail with EPROTO (and change
    nothing); on a kernel without the syscall it is ENOSYS."""
    path, _ = target("opt")
    has_syscall = _has_optimizer(guest)
    result = guest.run([path, "sys"], check=True)
    f = _fields(result.stdout)
    assert f["sys336"] == "-1", result.stdout
    wanted = errno.EPROTO if has_syscall else errno.ENOSYS
    assert int(f["errno"]) == wanted, (
        f"syscall 336 from ordinary code: errno {f['errno']}, expected {wanted}"
    )


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


# -- the optimized path in unusual surroundings (opt_env.c) --------------------------------


def _optimizes_or_skip(guest, f: dict[str, str], key: str, what: str) -> None:
    """Skip where the kernel has no optimizer (the site hit stays int3-staged). A site that
    still reads the original nop10 after being hit was never probed at all, and one that
    stays int3 on a kernel with the optimizer was not optimized: both are failures."""
    site = f.get(key, "")
    if site == NOP10:
        pytest.fail(
            f"the probe was never installed: {what} still reads the original nop10 "
            f"{site} after being hit"
        )
    if not site.startswith(OPTIMIZED):
        if _has_optimizer(guest):
            pytest.fail(
                f"{what} reads {site or 'nothing'} after being hit, on a kernel that "
                f"has the uprobe syscall: it was not optimized"
            )
        pytest.skip(
            f"this kernel does not optimize uprobes: {what} still reads {site} after being hit"
        )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("case", ["plus_in", "plus_edge", "minus_edge", "minus_out"])
def test_trampoline_reach_at_the_rel32_boundary(request, guest, target, uprobe, case):
    """A second mapping of the probed page placed so that the first trampoline lies exactly
    at, or one page inside/outside, the +-2 GiB reach of the rewritten call: the call must
    land on a trampoline's first byte, the first trampoline be reused exactly when a rel32
    reaches it, and every call count (a nop10 at page offset 0xff6, mapped at
    0x600000000000 and then at A)."""
    path, binary = target("opt")
    uprobe.add("edge", path, binary, "site_tail0")
    result = guest.run([path, "reach", case], timeout=120)
    f = _fields(result.stdout)
    assert "setup" not in f, f"the scenario could not map its pages: {result.stdout}"
    if "distance" not in f:  # it did not get past the first mapping
        assert "crashed" not in f and "wrong_result" not in f, (
            f"the first mapping's probed nop10 misbehaved: {result.stdout}"
        )
        assert f.get("home_call_target") in ("none", "in"), (
            f"the first mapping's site {f.get('home_site')} calls "
            f"{f.get('home_call_target')} a trampoline's start: {result.stdout}"
        )
        _optimizes_or_skip(guest, f, "home_site", "the nop10 at 0x600000000ff6")
    request.node.user_properties.append(("distance", f.get("distance", "")))
    request.node.user_properties.append(("trampoline_reused", f.get("a_reused", "")))
    assert "crashed" not in f, (
        f"the call from the second mapping, which ends at T{-int(f['distance']):+#x} (T: "
        f"the first trampoline), did not reach a trampoline: the process took signal "
        f"{f['crashed']} at T{int(f['fault']):+#x} ({result.stdout.strip()})"
    )
    assert result.status == 0, result.stdout + result.stderr
    assert f["a_call_target"] == "in", (
        f"the second mapping's site {f['a_site']} calls {f['a_call_target']} a trampoline"
    )
    # a trampoline within reach is reused (the kernel keeps one per 2 GiB), one out of reach
    # is not: +2^31 - 4096 and -2^31 are within a rel32, +2^31 and -2^31 - 4096 are not
    reachable = case in ("plus_in", "minus_edge")
    assert f["a_reused"] == ("yes" if reachable else "no"), (
        f"the trampoline at {int(f['distance']):+#x} from the call's end is "
        f"{'within' if reachable else 'out of'} rel32 reach, but the kernel "
        f"{'mapped another one' if reachable else 'reused it'}"
    )
    hits = uprobe.hits()["edge"]
    assert hits.overruns == 0
    assert hits.trace == int(f["calls"]) == 6, f"{hits.trace} hits for {f['calls']} calls"


@pytest.mark.vm(tcg="exact")
def test_no_room_for_a_trampoline(guest, target, uprobe):
    """The probed page in the middle of a 6 GiB PROT_NONE reservation: no trampoline can
    be placed within reach, so the probe must stay an int3 probe and count every call."""
    path, binary = target("opt")
    uprobe.add("edge", path, binary, "site_tail0")
    result = guest.run([path, "reach", "noroom"], timeout=120)
    f = _fields(result.stdout)
    assert "setup" not in f, f"the scenario could not reserve its range: {result.stdout}"
    assert result.status == 0 and "crashed" not in f, result.stdout + result.stderr
    assert f["a_call_target"] == "none" and f["a_site"] == INT3_STAGED, (
        f"with no room for a trampoline the site must stay int3-staged: {f['a_site']} "
        f"(its call goes {f['a_call_target']} a trampoline)"
    )
    hits = uprobe.hits()["edge"]
    assert hits.trace == int(f["calls"]) == 3, f"{hits.trace} hits for {f['calls']} calls"


def _serve_script(exe: str, steps: list[tuple[str, str]]) -> str:
    """A shell script that runs `opt serve` (commands on a fifo, one reply line each) and
    goes through `steps`: ("ask", COMMAND) sends a command and prints its reply with every
    key prefixed by the step's number (s1_site=...), sN_no_reply=1 if the program died on
    it, sN_serve_gone=1 after that; ("sh", LINE) runs a shell line. Ends with
    serve_status (128 + signal if it was killed)."""
    lines = [
        "trap '' PIPE",
        "d=$(mktemp -d) && mkfifo $d/in || exit 90",
        f"{exe} serve < $d/in > $d/out 2>&1 & b=$!",
        "exec 3> $d/in",
        'ask() { kill -0 $b 2>/dev/null || { echo "$1_serve_gone=1"; return; };',
        '  n=$(wc -l < $d/out); echo "$2" >&3; i=0;',
        "  while [ $(wc -l < $d/out) -le $n ] && [ $i -lt 400 ]; do",
        "    kill -0 $b 2>/dev/null || break; sleep 0.05; i=$((i+1)); done;",
        "  if [ $(wc -l < $d/out) -gt $n ]; then",
        '    tail -n 1 $d/out | sed "s/^/$1_/; s/ \\([a-z]\\)/ $1_\\1/g";',
        '  else echo "$1_no_reply=1"; fi; }',
        "i=0; until grep -q ready $d/out || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done",
    ]
    for number, (kind, text) in enumerate(steps, 1):
        lines.append(f"ask s{number} {shlex.quote(text)}" if kind == "ask" else text)
    lines += ['echo quit >&3 2>/dev/null; exec 3>&-; wait $b; echo "serve_status=$?"']
    return "\n".join(lines) + "\n"


def _served(result) -> dict[str, str]:
    """The fields of a _serve_script run, which must have kept the served program alive."""
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    died = [key for key in f if key.endswith(("_no_reply", "_serve_gone"))]
    assert not died and f.get("serve_status") == "0", (
        f"the probed program died (status {f.get('serve_status')}, no reply from "
        f"{died[0].split('_')[0] if died else '-'}): {result.stdout}"
    )
    return f


@pytest.mark.vm(tcg="exact")
def test_optimization_failing_in_another_process(request, guest, target, uprobe):
    """Process B's site is optimized; then process A hits the same probe where no
    trampoline fits, so optimizing fails (the kernel then stops optimizing this probe); a
    second event is enabled on the same site and both are disabled. B's text must stay
    `lea; call` while probed (never int3 over the lea: that leaves `cc 8d 64 24 80`, and
    removing the probe then leaves `66 8d 64 24 80` = `lea -0x80(%rsp),%sp`, a 16-bit write
    of the stack pointer), then become the nop10 again; B's calls after that, one on a stack
    whose low 16 bits are 0x40, must return on a balanced stack. A third process started
    after the failure records whether it was optimized."""
    path, binary = target("opt")
    first = uprobe.add("first", path, binary, "site_tail0")
    second = uprobe.add("second", path, binary, "site_tail0")
    exe = shlex.quote(path)
    steps = [
        ("sh", f"{probes.enable_command(second, on=False)} || exit 91"),
        ("ask", "call 3"),
        ("ask", "show"),  # s2, s3: B optimized
        ("sh", f"{exe} reach noroom"),  # A: a_site=...
        ("ask", "show"),  # s5: after A failed
        (
            "sh",
            f"printf 'call 3\\nshow\\nquit\\n' | {exe} serve | tail -n 1 "
            "| sed 's/^/c_/; s/ \\([a-z]\\)/ c_\\1/g'",
        ),
        ("sh", f"{probes.enable_command(second)} || exit 92"),
        ("ask", "show"),  # s8: a second event
        ("ask", "call 5"),  # s9
        (
            "sh",
            f"{probes.enable_command(second, on=False)} && "
            f"{probes.enable_command(first, on=False)} || exit 93",
        ),
        ("ask", "show"),  # s11: no probe left
        ("ask", "call 5"),  # s12
        ("ask", "lowsp"),  # s13
    ]
    result = guest.run(["sh", "-c", _serve_script(exe, steps)], timeout=180)
    f = _served(result)
    assert "setup" not in f, f"A could not reserve its range: {result.stdout}"
    for step in ("s2", "s9", "s12"):
        assert f[f"{step}_bad"] == "0", f"B's calls returned wrong values: {result.stdout}"
    hits = uprobe.hits()
    assert hits["first"].trace == 3 + 3 + 3 + 5, f"first event: {hits['first'].trace} hits"
    assert hits["second"].trace == 5, f"second event: {hits['second'].trace} hits"
    if not f["s3_site"].startswith(OPTIMIZED):
        assert not _has_optimizer(guest), f"B's site was not optimized: {f['s3_site']}"
        pytest.skip(f"this kernel does not optimize uprobes: B's site reads {f['s3_site']}")
    assert f["a_site"] == INT3_STAGED and f["calls"] == "3", f"A, with no room: {result.stdout}"
    request.node.user_properties.append(("third_process_after_failure", f["c_site"]))
    assert f["s5_site"].startswith(OPTIMIZED), f"A's failure changed B's site into {f['s5_site']}"
    assert f["s8_site"].startswith(OPTIMIZED), (
        f"enabling a second event wrote {f['s8_site']} over B's optimized site (expected "
        f"{OPTIMIZED}...)"
    )
    assert f["s11_site"].startswith(UNOPTIMIZED), (
        f"with no probe left B's site reads {f['s11_site']}, not the nop10 ({UNOPTIMIZED}...)"
    )
    assert f["s13_lowsp_status"] == "0", (
        f"a call of B's unprobed site on a stack at 0x...0040 ended with status "
        f"{f['s13_lowsp_status']} (signal {f['s13_lowsp_signal']}): the stack pointer moved"
    )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("how", ["munmap", "fixed", "protnone"])
def test_trampoline_changed_by_the_program(request, guest, target, uprobe, how):
    """After the site was optimized the program unmaps the trampoline, maps anonymous memory
    over it (MAP_FIXED), or makes it PROT_NONE (the kernel lets it: the mapping is not
    sealed). A call while probed then faults: the program did it (recorded, not judged).
    But once the probe is removed the site must be the nop10 again and calls must work;
    re-enabling and removing the probe again must leave it so (a call on a stack whose low
    16 bits are 0x40 included), and every call that reached the probe is counted."""
    path, binary = target("opt")
    probe = uprobe.add("site", path, binary, "site_tail0")
    exe = shlex.quote(path)
    steps = [
        ("ask", "call 3"),
        ("ask", "show"),  # s1, s2
        ("ask", f"tramp {how}"),  # s3
        ("ask", "child"),  # s4: probed, changed
        ("sh", f"{probes.enable_command(probe, on=False)} || exit 91"),
        ("ask", "show"),
        ("ask", "child"),  # s6, s7: no probe
        ("sh", f"{probes.enable_command(probe)} || exit 92"),
        ("ask", "call 2"),
        ("ask", "show"),  # s9, s10: probed again
        ("sh", f"{probes.enable_command(probe, on=False)} || exit 93"),
        ("ask", "show"),
        ("ask", "child"),
        ("ask", "lowsp"),  # s12-s14: no probe
    ]
    result = guest.run(["sh", "-c", _serve_script(exe, steps)], timeout=180)
    f = _served(result)
    assert f["s1_bad"] == "0" and f["s9_bad"] == "0", result.stdout
    hits = uprobe.hits()["site"]
    assert hits.trace >= 3, f"{hits.trace} hits for the first 3 calls: {result.stdout}"
    if not f["s2_site"].startswith(OPTIMIZED):
        assert not _has_optimizer(guest), f"the site was not optimized: {f['s2_site']}"
        pytest.skip(f"this kernel does not optimize uprobes: the site reads {f['s2_site']}")
    assert f[f"s3_tramp_{how}"] == "0", (
        f"the program could not {how} the trampoline: errno {f[f's3_tramp_{how}']}"
    )
    request.node.user_properties.append(("probed_call_after_change", f["s4_child_status"]))
    assert f["s6_site"].startswith(UNOPTIMIZED) and f["s7_child_status"] == "0", (
        f"with the probe removed the site reads {f['s6_site']} and a call ended with "
        f"status {f['s7_child_status']}: {result.stdout}"
    )
    assert f["s12_site"].startswith(UNOPTIMIZED), (
        f"probed again and removed, the site reads {f['s12_site']}: {result.stdout}"
    )
    assert f["s13_child_status"] == "0" and f["s14_lowsp_status"] == "0", result.stdout
    assert hits.trace == 3 + 2, f"{hits.trace} hits for 3 + 2 probed calls: {result.stdout}"


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("order", ["inner_first", "inner_after"])
def test_probe_inside_an_optimized_nop10(guest, target, uprobe, order):
    """A second probe at byte 5 of the nop10 (inside it: never executed as an instruction
    boundary of the nop10, which older kernels leave harmless). Registered before the
    outer probe is optimized, the rewrite replaces it (it never hits); registered after,
    its int3 would land on the call's opcode and run the file's bytes there (00 00: `add
    %al,(%rax)`) out of line: the kernel must refuse it or keep the program intact. The
    outer probe counts every call; the program's calls return right throughout."""
    path, binary = target("opt")
    outer = uprobe.add("outer", path, binary, "site_tail0")
    inner = uprobe.add("inner", path, binary, "site_tail0+5")
    exe = shlex.quote(path)
    late = inner if order == "inner_after" else outer
    steps = [
        ("sh", f"{probes.enable_command(late, on=False)} || exit 91"),
        ("ask", "call 3"),
        ("ask", "show"),  # s2, s3
        ("sh", f"{probes.enable_command(late)} 2>/dev/null; echo late_enable=$?"),
        ("ask", "child"),
        ("ask", "call 3"),
        ("ask", "show"),  # s5-s7
        (
            "sh",
            f"{probes.enable_command(inner, on=False)} 2>/dev/null; "
            f"{probes.enable_command(outer, on=False)} || exit 92",
        ),
        ("ask", "show"),
        ("ask", "child"),  # s9, s10: no probe
    ]
    result = guest.run(["sh", "-c", _serve_script(exe, steps)], timeout=180)
    f = _served(result)
    assert f["s5_child_status"] == "0", (
        f"a call after the inner probe was enabled died: {result.stdout}"
    )
    assert f["s2_bad"] == f["s6_bad"] == "0", result.stdout
    hits = uprobe.hits()
    outer_calls = 3 + 1 + 3 if order == "inner_after" else 1 + 3
    assert hits["outer"].trace == outer_calls, (
        f"outer probe: {hits['outer'].trace} hits for {outer_calls} calls: {result.stdout}"
    )
    assert hits["inner"].trace == 0, f"the probe inside the nop10 hit: {result.stdout}"
    assert f["s9_site"] in (NOP10,) or f["s9_site"].startswith(UNOPTIMIZED), result.stdout
    assert f["s10_child_status"] == "0", result.stdout


@pytest.mark.vm(tcg="exact")
def test_stack_near_its_guard_page(guest, target, uprobe):
    """A call of the probed nop10 on a stack with 0x40 bytes mapped below %rsp and a
    PROT_NONE page under them (a thread stack near its end; the unprobed function uses no
    stack at all). The int3 path uses none either; the optimized path stores 0xa0 bytes
    below %rsp (red zone skipped, return address, rcx/r11/rax)."""
    path, binary = target("opt")
    uprobe.add("site", path, binary, "site_tail0")
    script = f"printf 'call 3\\nguard\\nquit\\n' | {shlex.quote(path)} serve"
    result = guest.run(["sh", "-c", script], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    hits = uprobe.hits()["site"]
    assert f["bad"] == "0" and hits.trace >= 3, f"{hits.trace} hits for 3 calls"
    assert f["guard_status"] == "0", (
        f"the probed call near the guard page ended with status {f['guard_status']} "
        f"(signal {f['guard_signal']}); unprobed it returns"
    )
    assert hits.trace == 4, f"{hits.trace} hits for 4 calls"


@pytest.mark.vm(smp=2, tcg="parallel")
def test_probed_mapping_replaced_before_the_rewrite(request, guest, target, uprobe):
    """The first hit of a probed nop10 goes through int3; the kernel rewrites the site after
    the handlers, taking mmap_lock anew. A thread calls the nop10 of a freshly mapped copy of
    the probed page pair while another maps a file of int3 bytes (lld's padding) over it at
    once, 2,000 times: the kernel must never write into that file's pages. Needs true
    parallelism (multi-threaded TCG; the oracle reads data, which TCG keeps coherent)."""
    path, binary = target("opt")
    uprobe.add("edge", path, binary, "site_tail0")
    result = guest.run([path, "swap", "2000"], timeout=600)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert "setup" not in f and "swap_wrong_result" not in f, result.stdout
    hits = uprobe.hits()["edge"]
    assert hits.trace > 0, "the probed nop10 was never hit"
    request.node.user_properties.append(("swaps_during_a_call", f["swap_raced"]))
    assert int(f["swap_raced"]) > 0, f"no swap happened during a call: {result.stdout}"
    assert f["swap_foreign_written"] == "0", (
        f"the kernel rewrote a mapping of another file at the probe's address in "
        f"{f['swap_foreign_written']} of 2,000 rounds ({f.get('swap_foreign_bytes')})"
    )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("kind", ["p", "r"], ids=["entry", "return"])
def test_probe_under_syscall_user_dispatch(guest, target, uprobe, kind):
    """Syscall user dispatch on (PR_SET_SYSCALL_USER_DISPATCH, only the program's own text
    allowed, the selector at BLOCK around each call, as Wine does around foreign code): a
    probe must not add a SIGSYS or change a result; the trampolines' syscalls (uprobe 336,
    uretprobe 335) are the kernel's, not the program's. A syscall 336 the program itself
    makes from outside the allowed range must still be dispatched to it."""
    path, binary = target("opt")
    # the return probe sits on an ordinary function: its trampoline (6.11 on) is the same
    # whether or not the kernel optimizes nop10s
    uprobe.add("sud", path, binary, "site_nop10" if kind == "p" else "site_ret", kind=kind)
    result = guest.run([path, "sud", "50"], timeout=120)
    f = _fields(result.stdout)
    if f.get("sud") == "unsupported":
        pytest.skip(f"this kernel has no syscall user dispatch (prctl errno {f['errno']})")
    assert result.status == 0, (
        f"the probed program died under syscall user dispatch (status {result.status}): "
        f"{result.stdout}{result.stderr}"
    )
    assert f["sigsys"] == "0", (
        f"{f['sigsys']} SIGSYS for 50 probed calls (syscall {f['sigsys_nr']} from "
        f"{f['sigsys_in']}): the probe's own syscall was dispatched to the program"
    )
    assert f["calls"] == "50" and f["bad"] == "0", result.stdout
    assert f["foreign_sigsys"] == "1" and f["foreign_nr"] == "336", (
        f"a syscall 336 of the program's own, outside the allowed range, was not "
        f"dispatched to it: {result.stdout}"
    )
    if kind == "p":
        _assert_optimized_where_possible(guest, f["site"])
    hits = uprobe.hits()["sud"]
    assert hits.trace == 50, f"{hits.trace} hits for 50 calls"


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("mode", ["filter", "strict"])
def test_probe_under_seccomp(guest, target, uprobe, mode):
    """A seccomp filter that kills on anything but write/exit/exit_group/rt_sigreturn, or
    strict mode: entry and return probes must count every call without killing it."""
    path, binary = target("opt")
    uprobe.add("entry", path, binary, "site_nop10")
    uprobe.add("exit", path, binary, "site_nop10", kind="r")
    result = guest.run([path, "seccomp", mode, "50"], timeout=120)
    f = _fields(result.stdout)
    if f.get("seccomp") == "unsupported":
        pytest.skip(f"this kernel has no seccomp {mode} mode (errno {f['errno']})")
    assert result.status == 0, (
        f"the probed program died under seccomp {mode} (status {result.status}): "
        f"{result.stdout}{result.stderr}"
    )
    assert f["calls"] == "50" and f["bad"] == "0", result.stdout
    _assert_optimized_where_possible(guest, f["site"])
    hits = uprobe.hits()
    for name in ("entry", "exit"):
        assert hits[name].trace == 50, f"{name}: {hits[name].trace} hits for 50 calls"


@pytest.mark.vm(tcg="exact")
def test_fork_vfork_exec_after_optimization(guest, target, uprobe):
    """After the site was optimized: a fork()ed child (copied text and trampoline), a
    CLONE_VM|CLONE_VFORK child (shared address space) and an exec()ed image (a fresh one)
    each make 20 calls: every call counted and right, the call still reaching a trampoline."""
    path, binary = target("opt")
    uprobe.add("fork", path, binary, "site_nop10")
    result = guest.run([path, "fork", "20"], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    for who in ("parent", "fork", "vfork", "exec"):
        assert f[f"{who}_bad"] == "0", f"{who}: wrong results: {result.stdout}"
    assert f["fork_status"] == "0" and f["vfork_status"] == "0", result.stdout
    hits = uprobe.hits()["fork"]
    assert hits.trace == 80, f"{hits.trace} hits for 4 x 20 calls"
    if f["parent_site"].startswith(OPTIMIZED) or _has_optimizer(guest):
        for who in ("parent", "fork", "exec"):
            assert f[f"{who}_call_target"] == "in", (
                f"{who}: the site {f[f'{who}_site']} calls outside every trampoline"
            )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("action", ["off", "offon"])
def test_thread_stopped_between_lea_and_call(guest, target, uprobe, action):
    """A child stopped (ptrace: a breakpoint on the call of the site, then two single steps)
    at the instruction after the optimized site's lea, then the probe disabled (and
    re-enabled) while it waits there: the call it is about to
    make must still reach the trampoline, which must undo the lea; the child's registers,
    flags, xmm and red zone come back intact; hits: 3 before, plus 1 if re-enabled."""
    path, binary = target("opt")
    probe = uprobe.add("stepped", path, binary, "site_opt")
    result = guest.run([path, "stepped", probes.enable_path(probe), action], timeout=300)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert "setup" not in f, result.stdout
    _optimizes_or_skip(guest, f, "stopped_site", "the child's nop10")
    assert f["reached_between"] == "yes", result.stdout
    assert f["toggle_failed"] == "0" and f["mem_unread"] == "0", result.stdout
    wanted = UNOPTIMIZED if action == "off" else INT3_UNOPTIMIZED
    assert f["paused_site"].startswith(wanted), (
        f"after '{action}' the site reads {f['paused_site']}, expected {wanted}..."
    )
    assert f["paused_site"][12:] == f["stopped_site"][12:], "the call's rel32 changed"
    assert f["child_exited"] == "1" and f["child_status"] == "0", (
        f"the stopped child did not come back intact: {result.stdout}"
    )
    assert f.get("child_traps") == "0", f"the tracer left a trap behind: {result.stdout}"
    hits = uprobe.hits()["stepped"]
    expected = 3 if action == "off" else 4
    assert hits.trace == expected, f"{hits.trace} hits, expected {expected}"


@pytest.mark.vm(tcg="exact")
def test_signals_mid_sequence(request, guest, target, uprobe):
    """A SIGPROF sampler (100 us of CPU time) whose handler scribbles over the caller-saved
    registers, xmm and flags, while 4 threads call the optimized site: the state checks and
    the hit count hold wherever the signals land (in the trampoline, between lea and call)."""
    path, binary = target("opt")
    uprobe.add("opt", path, binary, "site_opt")
    result = guest.run([path, "state", "4", "1500", "prof"], timeout=900)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    for key in ("samples", "samples_in_tramp", "samples_between", "samples_in_site"):
        request.node.user_properties.append((key, f[key]))
    assert int(f["samples"]) > 0, "the sampler never fired"
    calls = int(f["calls"])
    assert calls == 6000
    for what in ("gpr", "flags", "xmm", "redzone"):
        assert f[f"{what}_bad"] == "0", (
            f"{f[f'{what}_bad']} of {calls} calls changed the {what} state under SIGPROF"
        )
    hits = uprobe.hits()["opt"]
    assert hits.overruns == 0
    assert hits.trace == calls, f"{hits.trace} hits for {calls} calls"


@pytest.mark.vm(tcg="exact")
def test_nop10_in_a_32bit_task(guest, target, uprobe):
    """The same nop10 in a 32-bit (compat) task: the 64-bit trampoline cannot serve it, so
    it must stay an int3 probe (never `lea; call` in 32-bit code) and count every call."""
    path, binary = target("opt32")
    uprobe.add("compat", path, binary, "site32")
    result = guest.run([path, "200"], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert f["calls"] == "200" and f["bad"] == "0", result.stdout
    assert not f["site"].startswith(OPTIMIZED), (
        f"a 32-bit task's nop10 was rewritten for the 64-bit trampoline: {f['site']}"
    )
    hits = uprobe.hits()["compat"]
    assert hits.trace == 200, f"{hits.trace} hits for 200 calls in a 32-bit task"


@pytest.mark.vm(tcg="exact")
def test_nop10_in_32bit_code_of_a_64bit_process(guest, target, uprobe):
    """A nop10 in 32-bit code that a 64-bit process runs through a far call into the 32-bit
    user code segment (as WoW64-style emulators do): its hits are in 32-bit mode, so it must
    stay an int3 probe and count every call with the right result."""
    path, binary = target("opt")
    uprobe.add("seg32", path, binary, "site_opt32")
    result = guest.run([path, "seg32", "200"], timeout=120)
    assert result.status == 0, result.stdout + result.stderr
    f = _fields(result.stdout)
    assert "setup" not in f, result.stdout
    assert f["bad"] == "0", result.stdout
    assert not f["site"].startswith(OPTIMIZED), (
        f"32-bit code was rewritten for the 64-bit trampoline: {f['site']}"
    )
    hits = uprobe.hits()["seg32"]
    assert hits.trace == 200, f"{hits.trace} hits for 200 calls in 32-bit code"
