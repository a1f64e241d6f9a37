"""The sweep corpus: generated from the opcode maps, decoded with capstone, assembled by
GNU as, and decoded back from the linked program (runs natively on the host too)."""

import subprocess

import pytest

from harness.errors import HarnessError
from harness.probing import insn, transparency
from harness.sweep import corpus as sweep_corpus


@pytest.fixture(scope="module")
def corpus():
    return sweep_corpus.generate()


HOST_FLAGS = transparency.cpu_flags(open("/proc/cpuinfo").read())


def runs_here(form) -> bool:
    return all(n in HOST_FLAGS for n in form.needs)


def run_natively(forms, name: str) -> dict:
    """Link the forms, check they decode back, run the program on the host: its states."""
    program = insn.build_program([sweep_corpus.to_case(f) for f in forms], name)
    assert sweep_corpus.verify_program(program, forms) == []
    result = subprocess.run([str(program.binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    states = insn.parse_output(result.stdout)
    assert set(states) == {f.name for f in forms}
    return states


def test_corpus_is_large_and_covers_every_class(corpus):
    counts = corpus.by_class()
    assert len(corpus.forms) >= 2000
    for klass in sweep_corpus.CLASSES:
        assert counts[klass] >= 50, (klass, counts)
    assert corpus.dropped["undefined in 64-bit mode (capstone)"] > 0
    assert corpus.dropped["privileged"] > 0
    assert len({f.name for f in corpus.forms}) == len(corpus.forms)


def test_forms_with_meaningful_prefixes_and_modrm_forms(corpus):
    names = {f.name for f in corpus.forms}
    # add r/m, reg in its register, SIB and RIP-relative forms, plain and with REX.W/B/X
    for name in (
        "onebyte-01d1",
        "onebyte-01540b10",
        "onebyte-0115-rip",
        "onebyte-4801d1",
        "onebyte-4101540b10",
        "onebyte-4201540b10",
        "sse-f20f58d1",
        "sse-660f58d1",
    ):
        assert name in names, name
    texts = {f.text for f in corpus.forms}
    assert "hlt" not in texts and not any(t.startswith("rdtsc") for t in texts)


def test_prefix_combinations_where_they_mean_something(corpus):
    by_name = {f.name: f for f in corpus.forms}
    # REX W+B and R+B in register, SIB and RIP-relative form; fs/gs on RIP-relative operands;
    # two legacy prefixes; the address-size prefix
    for name in (
        "prefixed-4901d1",
        "prefixed-4501540b10",
        "prefixed-4c0115-rip",
        "prefixed-640115-rip",
        "prefixed-650115-rip",
        "prefixed-66f20f5815-rip",
        "prefixed-670115-rip",
        "prefixed-f0480115-rip",
    ):
        assert name in by_name, name
    assert by_name["prefixed-640115-rip"].text == "add dword ptr fs:[rip], edx"
    # a segment, address-size or lock prefix means nothing on a register form: not generated
    assert not any(
        f.name.startswith(("prefixed-64", "prefixed-f0", "prefixed-67"))
        and f.name.endswith(("d1", "d1-rip"))
        and not f.rip
        and f.head[-1:] == b"\xd1"
        for f in corpus.forms
    )
    # REX.X only with the SIB form
    assert all(f.name.endswith("0b10") for f in corpus.forms if f.name.startswith("prefixed-4a"))


def test_operand_size_prefixed_rip_relative_forms_are_kept(corpus):
    """capstone reports a 2-byte displacement behind 66 (without REX.W); the form is still a
    RIP-relative one with 4 bytes of displacement: movdqa xmm2, [rip+x] and add [rip+x], dx."""
    names = {f.name for f in corpus.forms}
    assert {"sse-660f6f15-rip", "onebyte-660115-rip", "prefixed-66f20f5815-rip"} <= names


def test_mmx_register_behind_rex_b_is_dropped_and_its_neighbours_kept(corpus):
    """QEMU 7.2 reads past the MMX registers for an MMX r/m register behind REX.B (the CPU
    ignores the bit): no verdict there. REX.B on a memory operand (r11 as the base) or an
    MMX register without REX.B stays."""
    forms = {f.head.hex(): f for f in corpus.forms if f.klass == "prefixed"}
    assert "4d0fc5d1" not in forms  # pextrw r10d, mm1, 0x11 (REX.WRB)
    assert "4c0fc5d1" in forms  # the same without REX.B
    assert "4d0f2c540b10" in forms  # cvttps2pi mm2, [r11 + rcx + 0x10]
    reason = "MMX register with REX.B (the emulator reads past the MMX registers)"
    assert corpus.dropped[reason] > 100


def test_cpu_flags_filter_avx(corpus):
    without_avx = sweep_corpus.generate({"sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2"})
    assert without_avx.by_class()["avx"] == 0
    assert without_avx.dropped["not supported by the guest CPU"] > 0


def test_branch_forms_get_landing_pads():
    corpus = sweep_corpus.generate()
    by_name = {f.name: f for f in corpus.forms}
    jz = sweep_corpus.to_case(by_name["branch-74"])
    assert ".byte .Ltaken_{id} - (. + 1)" in jz.asm and "not %r15" in jz.asm
    ret = sweep_corpus.to_case(by_name["branch-c3"])
    assert ret.pre == "pushq $.Ltaken_{id}"
    call_reg = sweep_corpus.to_case(by_name["branch-41ffd1"])  # call *%r9
    assert call_reg.pre == "lea .Ltaken_{id}(%rip), %r9"


def test_linked_program_decodes_back_and_runs_natively(corpus, tmp_path):
    """A sample of every class, linked and verified, then run on the host: every case
    prints its state, signals included (the driver recovers from them)."""
    sample = []
    for klass in sweep_corpus.CLASSES:
        if klass != sweep_corpus.COMPAT:  # a 32-bit program of its own (below)
            sample += [f for f in corpus.forms if f.klass == klass][::40]
    states = run_natively([f for f in sample if runs_here(f)], "sweep-sample")
    signals = {s.fields["sig"].split(".")[0] for s in states.values()}
    assert "0" in signals and "11" in signals  # runs and faults both recorded


def test_verify_program_notices_a_wrong_encoding(corpus):
    form = next(f for f in corpus.forms if f.name == "onebyte-01d1")
    program = insn.build_program([sweep_corpus.to_case(form)], "sweep-one")
    liar = sweep_corpus.Form(
        form.name, form.klass, bytes.fromhex("4801d1"), False, b"", "add rcx, rdx"
    )
    problems = sweep_corpus.verify_program(program, [liar])
    assert problems and "expected 3" in problems[0]


def test_filter_by_class_and_regex(corpus):
    x87 = sweep_corpus.select(corpus, ["x87"])
    assert x87 and all(f.klass == "x87" for f in x87)
    fadd = sweep_corpus.select(corpus, [r"^fadd "])
    assert fadd and all(f.text.startswith("fadd ") for f in fadd)


def test_a_bad_filter_is_a_clear_error(corpus):
    with pytest.raises(HarnessError, match="not a valid regular expression"):
        sweep_corpus.select(corpus, ["add ("])


def test_hex_bytes_of_a_long_form_hold_no_disassembly(corpus):
    long_form = max(corpus.forms, key=lambda f: len(f.hex_bytes()))
    assert len(long_form.hex_bytes()) >= 32
    assert long_form.text not in long_form.hex_bytes()
    assert long_form.display().startswith(long_form.hex_bytes() + " ")


def test_compat_forms_are_32_bit_code_with_absolute_operands(corpus):
    compat = [f for f in corpus.forms if f.klass == sweep_corpus.COMPAT]
    assert len(compat) > 2500 and all(f.bits == 32 for f in compat)
    assert all(f.bits == 64 for f in corpus.forms if f.klass != sweep_corpus.COMPAT)
    by_name = {f.name: f for f in compat}
    # opcodes 64-bit mode lacks, and 40-4f as inc/dec rather than REX
    assert {"compat-27", "compat-60", "compat-61", "compat-40", "compat-d5"} <= set(by_name)
    assert by_name["compat-d5"].text == "aad 0x11"
    assert by_name["compat-40"].text == "inc eax"
    absolute = by_name["compat-0315-abs"]  # add edx, dword ptr [abs32]
    case = sweep_corpus.to_case(absolute)
    assert absolute.rip and ".long scratch+0x100" in case.asm and "(." not in case.asm
    jz = sweep_corpus.to_case(by_name["compat-74"])
    assert "not %ebp" in jz.asm and jz.family == sweep_corpus.COMPAT
    assert sweep_corpus.to_case(by_name["compat-c3"]).pre == "pushl $.Ltaken_{id}"
    assert sweep_corpus.to_case(by_name["compat-ffd1"]).pre == "mov $.Ltaken_{id}, %ecx"


def test_compat_program_is_a_32_bit_task_that_decodes_back_and_runs(corpus):
    sample = [f for f in corpus.forms if f.klass == sweep_corpus.COMPAT][::25]
    program = insn.build_program(
        [sweep_corpus.to_case(f) for f in sample], "compat-sample", bits=32
    )
    assert program.binary.read_bytes()[4] == 1, "not an ELFCLASS32 binary"
    assert sweep_corpus.verify_program(program, sample) == []
    result = subprocess.run([str(program.binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    states = insn.parse_output(result.stdout)
    assert set(states) == {f.name for f in sample}
    # eight GPRs in the low halves; r8-r15 stay zero in a 32-bit task
    for state in states.values():
        gpr = bytes.fromhex(state.fields["gpr"])
        assert gpr[7 * 8 : 15 * 8] == bytes(64)
        assert all(gpr[8 * r + 4 : 8 * r + 8] == bytes(4) for r in range(7))


def test_prologue_forms_are_real_first_instructions_as_at_a_function_entry(corpus):
    prologue = {f.name: f for f in corpus.forms if f.klass == sweep_corpus.PROLOGUE}
    assert len(prologue) >= 300
    # endbr64, push r15, push rbp, sub rsp imm8, a RIP-relative load, a frame store
    for name in ("prologue-f30f1efa", "prologue-4157", "prologue-55", "prologue-4883ec"):
        assert name in prologue, name
    assert prologue["prologue-4883ec"].imm and prologue["prologue-4883ec"].text.startswith(
        "sub rsp, "
    )
    assert prologue["prologue-488b05-rip"].rip
    # one form per shape: "sub rsp, imm8" once, whatever the immediates met
    assert sum(1 for f in prologue.values() if f.head == bytes.fromhex("4883ec")) == 1
    # the stack-protector load (fs:0x28) differs between processes: dropped with its reason;
    # the same shape is kept from another TLS load (the driver runs without ASLR)
    generator = sweep_corpus._Generator(sweep_corpus._load_config(), None)
    canary = bytes.fromhex("64488b042528000000")  # mov rax, fs:[0x28]
    generator._add_real(sweep_corpus.PROLOGUE, canary, set())
    assert generator.corpus.dropped[sweep_corpus._CANARY] == 1 and not generator.corpus.forms
    assert prologue["prologue-64488b042598060000"].text == "mov rax, qword ptr fs:[0x698]"
    # a memory operand's base points at scratch + 0x800 whatever the displacement
    load = next(f for f in prologue.values() if f.text.startswith("cmp qword ptr [rsi + 8]"))
    assert dict(load.gprs)["rsi"] == insn.SCRATCH_BASE + 0x800 - 8
    assert sweep_corpus.to_case(load).pre == "lea -8(%rsp), %rsp"


def test_a_dropped_occurrence_does_not_take_its_shape():
    generator = sweep_corpus._Generator(sweep_corpus._load_config(), None)
    shapes: set = set()
    far = bytes.fromhex("488b842400800000")  # mov rax, [rsp+0x8000]: beyond the test stack
    near = bytes.fromhex("488b842400010000")  # mov rax, [rsp+0x100]: the same shape
    generator._add_real(sweep_corpus.PROLOGUE, far, shapes)
    generator._add_real(sweep_corpus.PROLOGUE, near, shapes)
    assert [f.text for f in generator.corpus.forms] == ["mov rax, qword ptr [rsp + 0x100]"]
    assert generator.corpus.dropped["displacement beyond the test stack"] == 1
    # an indirect jump through a register-based operand has no landing pad: dropped
    generator._add_real(sweep_corpus.PROLOGUE, bytes.fromhex("ff6008"), shapes)
    assert len(generator.corpus.forms) == 1


def test_every_prologue_form_links_decodes_back_and_runs_natively(corpus):
    """Aligned as at a function entry (movaps to the frame does not fault), pointed at
    valid memory: every form the host can run runs, and only loads from absolute addresses
    near 0 (abort paths) fault."""
    forms = [f for f in corpus.forms if f.klass == sweep_corpus.PROLOGUE and runs_here(f)]
    states = run_natively(forms, "prologue-all")
    faulted = {n: s.fields["sig"] for n, s in states.items() if s.fields["sig"] != "0"}
    # only the deliberate crashes of abort paths (a load from an absolute address near 0)
    by_name = {f.name: f for f in forms}
    assert faulted and all(
        sig.startswith("11.") and "ptr [0" in by_name[n].text for n, sig in faulted.items()
    ), faulted


def test_a_missing_prologue_program_names_its_package(tmp_path):
    path = tmp_path / "sweep.toml"
    text = sweep_corpus.CONFIG.read_text()
    path.write_text(text.replace('path = "/bin/bash-static"', 'path = "/nonexistent/bash"'))
    with pytest.raises(
        HarnessError,
        match="/nonexistent/bash does not exist; install the Debian package bash-static",
    ):
        sweep_corpus.generate(config_path=path)


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        (
            'prefixes = ["", "66", "f3"]',
            'prefixes = ["", "66", "f3"]\nbytes = []',
            r"\[compat\]: unknown key 'bytes'; known keys: onebyte_skip, prefixes",
        ),
        ("reg_field = 2", 'reg_field = "rdx"', r"\[modrm\]: reg_field: expected `int`, got `str`"),
        (
            '"0f38" = ["00-ff"]',
            '"0f38" = ["00-ff", 3]',
            r"\[avx.maps\]: 0f38: item 2: expected `str`, got `int`",
        ),
        ('"0f38" = ["00-ff"]', '"0f38" = ["00-fg"]', r"\[avx.maps\]: 0f38: item 1: '00-fg' is not"),
        ('x87 = ["", "48"]', 'x87 = ["", "4"]', r"\[prefixes\]: x87: item 2: '4' is not hex bytes"),
        ("r9 = ", "x9 = ", r"\[gprs\]: no register x9"),
        ("[cpu]", "[cpus]", r"top level: unknown key 'cpus'; known keys: maps, prefixes"),
    ],
)
def test_config_errors_name_the_file_the_section_and_the_key(tmp_path, old, new, complaint):
    path = tmp_path / "sweep.toml"
    text = sweep_corpus.CONFIG.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(HarnessError, match="sweep.toml: " + complaint):
        sweep_corpus.generate(config_path=path)
