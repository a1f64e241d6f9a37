"""Family 1 - multithreaded hits: many threads on one probe, more threads than XOL slots.

Oracles: the program's own atomic call counter (it also checks every result), the trace
buffer (with ring-buffer overruns checked), and uprobe_profile's counter."""

import shlex

import pytest

from harness.probing import probes
from harness.probing.probes import Probe, symbol_offset

pytestmark = pytest.mark.threads

# site -> (symbol probed, probe kind): emulated push, out-of-line mov, rip-relative load
# (rewritten to a scratch register), and a function probed on return.
SITES = {
    "push": ("site_push", "p"),
    "mov": ("site_mov", "p"),
    "riprel": ("site_riprel", "p"),
    "ret": ("site_ret", "r"),
    # nop10 at a function entry: int3 on its first hit, then (7.x) rewritten into a call to
    # the uprobe trampoline (the optimized path, syscall 336); elsewhere an emulated nop
    "nop10": ("site_nop10", "p"),
}
ITERATIONS = 400
ITERATIONS_TOGGLED = 10**9  # bounded by the toggling script's stop file instead
TOGGLE_THREADS = 64
TOGGLES = 300  # at most
MIN_TOGGLES = 3  # at least, however slowly each goes (the threads run until then)
TOGGLE_SECONDS = 3  # toggling lasts at least this long
TOGGLE_CAP_SECONDS = 120  # the program's own deadline, should the script die


def run_hits(guest, path, site, threads, iterations):
    result = guest.run([path, site, str(threads), str(iterations)], timeout=600)
    assert result.status == 0, (
        f"probed program failed ({result.status}): {result.stdout}{result.stderr}"
    )
    fields = dict(word.split("=") for word in result.stdout.split())
    return int(fields["calls"]), int(fields["bad"])


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("threads", [1, 8, 64])
@pytest.mark.parametrize("site", sorted(SITES))
def test_every_hit_traced(guest, target, uprobe, site, threads, smp):
    """Every call of the probed site appears once in the trace buffer, none lost."""
    path, binary = target("hits")
    symbol, kind = SITES[site]
    uprobe.add("hit", path, binary, symbol, kind=kind)
    calls, bad = run_hits(guest, path, site, threads, ITERATIONS)
    hits = uprobe.hits()["hit"]
    assert calls == threads * ITERATIONS
    assert bad == 0, "the probed instruction computed wrong results"
    assert hits.overruns == 0, "trace ring buffer overran: enlarge buffer_size_kb"
    assert hits.trace == calls, f"trace saw {hits.trace} hits for {calls} calls"


@pytest.mark.vm(tcg="parallel")
def test_profile_counts_every_hit(guest, target, uprobe, smp, repeat):
    """uprobe_profile's counter equals the program's own count. 6.1 loses updates under SMP
    (non-atomic nhit++ on every CPU): needs true parallelism, so multi-threaded TCG."""
    path, binary = target("hits")
    threads, iterations = max(2 * smp, 2), 25000
    for _ in range(repeat):
        uprobe.clear()
        guest.reset_tracing()
        uprobe.add("prof", path, binary, "site_mov")
        guest.run("echo 0 > /sys/kernel/tracing/tracing_on", check=True)  # count, don't log
        calls, bad = run_hits(guest, path, "mov", threads, iterations)
        profile = uprobe.hits()["prof"].profile
        assert bad == 0
        assert profile == calls, (
            f"uprobe_profile counted {profile} of {calls} hits ({calls - profile} lost)"
        )


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("site", ["push", "mov", "riprel", "nop10"])
def test_probe_toggled_while_threads_run(guest, target, uprobe, site, smp):
    """A probe registered and unregistered (enabled/disabled) again and again while 64
    threads run through the site: no crash, no stray SIGTRAP (an int3 left behind, or a trap
    whose uprobe was removed before the kernel looked it up, would kill the program), every
    result still right, some hits and never more hits than calls. More threads than vCPUs,
    so that threads are preempted between their trap and the uprobe lookup."""
    path, binary = target("hits")
    symbol, kind = SITES[site]
    probe = Probe("toggled", path, symbol_offset(binary, symbol), kind)  # uprobe: cleanup
    tracing = "/sys/kernel/tracing"
    # enable = uprobe_register(): breakpoints installed in the running process;
    # disable = uprobe_unregister(): removed again. (Deleting the trace event itself would
    # also reset the trace buffer, so the event stays defined until the test ends.)
    # The threads run until the script has toggled at least MIN_TOGGLES times for at least
    # TOGGLE_SECONDS (a stop file; a fixed run time let a slow register starve the test of
    # toggles: 1 in 3 s once, with 64 threads on 4 vCPUs on 2 host cores).
    stop = "/tmp/uph-toggle.stop"
    script = (
        f"{probes.add_command(probe)} || exit 90\n"
        f"rm -f {stop}; trap 'touch {stop}' EXIT\n"
        # the threads at nice 19 (a shell reniced, then exec'd: every thread inherits it),
        # so that the toggling shell gets a vCPU without waiting for 64 of them
        f'HITS_STOP_FILE={stop} sh -c \'renice -n 19 -p $$ >/dev/null && exec "$0" "$@"\' '
        f"{shlex.quote(path)} {site} {TOGGLE_THREADS} "
        f"{ITERATIONS_TOGGLED} {TOGGLE_CAP_SECONDS} > /tmp/uph-toggle.out 2>&1 &"
        " pid=$!\n"
        "read start rest < /proc/uptime; start=${start%.*}; elapsed=0\n"
        "i=0\n"
        f"while kill -0 $pid 2>/dev/null && [ $i -lt {TOGGLES} ] &&"
        f" {{ [ $i -lt {MIN_TOGGLES} ] || [ $elapsed -lt {TOGGLE_SECONDS} ]; }}; do\n"
        f"  {probes.enable_command(probe)} || exit 91\n"
        "  sleep 0.001\n"
        f"  {probes.enable_command(probe, on=False)} || exit 92\n"
        "  i=$((i+1))\n"
        "  read now rest < /proc/uptime; elapsed=$((${now%.*} - start))\n"
        "done\n"
        f"touch {stop}\n"
        "wait $pid; status=$?\n"
        'echo "status=$status toggles=$i"; cat /tmp/uph-toggle.out\n'
        f"grep -v '^#' {tracing}/trace | grep -c ' toggled: ' || true\n"
    )
    result = guest.run(["sh", "-c", script], timeout=600)
    lines = result.stdout.split()
    assert result.status == 0, f"probe control failed ({result.status}): {result.stdout}"
    fields = dict(word.split("=") for word in lines if "=" in word)
    assert fields["status"] == "0", f"the probed program died: {result.stdout}"
    assert int(fields["toggles"]) >= MIN_TOGGLES, (
        f"the program ended before the probe was toggled {MIN_TOGGLES} times: {result.stdout}"
    )
    assert int(fields["bad"]) == 0
    traced = int(lines[-1])
    assert 0 < traced <= int(fields["calls"]) <= TOGGLE_THREADS * ITERATIONS_TOGGLED, result.stdout


# -- distinct probes out of line at once (XOL-slot management) ----------------------------------

XOL_SITES = 48  # xol_sites.S: more distinct probes than the 31 usable XOL slots
XOL_ITERATIONS = 300
CHURN_WAVES, CHURN_THREADS = 40, 50
EXIT_THREADS = 40  # more than the XOL slots: every one an exiting thread kept is lost


def xol_site_probes(uprobe, path, binary) -> list[str]:
    names = {f"xol{k}": f"xol_site_{k}" for k in range(XOL_SITES)}
    uprobe.add_many(path, binary, names)
    return list(names)


def xol_counts(result) -> tuple[dict[str, str], dict[str, int]]:
    fields = dict(word.split("=", 1) for word in result.stdout.split() if "=" in word)
    per_site = {
        f"xol{k}": int(fields[f"site{k}"]) for k in range(XOL_SITES) if f"site{k}" in fields
    }
    return fields, per_site


def run_xol_many(guest, target, uprobe, confirmed, *args: str) -> tuple[dict[str, str], list[str]]:
    """Probe the 48 sites, run `xol_many ARGS...`; (its fields, the probe names), after
    checking that it did not die and that each probe was hit once per call of its site.
    Under multi-threaded TCG a failure is confirmed by a second run (`confirmed`)."""
    path, binary = target("xol_many")
    names = xol_site_probes(uprobe, path, binary)

    def check():
        guest.clear_trace()
        result = guest.run([path, *args], timeout=900)
        fields, per_site = xol_counts(result)
        if result.status not in (0, 1):
            segfaults = guest.run("dmesg | grep -F 'xol_many[' | tail -3").stdout
            raise AssertionError(
                f"the probed program died ({result.describe()}, "
                f"TCG {guest.record.tcg_threads}): {result.stdout}{result.stderr}{segfaults}"
            )
        assert_every_site_hit_exactly(uprobe, names, per_site)
        assert fields["bad"] == "0", f"{fields['bad']} wrong results or clobbered registers"
        return fields

    return confirmed(check), names


def assert_every_site_hit_exactly(uprobe, names, per_site):
    hits = uprobe.hits()
    overruns = {h.overruns for h in hits.values()}
    assert overruns == {0}, "trace ring buffer overran: enlarge buffer_size_kb"
    wrong = {
        name: (hits[name].trace, per_site[name])
        for name in names
        if hits[name].trace != per_site[name]
    }
    assert not wrong, f"probe hits (traced, called) differ at {len(wrong)} site(s): {wrong}"


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("threads", [8, 64])
def test_distinct_probes_out_of_line_at_once(guest, target, uprobe, confirmed, threads, smp):
    """48 probes on 48 different instructions (own displacements, rip-relative loads,
    rip-relative with an immediate, rip-relative addresses), every thread on its own rotation
    through them: threads execute different instructions out of line at the same moment, in
    more slots than there are. Each result is checked by the program, every other register
    must survive, and each probe's hit count must equal that site's calls."""
    fields, _ = run_xol_many(
        guest, target, uprobe, confirmed, "distinct", str(threads), str(XOL_ITERATIONS)
    )
    assert int(fields["calls"]) == threads * XOL_ITERATIONS


@pytest.mark.vm(tcg="exact")
def test_slots_reused_by_short_lived_threads(guest, target, uprobe, confirmed, smp):
    """2,000 threads, 50 alive at a time, each runs two probed instructions out of line and
    exits: every slot is taken and given back over and over; no result, register or hit may
    be lost."""
    fields, _ = run_xol_many(
        guest, target, uprobe, confirmed, "churn", str(CHURN_WAVES), str(CHURN_THREADS)
    )
    assert int(fields["calls"]) == 2 * CHURN_WAVES * CHURN_THREADS


@pytest.mark.vm(tcg="exact")
def test_thread_exits_inside_the_slot(guest, target, uprobe, smp, vm_pool):
    """40 threads end with a probed `syscall` (SYS_exit) that runs out of line, so each exits
    while it holds an XOL slot; then every site is probed and called once more. A kernel that
    refuses to probe `syscall` (at registration, or silently when the program maps its file)
    passes: nothing runs out of line; one that accepts it must give
    the slot back when the thread exits, or after 32 such exits the next out-of-line step
    waits forever."""
    path, binary = target("xol_many")
    try:
        uprobe.add("xolexit", path, binary, "xol_exit_syscall")
        refused = ""
    except probes.ProbeRefused as error:
        refused = error.message
    names = xol_site_probes(uprobe, path, binary)
    result = guest.run([path, "exit", str(EXIT_THREADS)], timeout=300)
    fields, per_site = xol_counts(result)
    if fields.get("after") == "hung":
        vm_pool.spoil(guest)  # a thread waits for a slot, uninterruptibly, for ever
    assert fields.get("after") == "ok", (
        f"{fields.get('exited', 'not all')} of {EXIT_THREADS} threads exited inside the XOL "
        f"slot, then an out-of-line step never finished: the exits kept their slots "
        f"({result.stdout.strip()[:200]})"
    )
    assert fields.get("exited") == str(EXIT_THREADS), result.stdout + result.stderr
    assert result.status == 0 and fields["bad"] == "0", result.stdout + result.stderr
    assert_every_site_hit_exactly(uprobe, names, per_site)
    # a kernel that will not run `syscall` out of line may also refuse it silently: analysed
    # when the program maps its file (no process mapped it at registration), never inserted
    exits_hit = 0 if refused else uprobe.hits()["xolexit"].trace
    assert exits_hit in (0, EXIT_THREADS), f"{exits_hit} hits for {EXIT_THREADS} exits"
