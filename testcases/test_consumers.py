"""Family: consumers - the ways a user attaches a uprobe, each a different path into
uprobe_register, the consumer filters and the handlers.

- tracefs: uprobe_events, the trace buffer and uprobe_profile (the other families' way);
- perf: perf_event_open with the "uprobe" PMU (what perf and perf-based BPF attach use),
  system-wide (one event per CPU) or bound to one process (`perf_pid`: the uprobe filter
  must keep the breakpoint out of every other process; such a process must not trap once);
- bpf: a BPF program (raw instructions, counting its runs in an array map) on a perf event
  (`bpf`), on a uprobe_multi link (`bpf_multi`, since 6.6; `bpf_multi_pid`: the link
  filtered to one process) and on a uprobe session link (`bpf_session`, since 6.13: the
  program runs at entry and at return).

Oracles: the program's own atomic call counter and result checks; a second process running
the same file that reads its own code byte at the probed site before every call (0xcc
means a breakpoint was written into it); the trace buffer with its overrun counter.
"""

import re
import shlex

import pytest

from harness.probing.probes import symbol_offset
from harness.results.known_bugs import version_tuple

pytestmark = pytest.mark.consumers

SITES = {
    "mov": ("site_mov", ""),
    "push": ("site_push", ""),
    "riprel": ("site_riprel", ""),
    "ret": ("site_ret", "-r"),
}
ITERATIONS = 300


def _fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", text))


def _consumer_fields(tool: str, result):
    """A consumer tool's result: (its CMD's fields, the consumer's fields: its last line)."""
    assert result.status == 0, f"{tool} failed ({result.status}): {result.stderr}"
    lines = result.stdout.strip().splitlines()
    consumer = _fields(lines[-1])
    assert consumer.get("status") == "0", f"the probed program failed: {result.stdout}"
    return _fields(" ".join(lines[:-1])), consumer


def _perf_run(guest, perf, mode: str, path: str, offset: int, kind: str, cmd: list[str]):
    """Run CMD under a perf uprobe consumer; (CMD's fields, the consumer's fields)."""
    flags = {"perf": [], "perf_pid": ["-p"]}[mode]
    flags += [kind] if kind else []
    result = guest.run([perf, *flags, path, hex(offset), "--", *cmd], timeout=600)
    return _consumer_fields("perf_uprobe", result)


# BPF consumer -> (bpf_uprobe's flags, the first upstream release with that attach mode)
BPF_MODES = {
    "bpf": (["-m", "perf"], (4, 17)),
    "bpf_multi": (["-m", "multi"], (6, 6)),
    "bpf_multi_pid": (["-m", "multi", "-p"], (6, 6)),
    "bpf_session": (["-m", "session"], (6, 13)),
}
BPF_UNSUPPORTED = 3  # bpf_uprobe's exit status when the kernel refuses the attach mode


def _skip_where_the_kernel_predates(guest, mode: str, refusal: str) -> None:
    """bpf_uprobe was refused MODE: skip on a kernel older than the release that added it,
    fail on any other (the refusal would hide a bug)."""
    release = guest.record.kernel_release
    since = BPF_MODES[mode][1]
    version = version_tuple(release)
    assert version is not None and version < since, (
        f"{mode}: the kernel ({release}) refused the attach mode it has had since "
        f"{since[0]}.{since[1]}: {refusal}"
    )
    pytest.skip(f"{mode}: kernel {release} predates it ({since[0]}.{since[1]})")


def _bpf_run(guest, bpf, mode: str, path: str, offset: int, kind: str, cmd: list[str]):
    """Run CMD under a BPF uprobe consumer; (CMD's fields, the consumer's fields)."""
    flags, _since = BPF_MODES[mode]
    flags = flags + ([kind] if kind and mode != "bpf_session" else [])
    result = guest.run([bpf, *flags, path, hex(offset), "--", *cmd], timeout=600)
    if result.status == BPF_UNSUPPORTED:
        _skip_where_the_kernel_predates(guest, mode, result.stderr.strip())
    return _consumer_fields("bpf_uprobe", result)


# (threads, consumer): a process-bound event counting threads that outlive a sibling loses
# hits on a kernel without the fix (test_process_bound_event_counts_threads_outliving_their_
# siblings below shows it reliably; here 8 threads lost hits in about one case of eight)
COUNTED = [
    (1, "tracefs"),
    (8, "tracefs"),
    (1, "perf"),
    (8, "perf"),
    (1, "perf_pid"),
    (8, "perf_pid"),
    (8, "bpf"),
    (8, "bpf_multi"),
    (8, "bpf_multi_pid"),
    (8, "bpf_session"),
]


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("threads, consumer", COUNTED, ids=[f"{t}-{c}" for t, c in COUNTED])
@pytest.mark.parametrize("site", sorted(SITES))
def test_every_hit_counted_by_the_consumer(guest, target, uprobe, site, threads, consumer, smp):
    """Each consumer counts every call of the probed site, and the program's results and
    registers are untouched."""
    path, binary = target("hits")
    symbol, kind = SITES[site]
    cmd = [path, site, str(threads), str(ITERATIONS)]
    if consumer == "tracefs":
        uprobe.add("hit", path, binary, symbol, kind="r" if kind else "p")
        result = guest.run(cmd, timeout=600)
        assert result.status == 0, result.stdout + result.stderr
        program = _fields(result.stdout)
        counted = uprobe.hits()["hit"].trace
    elif consumer in BPF_MODES:
        bpf, _ = target("bpf_uprobe")
        program, fields = _bpf_run(
            guest, bpf, consumer, path, symbol_offset(binary, symbol), kind, cmd
        )
        # a session's program runs at entry and again at return
        counted = int(fields["bpf_count"]) // (2 if consumer == "bpf_session" else 1)
        if consumer == "bpf_session":
            assert int(fields["bpf_count"]) % 2 == 0, f"odd session count: {fields}"
    else:
        perf, _ = target("perf_uprobe")
        program, fields = _perf_run(
            guest, perf, consumer, path, symbol_offset(binary, symbol), kind, cmd
        )
        counted = int(fields["perf_count"])
    calls = int(program["calls"])
    assert calls == threads * ITERATIONS
    assert program["bad"] == "0", "the probed instruction computed wrong results"
    assert counted == calls, f"{consumer} counted {counted} hits for {calls} calls"


def _peekers(guest, path: str, site: str, command: str) -> tuple[str, dict, dict]:
    """Two processes of the same file call SITE and read their own code byte there before
    every call (`hits peek`), while COMMAND (a shell command line, given $A: the first
    one's pid) runs; (COMMAND's output, the first's fields, the second's fields)."""
    stop = "/tmp/uph-peek-stop"
    peek = f"{shlex.quote(path)} peek {site} 120 {stop}"
    script = (
        f"rm -f {stop}; {peek} > /tmp/uph-peek-a.out & A=$!; {peek} > /tmp/uph-peek-b.out & "
        f"B=$!; sleep 0.3; {command}; s=$?; touch {stop}; wait $A $B; "
        f"echo PEEKER_A $(cat /tmp/uph-peek-a.out); echo PEEKER_B $(cat /tmp/uph-peek-b.out); "
        f"exit $s"
    )
    result = guest.run(["sh", "-c", script], timeout=600)
    assert result.status == 0, f"failed ({result.status}): {result.stdout}{result.stderr}"
    out, _, rest = result.stdout.partition("PEEKER_A ")
    first, _, second = rest.partition("PEEKER_B ")
    fields_a, fields_b = _fields(first), _fields(second)
    assert int(fields_a["calls"]) > 0 and int(fields_b["calls"]) > 0, result.stdout
    return out, fields_a, fields_b


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("site", ["mov", "push"])
@pytest.mark.parametrize("path_in", ["exec", "attach"])
def test_filtered_consumer_keeps_other_processes_untouched(guest, target, site, path_in, smp):
    """A perf event bound to one process must not put its breakpoint into another process
    running the same file: that one reads its own code byte before every call and must
    never see 0xcc. `exec`: the event is enabled at the exec of the process it follows
    (installed when that process maps the file); `attach`: the event is attached to a
    running process (installed into whichever processes the filter accepts)."""
    path, binary = target("hits")
    perf, _ = target("perf_uprobe")
    symbol, _kind = SITES[site]
    offset = hex(symbol_offset(binary, symbol))
    if path_in == "exec":
        command = shlex.join([perf, "-p", path, offset, "--", path, site, "1", "4000"])
    else:
        command = f"{shlex.join([perf, '-P'])} $A {shlex.join([path, offset, '--', 'sleep', '1'])}"
    out, followed, bystander = _peekers(guest, path, site, command)
    lines = out.strip().splitlines()
    consumer = _fields(lines[-1])
    if path_in == "exec":
        program = _fields(" ".join(lines[:-1]))
        assert program["bad"] == "0"
        assert int(consumer["perf_count"]) == int(program["calls"]) == 4000
    else:
        assert int(followed["int3_seen"]) > 0, "the followed process never had the breakpoint"
        assert 0 < int(consumer["perf_count"]) <= int(followed["calls"])
    assert bystander["int3_seen"] == "0", (
        f"a process the perf event does not follow saw the breakpoint in "
        f"{bystander['int3_seen']} of {bystander['calls']} reads: the uprobe filter let it in"
    )


@pytest.mark.vm(tcg="exact")
def test_an_unfiltered_consumer_reaches_every_process(guest, target):
    """The peekers' oracle can see a breakpoint: under a system-wide perf consumer both
    must (so the 0 above means something), and the count covers both."""
    path, binary = target("hits")
    perf, _ = target("perf_uprobe")
    offset = hex(symbol_offset(binary, "site_mov"))
    command = shlex.join([perf, path, offset, "--", "sleep", "1"])
    out, first, second = _peekers(guest, path, "mov", command)
    consumer = _fields(out.strip().splitlines()[-1])
    assert int(first["int3_seen"]) > 0 and int(second["int3_seen"]) > 0
    assert int(consumer["perf_count"]) > 0


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("site", ["mov", "riprel"])
def test_consumers_together_one_toggled(guest, target, uprobe, site, smp):
    """tracefs and a system-wide perf event on the same site, while a third consumer (a
    system-wide perf event) is added and removed every 2 ms: the two steady consumers
    count every call of 8 threads, the program computes right results."""
    path, binary = target("hits")
    perf, _ = target("perf_uprobe")
    symbol, _kind = SITES[site]
    offset = symbol_offset(binary, symbol)
    uprobe.add("steady", path, binary, symbol)
    threads, iterations = 8, 600
    inner = shlex.join([perf, path, hex(offset), "--", path, site, str(threads), str(iterations)])
    outer = [perf, "-t", path, hex(offset), "--", "sh", "-c", inner]
    result = guest.run(outer, timeout=600)
    assert result.status == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    toggled, steady = _fields(lines[-1]), _fields(lines[-2])
    program = _fields(" ".join(lines[:-2]))
    calls = int(program["calls"])
    assert calls == threads * iterations
    assert program["bad"] == "0", "the probed instruction computed wrong results"
    assert int(toggled["toggles"]) > 0, "the third consumer was never added"
    assert int(steady["perf_count"]) == calls, f"perf counted {steady['perf_count']} of {calls}"
    hits = uprobe.hits()["steady"]
    assert hits.overruns == 0
    assert hits.trace == calls, f"tracefs saw {hits.trace} of {calls} hits"


def _process_bound_counts(guest, target, site, threads, iterations, runs, env=()) -> list[int]:
    """`hits SITE THREADS ITERATIONS` run RUNS times under a perf event bound to it (with
    inherit); the event's count of each run, the program's own checks passed."""
    path, binary = target("hits")
    perf, _ = target("perf_uprobe")
    symbol, kind = SITES[site]
    offset = symbol_offset(binary, symbol)
    counts = []
    for _run in range(runs):
        program, fields = _perf_run(
            guest,
            perf,
            "perf_pid",
            path,
            offset,
            kind,
            [*env, path, site, str(threads), str(iterations)],
        )
        assert int(program["calls"]) == threads * iterations
        assert program["bad"] == "0", "the probed instruction computed wrong results"
        counts.append(int(fields["perf_count"]))
    return counts


@pytest.mark.vm(smp=4, tcg="exact")
@pytest.mark.parametrize("site", ["push", "ret"])
def test_process_bound_event_counts_each_hit_once(guest, target, site):
    """A perf event bound to a process counts each hit of its 32 threads exactly once, on
    entry and on return, over eight runs. A kernel that gives every inherited copy of the
    event a uprobe consumer of its own runs one handler per thread for each hit, each
    counting it only if its copy is the one current carries at that moment: a thread
    preempted between two handlers (or, for a return probe, between the entry and the
    return) counts a hit twice or not at all."""
    threads = 32
    counts = _process_bound_counts(guest, target, site, threads, ITERATIONS, runs=8)
    wrong = [f"run {n}: {c}" for n, c in enumerate(counts, 1) if c != threads * ITERATIONS]
    assert not wrong, f"of {threads * ITERATIONS} hits the event counted: {', '.join(wrong)}"


@pytest.mark.vm(smp=1, tcg="exact")
@pytest.mark.parametrize("exit_together", [False, True], ids=["staggered", "together"])
def test_process_bound_event_counts_threads_outliving_their_siblings(guest, target, exit_together):
    """A perf event bound to a process counts every hit of its threads when they exit one by
    one: on one vCPU, perf switches the cloned contexts of sibling threads instead of
    rescheduling their events, so a thread can count in a context inherited from a sibling
    that has exited already. 64 threads x 200 calls, three runs, each count exact;
    `together` (the threads wait for each other before exiting) is the control."""
    threads, iterations = 64, 200
    env = ("env", f"HITS_EXIT_TOGETHER={int(exit_together)}")
    counts = _process_bound_counts(guest, target, "mov", threads, iterations, runs=3, env=env)
    assert counts == [threads * iterations] * 3, (
        f"the process-bound event counted {counts} hits in three runs of "
        f"{threads * iterations} calls each"
    )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("site", ["mov", "push"])
def test_filtered_bpf_link_keeps_other_processes_untouched(guest, target, site, smp):
    """A uprobe_multi link filtered to one pid must not put its breakpoint into another
    process running the same file (it reads its own code byte before every call and must
    never see 0xcc), and its program runs for every call of the followed process only."""
    path, binary = target("hits")
    bpf, _ = target("bpf_uprobe")
    symbol, _kind = SITES[site]
    offset = hex(symbol_offset(binary, symbol))
    probe = shlex.join([bpf, "-m", "multi", "-p", path, offset, "--", path, site, "1", "4000"])
    # bpf_uprobe exits 3 where the kernel has no uprobe_multi: the peekers still run, the
    # status is checked below
    command = f"{probe}; echo BPF_EXIT=$?"
    out, followed, bystander = _peekers(guest, path, site, command)
    if f"BPF_EXIT={BPF_UNSUPPORTED}" in out:
        _skip_where_the_kernel_predates(guest, "bpf_multi", out)
    assert "BPF_EXIT=0" in out, out
    lines = [line for line in out.strip().splitlines() if not line.startswith("BPF_EXIT=")]
    consumer = _fields(lines[-1])
    program = _fields(" ".join(lines[:-1]))
    assert program["bad"] == "0"
    assert int(consumer["bpf_count"]) == int(program["calls"]) == 4000
    assert bystander["int3_seen"] == "0", (
        f"a process the link does not follow saw the breakpoint in {bystander['int3_seen']} "
        f"of {bystander['calls']} reads: the uprobe_multi filter let it in"
    )


@pytest.mark.vm(tcg="exact")
def test_own_breakpoint_under_a_probe_registered_before_exec(guest, target, uprobe):
    """A program's own int3 (a debug-break it catches) under a uprobe registered before the
    program runs, and another probe on its main: the kernel cannot prepare a probe on a
    breakpoint, so it installs nothing there when the program's exec maps the file (the
    probe on main is installed), and the program must get its SIGTRAP as without the probes
    (registered while a process maps the file, the probe on the int3 is refused). The probe
    on main matters: only a process with a uprobe installed takes its traps to uprobes."""
    path, binary = target("own_int3")
    command = ["timeout", "-s", "KILL", "20", path, "3"]
    alone = guest.run(command, timeout=60)
    assert alone.status == 0 and "traps=3" in alone.stdout, alone.describe()
    uprobe.add("other", path, binary, "main")
    uprobe.add("own", path, binary, "own_int3")
    probed = guest.run(command, timeout=60)
    assert probed.status == 0 and "traps=3" in probed.stdout, (
        f"under the probe the program {probed.describe()} ({probed.stdout.strip()!r}; "
        f"without it: {alone.stdout.strip()!r}): killed after 20 s means it never got past "
        f"its own int3"
    )
