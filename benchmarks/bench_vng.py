"""Side by side with virtme-ng: the same Debian 6.1 source, built with vng's own minimal
config and booted by vng to run `true`, against this harness's build and boot, in one
session, under TCG (no usable KVM here). Prints medians and ratios.

  python benchmarks/bench_vng.py [--runs 5] [--skip-build]

virtme-ng is installed from PyPI into its own virtualenv in the cache (it is a benchmark
reference, not a dependency). Its kernel tree is a `git clone --shared` of the harness's
pristine source in the cache, so neither the harness's tree nor any user checkout changes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.build import kernel, sources  # noqa: E402
from harness.machine import image
from harness.machine.vm import VM, MachineSpec  # noqa: E402
from harness.paths import cache_dir  # noqa: E402
from harness.progress import Progress  # noqa: E402


def ensure_vng(root: Path) -> Path:
    vng = root / "venv" / "bin" / "vng"
    if not vng.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        subprocess.run(
            [str(root / "venv" / "bin" / "pip"), "install", "-q", "virtme-ng"], check=True
        )
    return vng


def ensure_tree(root: Path) -> Path:
    tree = root / "linux"
    if not (tree / ".git").exists():
        source = sources.prepare(sources.parse_spec("debian:6.1"))
        subprocess.run(["git", "clone", "-q", "--shared", str(source.tree), str(tree)], check=True)
    return tree


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    # vng runs its helpers (virtme-configkernel, virtme-run) from PATH
    env = dict(os.environ, PATH=f"{Path(cmd[0]).parent}:{os.environ.get('PATH', '')}")
    start = time.monotonic()
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    return time.monotonic() - start, result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--skip-build", action="store_true", help="reuse vng's previous build in the cache"
    )
    args = parser.parse_args()
    root = cache_dir("bench", "vng")
    vng = ensure_vng(root)
    tree = ensure_tree(root)
    if not args.skip_build:
        subprocess.run(["git", "clean", "-qfdx"], cwd=tree, check=True)
        seconds, result = timed([str(vng), "--build"], tree)
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:])
            return 1
        print(
            f"vng --build (its minimal config, make -j{len(os.sched_getaffinity(0))}): "
            f"{seconds:.0f} s"
        )
    bzimage = tree / "arch" / "x86" / "boot" / "bzImage"
    print(f"vng bzImage {bzimage.stat().st_size / 1e6:.1f} MB")

    vng_times = []
    for _ in range(args.runs):
        # --verbose: the guest's console shows the script's exit code. vng itself returns
        # 255 here because this vng build's guest finds no virtio-serial script ports and
        # falls back to the console ("cannot find script I/O ports")
        seconds, result = timed([str(vng), "--disable-kvm", "--verbose", "--exec", "true"], tree)
        if "script exited with code 0" not in result.stdout + result.stderr:
            print(
                f"vng boot failed ({result.returncode}):\n{result.stdout[-2000:]}"
                f"{result.stderr[-2000:]}"
            )
            return 1
        vng_times.append(seconds)

    built = kernel.build(kernel.BuildRequest(kernel="debian:6.1"), Progress.quiet())
    img = image.build_image()
    ours = []
    for _ in range(args.runs):
        start = time.monotonic()
        with VM(built, img, MachineSpec(smp=1)) as machine:
            status = machine.ssh.run("true", timeout=60).status
        ours.append(time.monotonic() - start)
        if status != 0:
            print("our guest did not run `true`")
            return 1
    vng_median, our_median = statistics.median(vng_times), statistics.median(ours)
    print(f"boot + `true` + shutdown, median of {args.runs}:")
    print(f"  virtme-ng: {vng_median:.2f} s ({', '.join(f'{t:.1f}' for t in vng_times)})")
    print(
        f"  harness:   {our_median:.2f} s ({', '.join(f'{t:.1f}' for t in ours)}), "
        f"bzImage {built.bzimage.stat().st_size / 1e6:.1f} MB"
    )
    print(f"  ratio virtme-ng / harness: {vng_median / our_median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
