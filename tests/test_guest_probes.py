"""Guest.add_probes: many probes in one guest command, and a refusal that still names its
probe (a fake SSH stands for the guest's tracefs)."""

import pytest

from harness.machine.ssh import Result
from harness.probing.guest import Guest
from harness.probing.probes import Probe, ProbeRefused


class FakeTracefs:
    """Accepts every probe definition except those at `refused` offsets."""

    def __init__(self, refused=()):
        self.refused = {f"{offset:#x}" for offset in refused}
        self.commands: list[str] = []

    def run(self, cmd, timeout=0, check=False):
        self.commands.append(cmd)
        if (
            "uprobe_events" in cmd
            and ">> " in cmd
            and any(f":{offset}'" in cmd for offset in self.refused)
        ):
            return Result(1, "", "sh: write error: Invalid argument")
        return Result(0, "", "")


class FakeVM:
    def __init__(self, ssh):
        self.ssh = ssh


def batch(n):
    return [Probe(f"p{k}", "/tmp/t", 0x1000 + 16 * k) for k in range(n)]


def test_many_probes_take_one_command():
    tracefs = FakeTracefs()
    Guest(FakeVM(tracefs)).add_probes(batch(48))
    assert len(tracefs.commands) == 1
    assert tracefs.commands[0].count("uprobe_events") == 48
    assert tracefs.commands[0].count("/enable") == 48


def test_a_refused_probe_in_a_batch_is_named():
    tracefs = FakeTracefs(refused=[0x1000 + 16 * 7])
    with pytest.raises(ProbeRefused) as caught:
        Guest(FakeVM(tracefs)).add_probes(batch(10))
    assert caught.value.probe.name == "p7"
    assert caught.value.step == "registration"
