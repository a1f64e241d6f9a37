"""Boot benchmark: time from starting QEMU to the first answered SSH command, under the
chosen accelerator, for several vCPU counts and QEMU machine types. Prints medians, and for
each later machine type its ratio to the first one (same session, runs interleaved so that
the machine's load affects both alike).

  python benchmarks/bench_boot.py [--kernel debian:6.1] [--smp 1,2,4] [--runs 5]
                                  [--machines pc,microvm] [--bzimage]

--bzimage adds, for each machine type, boots of the same kernel from its bzImage even where the
machine would start the vmlinux through PVH (named "<machine>/bzImage"), interleaved.

--against REV boots REV's kernel, image and machine definition (a worktree of REV, its own
bench_boot.py, one boot at a time) interleaved with this tree's, and prints the ratio
after/before. A REV whose bench_boot.py has no --json (before the speed work) gets this
script's boots run with REV's harness, configuration and image (against.script_for).

--record appends the medians of one machine type to benchmarks/figures.jsonl (figures
boot_smp1 and boot_smp4; see benchmarks/figures.py), REV's too with --against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import figures
from against import script_for  # (the import puts this tree's or REV's harness on sys.path)

from harness.build import kernel  # noqa: E402
from harness.machine import image
from harness.machine.vm import VM, MachineSpec  # noqa: E402
from harness.progress import Progress  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--series", default=None)
    parser.add_argument("--smp", default="1,2,4")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tcg-threads", default="multi")
    parser.add_argument("--machines", default="auto", help="e.g. pc,microvm (default auto)")
    parser.add_argument("--bzimage", action="store_true", help="also boot from the bzImage")
    parser.add_argument("--against", metavar="REV", help="compare with a worktree of REV")
    parser.add_argument("--json", action="store_true", help="one JSON line per boot")
    parser.add_argument("--record", action="store_true", help="record the figures (see above)")
    args = parser.parse_args()
    defaults = (args.kernel, args.series, args.tcg_threads) == ("debian:6.1", None, "multi")
    if args.record and ("," in args.machines or args.bzimage or args.json or not defaults):
        print(
            "bench_boot.py: --record measures the default kernel and series, multi-threaded "
            "TCG where TCG runs, and one machine type",
            file=sys.stderr,
        )
        return 2
    if args.against:
        if "," in args.machines or args.bzimage:
            print(
                "bench_boot.py: --against compares one machine type (no --bzimage)",
                file=sys.stderr,
            )
            return 2
        return against(args)
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    img = image.build_image()
    print(
        f"{built.label} {built.series}, bzImage {built.bzimage.stat().st_size / 1e6:.1f} MB, "
        f"initramfs {img.initramfs.stat().st_size / 1e6:.1f} MB"
    )
    machines = args.machines.split(",")
    if args.bzimage:
        machines = [v for m in machines for v in (m, f"{m}/bzImage")]
    for smp in (int(v) for v in args.smp.split(",")):
        times: dict[str, list[float]] = {m: [] for m in machines}
        markers: dict[str, list[float]] = {m: [] for m in machines}
        accel = ""
        for _ in range(args.runs):
            for machine in machines:
                machine_type, _, from_bzimage = machine.partition("/")
                # (pvh only where asked: a harness before PVH has no such field)
                spec = MachineSpec(
                    smp=smp,
                    tcg_threads=args.tcg_threads,
                    machine=machine_type,
                    **({"pvh": False} if from_bzimage else {}),  # type: ignore[arg-type]
                )
                with VM(built, img, spec) as vm:
                    assert vm.record is not None and vm.record.vcpus_seen == smp
                    times[machine].append(vm.boot_seconds)
                    markers[machine].append(vm.marker_seconds)
                    accel = f"{vm.record.accel}/{vm.record.tcg_threads}"
                if args.json:
                    boot = dict(smp=smp, machine=machine, qemu_machine=vm.record.machine)
                    print(json.dumps(boot | dict(accel=accel, seconds=vm.boot_seconds)), flush=True)
        if args.json:
            continue
        if args.record and figures.defined(f"boot_smp{smp}"):
            figures.record(f"boot_smp{smp}", times[machines[0]])
        first = statistics.median(times[machines[0]])
        for machine in machines:
            median = statistics.median(times[machine])
            ratio = "" if machine == machines[0] else f", x{median / first:.2f} vs {machines[0]}"
            print(
                f"smp={smp} {machine} ({accel}): boot to SSH ready median {median:.2f}s "
                f"({', '.join(f'{t:.2f}' for t in times[machine])}){ratio}; ready marker on "
                f"the console median {statistics.median(markers[machine]):.2f}s"
            )
    return 0


def against(args) -> int:
    """Boots of REV's worktree and of this tree, one at a time, interleaved."""
    from against import ROOT, worktree

    def one_boot(tree: Path, smp: int) -> dict:
        script, env = script_for(tree, __file__, "--json")
        cmd = [sys.executable, str(script), "--kernel", args.kernel]
        cmd += ["--series", args.series] if args.series else []
        cmd += ["--smp", str(smp), "--runs", "1", "--machines", args.machines]
        cmd += ["--tcg-threads", args.tcg_threads, "--json"]
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"bench_boot.py in {tree} failed:\n{done.stderr[-2000:]}")
        return json.loads(lines[-1])

    with worktree(args.against) as before:
        trees = [(args.against, before), ("current", ROOT)]
        for smp in (int(v) for v in args.smp.split(",")):
            times: dict[str, list[float]] = {label: [] for label, _ in trees}
            machine = {}
            for _ in range(args.runs):
                for label, tree in trees:
                    boot = one_boot(tree, smp)
                    times[label].append(boot["seconds"])
                    machine[label] = f"{boot.get('qemu_machine', boot['machine'])}, {boot['accel']}"
            base = statistics.median(times[args.against])
            if args.record and figures.defined(f"boot_smp{smp}"):
                figures.record_against(
                    f"boot_smp{smp}",
                    times[args.against],
                    figures.current_rev(before),
                    times["current"],
                )
            for label, _ in trees:
                median = statistics.median(times[label])
                print(
                    f"smp={smp} {label} ({machine[label]}): boot to SSH ready median "
                    f"{median:.2f}s ({', '.join(f'{t:.2f}' for t in times[label])}), "
                    f"x{median / base:.2f} vs {args.against}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
