import subprocess

import pytest

from harness.errors import HarnessError
from harness.paths import REPO_ROOT
from harness.probing import insn


@pytest.fixture(scope="module")
def program():
    cases = [
        insn.Case("load", "mov scratch+0x20(%rip), %rax"),
        insn.Case("push", "push %rbp"),
        insn.Case("fmul", "fmul %st(1), %st"),
        insn.Case("div", "divq d_{id}(%rip)", data="d_{id}: .quad 0x10001", gprs=(("rdx", 0),)),
    ]
    return insn.build_program(cases, "unit")


def run(program, *args):
    return subprocess.run(
        [str(program.binary), *args], capture_output=True, text=True, check=True
    ).stdout


def test_program_is_deterministic(program):
    first, second = run(program), run(program)
    assert first == second
    assert set(insn.parse_output(first)) == {"load", "push", "fmul", "div"}


def test_state_reflects_the_instruction(program):
    states = insn.parse_output(run(program))
    gpr = bytes.fromhex(states["load"].fields["gpr"])
    mem = bytes.fromhex(states["load"].fields["mem"])
    assert gpr[0:8] == mem[0x20:0x28], "rax must hold the loaded scratch bytes"
    push_gpr = bytes.fromhex(states["push"].fields["gpr"])
    stack_in = int.from_bytes(
        bytes.fromhex(states["load"].fields["gpr"])[8 * 17 : 8 * 18], "little"
    )
    stack_out = int.from_bytes(push_gpr[8 * 17 : 8 * 18], "little")
    assert stack_in - stack_out == 8


def test_diff_names_registers_flags_and_bytes(program):
    states = insn.parse_output(run(program))
    expected = states["load"]
    gpr = bytearray(bytes.fromhex(expected.fields["gpr"]))
    gpr[8 * 5] ^= 1  # rdi
    mem = bytearray(bytes.fromhex(expected.fields["mem"]))
    mem[7] ^= 0xFF
    fx = bytearray(bytes.fromhex(expected.fields["fx"]))
    fx[24] ^= 0x40  # mxcsr
    changed = insn.CaseState(
        "load", dict(expected.fields, gpr=gpr.hex(), mem=mem.hex(), fx=fx.hex())
    )
    differences = insn.diff_states(expected, changed)
    assert any(d.startswith("rdi:") for d in differences)
    assert any(d.startswith("mxcsr:") for d in differences)
    assert any(d.startswith("mem[7..7]") for d in differences)
    assert insn.diff_states(expected, expected) == []


def test_fx_pointer_bytes_are_separate(program):
    expected = insn.parse_output(run(program))["fmul"]
    fx = bytearray(bytes.fromhex(expected.fields["fx"]))
    fx[8] ^= 0x10  # FIP
    moved = insn.CaseState("fmul", dict(expected.fields, fx=fx.hex()))
    assert insn.diff_states(expected, moved) == []
    assert insn.fx_pointer_differs(expected, moved)


def test_twice_runs_each_case_again_from_the_same_start(program):
    states = insn.parse_output(run(program, "--twice"))
    assert set(states) == {"load", "load@2", "push", "push@2", "fmul", "fmul@2", "div", "div@2"}
    for name in ("load", "push", "fmul", "div"):
        assert insn.diff_states(states[name], states[name + "@2"]) == []


def test_a_difference_in_the_second_execution_is_reported():
    from harness.probing.transparency import _classify

    same = insn.CaseState(
        "x", {"gpr": "00" * 144, "fx": "00" * 512, "mem": "", "stk": "", "memh": "0", "sig": "0"}
    )
    gpr = bytearray(144)
    gpr[0] = 1
    other = insn.CaseState("x", dict(same.fields, gpr=gpr.hex()))
    first_only = _classify("x", [(same, same), (same, same)], None, 2, 0, 0)
    assert first_only.outcome == "identical"
    second = _classify("x", [(same, same), (same, other)], None, 2, 0, 0)
    assert second.outcome == "differs" and second.detail.startswith("execution 2")
    assert _classify("x", [(same, same), (same, None)], None, 1, 0, 0).outcome == "signal"
    assert _classify("x", [(same, same), (same, same)], None, 1, 0, 0).outcome == "hits"


def test_selected_cases_only(program):
    assert list(insn.parse_output(run(program, "div"))) == ["div"]


@pytest.mark.parametrize("family", ["fp", "riprel"])
def test_shipped_case_files_assemble(family):
    cases = insn.load_cases(REPO_ROOT / "testcases" / "cases" / f"{family}.toml")
    assert len(cases) >= 30
    program = insn.build_program(cases, f"unit-{family}")
    assert program.binary.exists()


@pytest.mark.parametrize(
    "entry, complaint",
    [
        (
            'name = "x"\nasm = "nop"\nprobe = "y"\n',
            r"\[\[case\]\] 2 \(name = 'x'\): unknown key 'probe'; known keys: name, asm",
        ),
        (
            'name = "x"\nasm = "nop"\ngprs = [["rax", "1"]]\n',
            r"\[\[case\]\] 2 \(name = 'x'\): gprs: item 1: item 2: expected `int`, got `str`",
        ),
        (
            'name = "x"\nasm = "nop"\nneeds = "avx"\n',
            r"\[\[case\]\] 2 \(name = 'x'\): needs: expected `array`, got `str`",
        ),
        ('name = "x"\n', r"\[\[case\]\] 2 \(name = 'x'\): missing key 'asm'"),
        (
            'name = "x"\nasm = "nop"\ngprs = [["eax", 1]]\n',
            r"\[\[case\]\] 2 \(name = 'x'\): gprs: no register eax",
        ),
    ],
)
def test_case_file_errors_name_the_file_the_case_and_the_key(tmp_path, entry, complaint):
    path = tmp_path / "bad.toml"
    path.write_text('[[case]]\nname = "ok"\nasm = "nop"\n[[case]]\n' + entry)
    with pytest.raises(HarnessError, match="bad.toml: " + complaint):
        insn.load_cases(path)


def test_console_splats_are_attributed_to_the_running_case():
    from harness.probing.transparency import crashes_by_case

    log = (
        "[    1.0] uprobe-harness: CASE load\n[    1.1] all quiet\n"
        "[    1.2] uprobe-harness: CASE push\n"
        "[    1.3] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
        "[    1.4] #PF: supervisor read access in kernel mode\n"
        "[    1.5] uprobe-harness: CASE fmul\n[    1.6] fine\n"
    )
    crashes = crashes_by_case(log)
    assert list(crashes) == ["push"] and "NULL pointer dereference" in crashes["push"]


def test_driver_writes_case_markers_only_when_asked(program):
    assert "CASE" not in run(program)  # natively: no --kmsg, nothing sent to the host's log


def test_compat_cases_make_rip_relative_operands_absolute_and_drop_64_bit_code():
    cases = [
        insn.Case("load", "mov val_{id}(%rip), %eax", data="val_{id}: .long 7"),
        insn.Case("wide", "mov %r8, %rax"),
        insn.Case("fld", "fldl val_{id}( %rip )", data="val_{id}: .double 1.5"),
    ]
    compat = insn.compat_cases(cases)
    assert [c.name for c in compat] == ["load", "fld"]
    assert compat[0].asm == "mov val_{id}, %eax" and compat[1].asm == "fldl val_{id}"


def test_a_32_bit_program_runs_as_a_compat_task_and_keeps_the_state_format():
    cases = insn.compat_cases(
        [
            insn.Case("load", "mov scratch+0x20(%rip), %eax"),
            insn.Case("push", "push %ebp"),
            insn.Case("fmul", "fmul %st(1), %st"),
        ]
    )
    program = insn.build_program(cases, "unit32", bits=32)
    assert program.bits == 32 and program.binary.read_bytes()[4] == 1  # ELFCLASS32
    first, second = run(program, "--twice"), run(program, "--twice")
    assert first == second
    states = insn.parse_output(first)
    assert set(states) == {"load", "push", "fmul", "load@2", "push@2", "fmul@2"}
    push = bytes.fromhex(states["push"].fields["gpr"])
    rbp, rsp = (int.from_bytes(push[8 * i : 8 * i + 8], "little") for i in (6, 17))
    assert rsp < 2**32 and rbp < 2**32
    # the push stored ebp's 4 bytes in the private stack window
    stack = bytes.fromhex(states["push"].fields["stk"])
    assert stack[124:128] == rbp.to_bytes(4, "little")
    with pytest.raises(HarnessError, match="bits must be 64 or 32"):
        insn.build_program(cases, "unit16", bits=16)


def test_the_driver_prints_byte_areas_as_changes_from_the_start(program):
    """Only what an instruction changed travels back from the guest; parse_output rebuilds
    the whole areas (the FP and stack starts from the `ref` line, the scratch area from its
    fill seed), and they agree with what the instruction did."""
    text = run(program)
    lines = text.splitlines()
    assert lines[0].startswith("ref fx=") and " stk=" in lines[0]
    push = next(line for line in lines if line.startswith("case push "))
    assert " mem~= " in push and " stk~=7" in push  # push: 8 bytes at offset 0x78
    assert max(len(line) for line in lines[1:]) < 1200, "areas printed whole"
    states = insn.parse_output(text)
    assert all(len(bytes.fromhex(s.fields["mem"])) == 512 for s in states.values())
    assert all(len(bytes.fromhex(s.fields["stk"])) == 256 for s in states.values())
    assert insn._apply_delta(bytes(4), "1:aabb") == b"\0\xaa\xbb\0"
    assert insn._apply_delta(bytes(2), "") == bytes(2)
