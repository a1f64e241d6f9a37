"""Family 1 - multithreaded hits: many threads on one probe, more threads than XOL slots.

Oracles: the program's own atomic call counter (it also checks every result), the trace
buffer (with ring-buffer overruns checked), and uprobe_profile's counter."""

import shlex

import pytest

from harness import probes
from harness.probes import Probe, symbol_offset

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
ITERATIONS_TOGGLED = 10**9        # bounded by TOGGLE_SECONDS instead
TOGGLE_THREADS = 64
TOGGLES = 300
TOGGLE_SECONDS = 3


def run_hits(guest, path, site, threads, iterations):
    result = guest.run([path, site, str(threads), str(iterations)], timeout=600)
    assert result.status == 0, f"probed program failed ({result.status}): {result.stdout}" \
                               f"{result.stderr}"
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
        assert profile == calls, f"uprobe_profile counted {profile} of {calls} hits " \
                                 f"({calls - profile} lost)"


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
    probe = Probe("toggled", path, symbol_offset(binary, symbol), kind)   # uprobe: cleanup
    tracing = "/sys/kernel/tracing"
    # enable = uprobe_register(): breakpoints installed in the running process;
    # disable = uprobe_unregister(): removed again. (Deleting the trace event itself would
    # also reset the trace buffer, so the event stays defined until the test ends.)
    script = (
        f"{probes.add_command(probe)} || exit 90\n"
        f"{shlex.quote(path)} {site} {TOGGLE_THREADS} {ITERATIONS_TOGGLED} {TOGGLE_SECONDS}"
        " > /tmp/uph-toggle.out 2>&1 &"
        " pid=$!\n"
        "i=0\n"
        f"while kill -0 $pid 2>/dev/null && [ $i -lt {TOGGLES} ]; do\n"
        f"  {probes.enable_command(probe)} || exit 91\n"
        "  sleep 0.001\n"
        f"  {probes.enable_command(probe, on=False)} || exit 92\n"
        "  i=$((i+1))\n"
        "done\n"
        "wait $pid; status=$?\n"
        "echo \"status=$status toggles=$i\"; cat /tmp/uph-toggle.out\n"
        f"grep -v '^#' {tracing}/trace | grep -c ' toggled: ' || true\n")
    result = guest.run(["sh", "-c", script], timeout=600)
    lines = result.stdout.split()
    assert result.status == 0, f"probe control failed ({result.status}): {result.stdout}"
    fields = dict(word.split("=") for word in lines if "=" in word)
    assert fields["status"] == "0", f"the probed program died: {result.stdout}"
    assert int(fields["toggles"]) >= 2, \
        f"the program ended before the probe was toggled: {result.stdout}"
    assert int(fields["bad"]) == 0
    traced = int(lines[-1])
    assert 0 < traced <= int(fields["calls"]) <= TOGGLE_THREADS * ITERATIONS_TOGGLED, \
        result.stdout
