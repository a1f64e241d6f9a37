"""The seed's question, measured: what does one probe hit cost on each path, in one guest?

  python benchmarks/bench_probe_cost.py [--kernel debian:7.3] [--series S] [--calls N] [--runs 3]

For each site of the `opt` target (testcases/targets: opt_sites.S, hits_sites.S) the guest
program times N calls unprobed and N calls with a uprobe on the site (tracing off: the
consumer runs, nothing is logged), R times each; printed are medians, the per-hit cost
(probed minus unprobed) and its ratio to one unprobed call of an empty function:

  nop10        the nop10 a 7.x kernel rewrites into a trampoline call (optimized path)
  nop10_split  the same nop10 across a page boundary: never rewritten, the int3 path
               (emulated as a nop)
  push         push %rbp: emulated in the kernel
  mov          mov %rdi,%rax: single-stepped out of line
  riprel       a rip-relative load: out of line, rewritten to a scratch register
  ret          a uretprobe (return probe) on a function

Under TCG a trap, a syscall and a single-step each cost what the emulator makes of them,
not what a CPU does: compare ratios within one run, and read the distances between paths
(one trap vs two traps vs one syscall) rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.build import kernel
from harness.machine import image
from harness.machine.vm import VM, MachineSpec  # noqa: E402
from harness.probing import probes  # noqa: E402
from harness.probing.guest import Guest  # noqa: E402
from harness.probing.targets import compile_target  # noqa: E402
from harness.progress import Progress  # noqa: E402

SITES = [  # (site name in `opt time`, symbol probed, probe kind, the path it takes)
    ("nop10", "site_opt", "p", "optimized where the kernel supports it, else int3"),
    ("nop10_split", "site_opt_split", "p", "int3, emulated nop"),
    ("push", "site_push", "p", "int3, emulated push"),
    ("mov", "site_mov", "p", "int3 + out-of-line single-step"),
    ("riprel", "site_riprel", "p", "int3 + out-of-line, rip-relative rewrite"),
    ("ret", "site_ret", "r", "uretprobe: int3 at entry + return trampoline"),
]


def timed(guest: Guest, path: str, site: str, calls: int) -> float:
    out = guest.run([path, "time", site, str(calls)], timeout=900, check=True).stdout
    return float(dict(w.split("=") for w in out.split())["ns_per_call"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:7.3")
    parser.add_argument("--series", default=None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    target = compile_target("opt")
    with VM(built, image.build_image(), MachineSpec(smp=1)) as vm:
        guest = Guest(vm)
        path = guest.upload(target)
        plain = statistics.median(
            timed(guest, path, "plain", args.calls * 10) for _ in range(args.runs)
        )
        rows = []
        for site, symbol, kind, what in SITES:
            unprobed = statistics.median(
                timed(guest, path, site, args.calls * 10) for _ in range(args.runs)
            )
            probe = probes.Probe("cost", path, probes.symbol_offset(target.binary, symbol), kind)
            probed_runs = []
            for _ in range(args.runs):
                guest.reset_tracing()
                guest.add_probe(probe)
                guest.run(f"echo 0 > {probes.TRACEFS}/tracing_on", check=True)
                probed_runs.append(timed(guest, path, site, args.calls))
                guest.remove_probes()
            probed = statistics.median(probed_runs)
            rows.append((site, what, unprobed, probed, probed - unprobed))
    assert vm.record is not None  # set once the guest is up
    print(
        f"{built.label}{' + ' + built.series if built.series else ''}, "
        f"{vm.record.accel}/{vm.record.tcg_threads}, 1 vCPU, {args.calls} probed calls, "
        f"medians of {args.runs}"
    )
    print(f"unprobed call of an empty function: {plain:.1f} ns")
    print(
        f"{'site':<12}{'unprobed ns':>12}{'probed ns':>12}{'per hit ns':>12}{'x plain':>10}  path"
    )
    for site, what, unprobed, probed, hit in rows:
        print(f"{site:<12}{unprobed:>12.1f}{probed:>12.1f}{hit:>12.1f}{hit / plain:>10.0f}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
