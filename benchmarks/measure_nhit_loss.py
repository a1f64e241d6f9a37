"""How reliably does the 6.1 uprobe_profile race show? Boots a kernel with N vCPUs under
multi-threaded TCG and runs the profile scenario's workload R times, printing the hits
uprobe_profile lost in each run (program's own atomic count minus the profile).

  python benchmarks/measure_nhit_loss.py [--kernel debian:6.1] [--series none] [--runs 10]
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--series", default="none")
    parser.add_argument("--smp", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=25000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    target = compile_target("hits")
    with VM(built, image.build_image(), MachineSpec(smp=args.smp, tcg_threads="multi")) as vm:
        guest = Guest(vm)
        path = guest.upload(target)
        probe = probes.Probe("prof", path, probes.symbol_offset(target.binary, "site_mov"))
        losses = []
        for _ in range(args.runs):
            guest.reset_tracing()
            guest.add_probe(probe)
            guest.run("echo 0 > /sys/kernel/tracing/tracing_on", check=True)
            out = guest.run(
                [path, "mov", str(args.threads), str(args.iterations)], timeout=600, check=True
            ).stdout
            calls = int(dict(w.split("=") for w in out.split())["calls"])
            losses.append(calls - guest.hits(["prof"])["prof"].profile)
            guest.remove_probes()
    shown = sum(1 for loss in losses if loss > 0)
    print(
        f"{built.label} {built.series or '(no series)'}: smp={args.smp}, "
        f"{args.threads} threads x {args.iterations} calls, {args.runs} runs"
    )
    print(f"lost hits per run: {losses}")
    print(
        f"runs that showed the bug: {shown}/{args.runs}, median loss "
        f"{statistics.median(losses)} of {args.threads * args.iterations} "
        f"({100 * statistics.median(losses) / (args.threads * args.iterations):.3f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
