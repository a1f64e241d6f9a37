"""A booted guest as the scenarios see it: run commands, upload targets once, manage
uprobes through tracefs, mark test windows in the kernel log, run the VM self-check."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.machine.ssh import Result
from harness.probing import probes
from harness.probing.probes import TRACEFS, Probe, ProbeRefused
from harness.probing.targets import Target, compile_target


@dataclass(frozen=True)
class SelfCheck:
    vcpus_requested: int
    vcpus_seen: int
    xmc_runs: int
    xmc_stale: int

    @property
    def xmc_exact(self) -> bool:
        return self.xmc_stale == 0


@dataclass(frozen=True)
class Hits:
    trace: int  # events counted in the trace buffer
    profile: int  # uprobe_profile's hit counter
    overruns: int  # events lost by the ring buffer (must be 0 for trace to be exact)


class Guest:
    def __init__(self, vm):
        self.vm = vm
        self._uploaded: set[str] = set()
        self.selfcheck: SelfCheck | None = None

    @property
    def record(self):
        return self.vm.record

    def run(self, cmd: str | list[str], timeout: float = 120, check: bool = False) -> Result:
        return self.vm.ssh.run(cmd, timeout=timeout, check=check)

    def upload(self, target: Target) -> str:
        if target.guest_path not in self._uploaded:
            directory = str(Path(target.guest_path).parent)
            self.run(["mkdir", "-p", directory], check=True)
            self.vm.ssh.put(target.binary, target.guest_path, mode=0o755)
            self._uploaded.add(target.guest_path)
        return target.guest_path

    # -- kernel log windows ---------------------------------------------------------------------
    def kmsg_marker(self, text: str, wait_s: float = 0.0) -> bool:
        """Print `uprobe-harness: TEXT` through the guest's kernel log: it lands in the console
        after every line the kernel printed before it (a barrier). With wait_s, wait up to
        that long for the line to reach the host's console; whether it did."""
        start = self.vm.console_offset()
        line = "uprobe-harness: " + text
        # <4> so the line reaches the console at loglevel 5 and lands between splats in order
        self.run(f"echo {shlex.quote('<4>' + line)} > /dev/kmsg", timeout=30)
        deadline = time.monotonic() + wait_s
        while line not in self.vm.console_since(start):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- self-check -------------------------------------------------------------------------------
    def run_selfcheck(self, iterations: int = 20000) -> SelfCheck:
        record = self.vm.record
        if record.vcpus_seen < 2:
            check = SelfCheck(record.vcpus_requested, record.vcpus_seen, 0, 0)
        else:
            canary = self.upload(compile_target("xmc_canary"))
            result = self.run(
                [canary, str(record.vcpus_seen), str(iterations)], timeout=300, check=True
            )
            fields = dict(word.split("=") for word in result.stdout.split())
            check = SelfCheck(
                record.vcpus_requested, record.vcpus_seen, int(fields["runs"]), int(fields["stale"])
            )
        self.selfcheck = check
        return check

    # -- uprobes ----------------------------------------------------------------------------------
    def reset_tracing(self, buffer_kb: int = 8192) -> None:
        self.run(probes.reset_command(buffer_kb), check=True)

    def add_probe(self, probe: Probe) -> None:
        result = self.run(probes.add_command(probe))
        if not result.ok:
            raise ProbeRefused(probe, "registration", result.stderr.strip())
        result = self.run(probes.enable_command(probe))
        if not result.ok:
            self.run(probes.remove_command(probe))
            raise ProbeRefused(probe, "enabling", result.stderr.strip())

    def add_probes(self, batch: list[Probe]) -> None:
        """Register and enable many probes in one guest command (one SSH round trip instead
        of two per probe). If any is refused, they are added one by one again, so the refusal
        names its probe."""
        if not batch:
            return
        script = " && ".join(
            f"{probes.add_command(p)} && {probes.enable_command(p)}" for p in batch
        )
        if self.run(script, timeout=300).ok:
            return
        # the ones that made it are removed (one command), then added one by one
        self.run("; ".join(probes.remove_command(probe) for probe in batch), timeout=300)
        for probe in batch:
            self.add_probe(probe)

    def clear_trace(self) -> None:
        """Empty the trace buffer (the probes stay)."""
        self.run(f"echo > {TRACEFS}/trace", timeout=60, check=True)

    def remove_probes(self) -> None:
        self.run(probes.remove_all_command(), timeout=60)

    def hits(self, names: list[str]) -> dict[str, Hits]:
        script = (
            f"cat {TRACEFS}/uprobe_profile; echo ===; "
            f"cat {TRACEFS}/per_cpu/cpu*/stats; echo ===; "
            f"{probes.trace_counts_command()}"
        )
        result = self.run(script, timeout=300, check=True)
        profile_text, stats_text, counts_text = result.stdout.split("===\n")
        profile = probes.parse_profile(profile_text)
        overruns = probes.parse_overruns(stats_text)
        trace_counts = probes.parse_trace_counts(counts_text)
        return {
            name: Hits(trace_counts.get(name, 0), profile.get(name, 0), overruns) for name in names
        }

    def ensure_alive(self) -> None:
        if not self.vm.alive():
            raise InfraError("the guest is gone")
