"""Boot benchmark: time from starting QEMU to the first answered SSH command, under the
chosen accelerator, for several vCPU counts. Prints medians.

  python benchmarks/bench_boot.py [--kernel debian:6.1] [--smp 1,2,4] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    args = parser.parse_args()
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    img = image.build_image()
    print(
        f"{built.label} {built.series}, bzImage {built.bzimage.stat().st_size / 1e6:.1f} MB, "
        f"initramfs {img.initramfs.stat().st_size / 1e6:.1f} MB"
    )
    for smp in (int(v) for v in args.smp.split(",")):
        times, markers = [], []
        for _ in range(args.runs):
            with VM(built, img, MachineSpec(smp=smp, tcg_threads=args.tcg_threads)) as vm:
                times.append(vm.boot_seconds)
                markers.append(vm.marker_seconds)
                accel = f"{vm.record.accel}/{vm.record.tcg_threads}"
        print(
            f"smp={smp} ({accel}): boot to SSH ready median {statistics.median(times):.2f}s "
            f"({', '.join(f'{t:.2f}' for t in times)}); ready marker on the console median "
            f"{statistics.median(markers):.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
