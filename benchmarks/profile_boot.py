"""Boot profile: where the guest's vCPUs are while it boots, sampled from the outside.

While the harness boots a guest (QEMU start to SSH ready), a second thread asks QEMU over
the machine's QMP socket for every vCPU's registers (`info registers -a`) as often as it
answers, maps each RIP to the kernel function holding it (the build's System.map; "user"
below the kernel half, "?" elsewhere) and prints, per time window, the functions seen most,
then the functions that took most samples over the whole boot. No kernel option, no
rebuild, no tracing in the guest: it found the 0.35 s `rep stosb` of free_initmem() under
-Os and the 0.2 s APIC timer calibration.

  python benchmarks/profile_boot.py [--kernel debian:6.1] [--smp 1] [--window 0.1] [--top 4]

Sampling slows the guest (each answer stops the vCPUs for a moment): compare the windows'
order and shares, not their absolute times, with an unprofiled boot. Time 0 is QEMU creating
its QMP socket. A boot that fails is shut down by the harness while the sampler still holds
the QMP connection: QEMU is then killed after the QMP quit's timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.build import kernel  # noqa: E402
from harness.machine import image  # noqa: E402
from harness.machine.vm import VM, MachineSpec  # noqa: E402
from harness.progress import Progress  # noqa: E402

KERNEL_HALF = 0xFFFF800000000000
USER_END = 0x0000800000000000
RIP = re.compile(r"CPU#(\d+).*?RIP=([0-9a-f]{16})", re.S)


class Symbols:
    """Text symbols of a System.map, for address -> function."""

    def __init__(self, system_map: Path):
        pairs = []
        for line in system_map.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                pairs.append((int(parts[0], 16), parts[2]))
        pairs.sort()
        self.addresses = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]
        ends = {n: a for a, n in pairs if n in ("_etext", "_einittext")}
        self.end = max(ends.values(), default=pairs[-1][0] if pairs else 0)

    def name(self, address: int) -> str:
        """The function holding `address`; "user" below the kernel half; "?" outside the
        kernel's text (modules, BPF, vsyscall)."""
        if address < USER_END:
            return "user"
        if address < KERNEL_HALF or address >= self.end:
            return "?"
        index = bisect.bisect_right(self.addresses, address) - 1
        return self.names[index] if index >= 0 else "?"


def sample(machine: VM, stop: threading.Event, samples: list) -> None:
    """Append (seconds since QEMU made its QMP socket, vCPU, RIP) until `stop` or until
    QEMU stops answering; QMP through qemu.qmp."""
    from qemu.qmp import QMPClient

    async def run() -> None:
        while not machine.qmp_socket.exists() and not stop.is_set():
            await asyncio.sleep(0.005)  # (the VM may move the socket to a shorter path)
        started = time.monotonic()  # QEMU makes the socket as it starts: the boot's t=0
        client = QMPClient("profile-boot")
        for _ in range(200):  # QEMU creates the socket just before it listens
            try:
                await client.connect(str(machine.qmp_socket))
                break
            except Exception:
                await asyncio.sleep(0.01)
        else:
            return
        try:
            while not stop.is_set():
                text = await client.execute(
                    "human-monitor-command", {"command-line": "info registers -a"}
                )
                now = time.monotonic() - started
                for cpu, rip in RIP.findall(str(text)):
                    samples.append((now, int(cpu), int(rip, 16)))
        except Exception:  # QEMU went away (a failed boot): the samples so far stand
            pass
        finally:
            try:
                await client.disconnect()  # the harness's own QMP quit needs the socket
            except Exception:
                pass

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="debian:6.1")
    parser.add_argument("--series", default=None)
    parser.add_argument("--smp", type=int, default=1)
    parser.add_argument("--window", type=float, default=0.1, help="seconds per line")
    parser.add_argument("--top", type=int, default=4, help="functions per window")
    args = parser.parse_args()
    built = kernel.build(
        kernel.BuildRequest(kernel=args.kernel, series=args.series), Progress.quiet()
    )
    assert built.system_map is not None, f"{built.label}: no System.map"
    symbols = Symbols(Path(built.system_map))
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    machine = VM(built, image.build_image(), MachineSpec(smp=args.smp))
    sampler = threading.Thread(target=sample, args=(machine, stop, samples), daemon=True)
    sampler.start()
    try:
        with machine:
            stop.set()
            sampler.join(timeout=10)
            ready = machine.boot_seconds
    finally:
        stop.set()
    if not samples:
        print("no samples: QEMU's QMP socket never answered", file=sys.stderr)
        return 1
    print(
        f"{built.label} {built.series}, {args.smp} vCPU(s): {len(samples)} samples, "
        f"SSH ready after {ready:.2f}s (slowed by the sampling)"
    )
    windows: dict[int, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for seconds, _, rip in samples:
        name = symbols.name(rip)
        windows[int(seconds / args.window)][name] += 1
        overall[name] += 1
    for index in sorted(windows):
        top = windows[index].most_common(args.top)
        print(f"{index * args.window:5.1f}s  " + ", ".join(f"{n} {c}" for n, c in top))
    print("whole boot:")
    for name, count in overall.most_common(15):
        print(f"  {100 * count / len(samples):5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
