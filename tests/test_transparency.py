"""run_cases(): one multi-probe event for every case, then the cases reached but never hit
again with one event each (a refusal names its error there). The guest is faked: the
program runs on the host, the probe hits and refusals are made up per script."""

import re
import subprocess

import pytest

from harness.machine.ssh import Result
from harness.probing import insn, probes, transparency


@pytest.fixture(scope="module")
def program():
    cases = [
        insn.Case("load", "mov scratch+0x20(%rip), %rax"),
        insn.Case("push", "push %rbp"),
        insn.Case("div", "divq d_{id}(%rip)", data="d_{id}: .quad 0x10001", gprs=(("rdx", 0),)),
    ]
    return insn.build_program(cases, "transparency")


class FakeVM:
    def console_offset(self):
        return 0

    def console_since(self, offset):
        return ""


class FakeGuest:
    """Runs the program natively. In the batched script every probe hits twice except
    `never_hit`'s; in a one-event-per-probe script `refused` is refused."""

    def __init__(self, program, never_hit, refused):
        self.binary, self.vm, self.scripts = str(program.binary), FakeVM(), []
        self.never_hit, self.refused = never_hit, refused
        self.places = probes.symbol_places(
            program.binary, [f"probe_{i}" for i in range(len(program.cases))]
        )

    def run(self, cmd, timeout=None):
        if isinstance(cmd, list):  # the unprobed run
            out = subprocess.run([self.binary, *cmd[1:]], capture_output=True, text=True)
            return Result(out.returncode, out.stdout, out.stderr)
        self.scripts.append(cmd)
        native = subprocess.run([self.binary, "--twice"], capture_output=True, text=True)
        index = {offset: i for i, (_, offset) in enumerate(self.places.values())}
        probed = [index[int(o, 16)] for o in re.findall(r"/\S+:(0x[0-9a-f]+)", cmd)]
        if f"{transparency.BATCH_EVENT} " in cmd:
            counts = "".join(
                f"      2 {self.places[f'probe_{i}'][0]:#x}\n"
                for i in probed
                if i != self.never_hit
            )
            head = ""
        else:
            counts = "".join(f"      2 c{i}: (\n" for i in probed if i != self.refused)
            head = f"refused c{self.refused} enable sh: write error: Invalid argument\n"
            if set(probed) <= {self.refused}:  # nothing enabled: the script kills it
                return Result(0, f"{head}status=skipped\n===\n===\nentries: 0\n", "")
        stats = "entries: 4\noverrun: 0\n"
        text = f"{head}status=0\n{native.stdout}===\n{counts}===\n{stats}"
        return Result(0, text, "")


def test_a_case_never_hit_in_the_batch_is_asked_again_alone(program):
    guest = FakeGuest(program, never_hit=1, refused=1)
    states = {}
    verdicts = transparency.run_cases(guest, program, "/tmp/p", states)
    assert {name: v.outcome for name, v in verdicts.items()} == {
        "load": "identical",
        "push": "refused",
        "div": "identical",
    }
    assert verdicts["push"].detail == "enable: sh: write error: Invalid argument"
    batched, alone = guest.scripts
    assert batched.count(f"p:{probes.GROUP}/{transparency.BATCH_EVENT} ") == 3
    assert "--pause" not in batched and "--pause" in alone and "status=skipped" in alone
    # only the case without hits is probed in the second run
    assert re.findall(r"p:uph/(c\d+) ", alone) == ["c1"]
    assert set(states) == {"load", "push", "div"}


def test_every_case_hit_needs_no_second_run(program):
    guest = FakeGuest(program, never_hit=-1, refused=-1)
    verdicts = transparency.run_cases(guest, program, "/tmp/p")
    assert all(v.outcome == "identical" and v.hits == 2 for v in verdicts.values())
    assert len(guest.scripts) == 1


def test_address_counts_pipeline_on_a_recorded_trace(tmp_path):
    (tmp_path / "trace").write_text(
        "# tracer: nop\n#\n"
        "            p-97      [001] d....    12.345678: batch: (0x401126)\n"
        "            p-97      [001] d....    12.345679: batch: (0x401126)\n"
        "            p-97      [001] d....    12.345680: batch: (0x4011a0)\n"
        "            p-97      [001] d....    12.345681: c12: (0x401130)\n"
    )
    out = subprocess.run(
        ["sh", "-c", probes.address_counts_command("batch", str(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probes.parse_address_counts(out) == {0x401126: 2, 0x4011A0: 1}


def test_a_case_that_is_a_breakpoint_itself_is_never_in_the_batch():
    program = insn.build_program(
        [insn.Case("load", "mov scratch+0x20(%rip), %rax"), insn.Case("trap", "int3")],
        "transparency_trap",
    )
    guest = FakeGuest(program, never_hit=-1, refused=-1)
    verdicts = transparency.run_cases(guest, program, "/tmp/p")
    batched, alone = guest.scripts
    trap_offset = probes.symbol_places(program.binary, ["probe_1"])["probe_1"][1]
    assert f":{trap_offset:#x}" not in batched and f"p:uph/c1 /tmp/p:{trap_offset:#x}" in alone
    assert verdicts["trap"].outcome == "identical" and verdicts["load"].hits == 2


def test_step_seconds_are_the_intervals_between_marks():
    stderr = (
        "uph-mark start 100.00\nnoise\nuph-mark clear 100.25\n"
        "uph-mark register 103.75\nuph-mark bogus x\nuph-mark run 104.00\n"
    )
    assert transparency.step_seconds(stderr) == {"clear": 0.25, "register": 3.5, "run": 0.25}
    assert transparency.step_seconds("") == {}


def test_the_scripts_mark_each_step_in_order():
    """The mark lines of both probed-run scripts, run by a real shell, name every step."""
    probe = probes.Probe("c0", "/tmp/p", 0x1000)
    for script in (
        transparency.batched_run_script("/tmp/p", [probe], transparency.OUTPUT),
        transparency.probed_run_script("/tmp/p", [probe], transparency.OUTPUT),
    ):
        marks = "\n".join(line for line in script.splitlines() if transparency.MARK in line)
        out = subprocess.run(["sh", "-c", marks], capture_output=True, text=True, check=True)
        steps = transparency.step_seconds(out.stderr)
        assert list(steps) == ["clear", "register", "enable", "run", "report", "remove"]


def test_run_cases_adds_its_phases(program):
    from harness.phases import PhaseTimer

    class MarkingGuest(FakeGuest):
        def run(self, cmd, timeout=None):
            result = super().run(cmd, timeout)
            if isinstance(cmd, list):
                return result
            return Result(result.status, result.stdout, "uph-mark start 1.0\nuph-mark run 3.5\n")

    phases = PhaseTimer()
    transparency.run_cases(MarkingGuest(program, -1, -1), program, "/tmp/p", None, phases)
    assert list(phases.seconds) == ["unprobed", "batched.run", "batched"]
    assert phases.seconds["batched.run"] == 2.5


def test_probed_run_enables_each_probe_once_by_its_own_file():
    """No write to the group's enable file: it would try every probe, and a refused one
    would then be tried again alone to name its error (each refused attempt waits for RCU
    grace periods). A probe whose definition was refused has no enable file."""
    named = [probes.Probe(f"c{i}", "/tmp/p", 0x1000 + 16 * i) for i in range(3)]
    script = transparency.probed_run_script("/tmp/p", named, transparency.OUTPUT)
    group = f"/sys/kernel/tracing/events/{probes.GROUP}"
    assert f"echo 1 > {group}/enable" not in script  # (remove_all disables it: echo 0)
    for probe in named:
        enable = f"{group}/{probe.name}/enable"
        assert script.count(f"echo 1 > {enable}") == 1
        assert f"[ ! -e {enable} ] ||" in script
        assert f"refused {probe.name} enable" in script
    assert "record-cmd" not in script
