import pytest

from harness.probing import probes
from harness.probing.targets import compile_target


@pytest.fixture(scope="module")
def hits_binary():
    return compile_target("hits").binary


@pytest.mark.parametrize(
    "symbol, first_bytes",
    [
        ("site_push", b"\x55"),  # push %rbp
        ("site_mov", b"\x48\x89\xf8"),  # mov %rdi,%rax
        ("site_riprel", b"\x48\x8b\x05"),  # mov disp32(%rip),%rax
    ],
)
def test_symbol_offset_points_at_the_instruction(hits_binary, symbol, first_bytes):
    offset = probes.symbol_offset(hits_binary, symbol)
    data = hits_binary.read_bytes()
    assert data[offset : offset + len(first_bytes)] == first_bytes


def test_symbol_plus_offset(hits_binary):
    base = probes.symbol_offset(hits_binary, "site_push")
    assert probes.symbol_offset(hits_binary, "site_push+1") == base + 1
    assert hits_binary.read_bytes()[base + 1] == 0x5D  # pop %rbp


def test_unknown_symbol(hits_binary):
    with pytest.raises(probes.ProbeError, match="not found"):
        probes.symbol_offset(hits_binary, "no_such_symbol")


def test_data_address_is_not_executable(hits_binary):
    address = probes.symbol_address(hits_binary, "site_data")
    with pytest.raises(probes.ProbeError, match="not in an executable segment"):
        probes.address_to_offset(hits_binary, address)


def test_definition_syntax_and_name_check():
    probe = probes.Probe("hit", "/tmp/t/hits", 0x1139, "r")
    assert probe.definition() == "r:uph/hit /tmp/t/hits:0x1139"
    with pytest.raises(probes.ProbeError):
        probes.Probe("bad name", "/x", 1).definition()


def test_parse_profile_both_versions():
    text = (
        "  /tmp/targets/abc/hits hit                                          "
        "          12345\n  /tmp/t/x prof   7\n"
    )
    assert probes.parse_profile(text) == {"hit": 12345, "prof": 7}


def test_trace_counts_pipeline_on_a_recorded_trace(tmp_path):
    import subprocess

    (tmp_path / "trace").write_text(
        "# tracer: nop\n#\n# entries-in-buffer/entries-written: 3/3   #P:2\n"
        "            hits-97      [001] d....    12.345678: hit: (0x401126)\n"
        "            hits-98      [000] d....    12.345679: hit: (0x401126)\n"
        "            hits-98      [000] d....    12.345680: c12: (0x401130 <- 0x401000)\n"
    )
    out = subprocess.run(
        ["sh", "-c", probes.trace_counts_command(str(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probes.parse_trace_counts(out) == {"hit": 2, "c12": 1}


def test_parse_overruns_sums_cpus():
    stats = (
        "entries: 10\noverrun: 3\ncommit overrun: 0\ndropped events: 1\n"
        "entries: 4\noverrun: 0\ndropped events: 0\n"
    )
    assert probes.parse_overruns(stats) == 4


def test_symbol_offsets_in_one_pass_agree_with_symbol_offset(hits_binary):
    names = ["site_push", "site_mov", "site_riprel", "call_checked"]
    offsets = probes.symbol_offsets(hits_binary, names)
    assert offsets == {n: probes.symbol_offset(hits_binary, n) for n in names}
    with pytest.raises(probes.ProbeError, match="no_such_symbol"):
        probes.symbol_offsets(hits_binary, ["no_such_symbol"])
