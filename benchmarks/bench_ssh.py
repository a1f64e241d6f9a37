"""What one SSH handshake and one command cost between the host and a guest, with and
without Nagle's algorithm on the host's socket (TCP_NODELAY), in one guest:

  python benchmarks/bench_ssh.py [--kernel debian:6.1] [--smp 4] [--runs 7] [--commands 5]

Each run connects once per variant (interleaved) and times the handshake (TCP connect, key
exchange, public-key authentication) and then COMMANDS runs of `true`; printed are medians
and the ratio of the harness's setting (TCP_NODELAY on) to the other. A test of the suite
issues one command or more, and every VM boot ends in a handshake.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.build import kernel  # noqa: E402
from harness.machine import image  # noqa: E402
from harness.machine.ssh import SSHSession  # noqa: E402
from harness.machine.vm import VM, MachineSpec  # noqa: E402
from harness.progress import Progress  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--series", default=None)
    parser.add_argument("--smp", type=int, default=4)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--commands", type=int, default=5)
    args = parser.parse_args()
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    img = image.build_image()
    variants = {"TCP_NODELAY": True, "Nagle": False}
    handshakes: dict[str, list[float]] = {name: [] for name in variants}
    commands: dict[str, list[float]] = {name: [] for name in variants}
    with VM(built, img, MachineSpec(smp=args.smp)) as vm:
        assert vm.port is not None
        for _ in range(args.runs):
            for name, nodelay in variants.items():
                session = SSHSession(
                    "127.0.0.1", vm.port, img.client_key, img.host_key_line, nodelay=nodelay
                )
                started = time.monotonic()
                session.connect()
                handshakes[name].append(time.monotonic() - started)
                for _ in range(args.commands):
                    started = time.monotonic()
                    session.run("true", check=True)
                    commands[name].append(time.monotonic() - started)
                session.close()
    print(f"{built.label}, {args.smp} vCPU(s), {vm.record.accel if vm.record else '?'}")
    base_handshake = statistics.median(handshakes["Nagle"])
    base_command = statistics.median(commands["Nagle"])
    for name in variants:
        handshake = statistics.median(handshakes[name])
        command = statistics.median(commands[name])
        print(
            f"{name:12s} handshake median {handshake * 1000:6.1f} ms "
            f"(x{handshake / base_handshake:.2f}), command `true` median "
            f"{command * 1000:6.1f} ms (x{command / base_command:.2f}); "
            f"{len(handshakes[name])} handshakes, {len(commands[name])} commands"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
