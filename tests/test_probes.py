import subprocess

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


# uprobe_events and uprobe_profile as 6.1's trace_uprobe_show() and
# probes_profile_seq_show() print them: a multi-probe event "e_0" of two probes, then an
# event of its own with a reference counter and an argument
EVENTS = (
    "p:uph/e_0 /tmp/t/bash:0x0000000000401000\n"
    "p:uph/e_0 /tmp/t/bash:0x0000000000401010\n"
    "p:uph/f_4200ff /tmp/t/bash:0x00000000000000ff(0x10) arg1=%ax\n"
)
PROFILE = (
    "  /tmp/t/bash e_0                                                    3\n"
    "  /tmp/t/bash e_0                                                    0\n"
    "  /tmp/t/bash f_4200ff                                          123456\n"
)


def test_multi_probe_events_zip_into_counts_per_offset():
    definitions = probes.parse_definitions(EVENTS)
    assert definitions == [("e_0", 0x401000), ("e_0", 0x401010), ("f_4200ff", 0xFF)]
    rows = probes.parse_profile_rows(PROFILE)
    assert probes.hits_by_offset(definitions, rows) == {0x401000: 3, 0x401010: 0, 0xFF: 123456}


@pytest.mark.parametrize(
    "profile",
    [
        PROFILE.splitlines(keepends=True)[0],  # a probe missing
        "".join(reversed(PROFILE.splitlines(keepends=True))),  # another order
    ],
    ids=["missing", "order"],
)
def test_listings_that_do_not_agree_are_refused(profile):
    with pytest.raises(probes.ProbeError, match="same events in the same order"):
        probes.hits_by_offset(probes.parse_definitions(EVENTS), probes.parse_profile_rows(profile))


def test_unreadable_definition_and_duplicate_offset_are_refused():
    with pytest.raises(probes.ProbeError, match="cannot read"):
        probes.parse_definitions("p:uph/x /bin/true\n")
    twice = "p:uph/a /t:0x10\np:uph/b /t:0x10\n"
    with pytest.raises(probes.ProbeError, match="two probes at offset 0x10"):
        probes.hits_by_offset(probes.parse_definitions(twice), [("a", 1), ("b", 2)])


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


STATS = (
    "entries: {entries}\noverrun: 0\ncommit overrun: 0\nbytes: 0\n"
    "oldest event ts:  12.345678\nnow ts:  13.000001\ndropped events: {dropped}\nread events: 0\n"
)


def _fake_tracefs(tmp_path, size: str, per_cpu: list[tuple[int, int] | None]):
    root = tmp_path / "tracing"
    root.mkdir()
    for cpu, counters in enumerate(per_cpu):
        stats = root / "per_cpu" / f"cpu{cpu}" / "stats"
        stats.parent.mkdir(parents=True)
        if counters is None:
            stats.write_text("events 0\nlost 0\n")
        else:
            stats.write_text(STATS.format(entries=counters[0], dropped=counters[1]))
    for name, text in [("buffer_size_kb", size), ("trace", "OLD"), ("tracing_on", "0")]:
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "size, per_cpu, resized, emptied",
    [
        # (a trailing blank tells the file as it was from the harness's write of 8192)
        ("8192 \n", [(0, 0), (0, 0)], False, False),  # as a reset left it: nothing to wait for
        ("8192 \n", [(0, 0), (5, 0)], False, True),  # events left on one CPU
        ("8192 \n", [(0, 0), (0, 2)], False, True),  # dropped events counted: must go
        ("1408 (expanded: 8192)\n", [(0, 0)], True, False),  # another size
        ("8192 \n", [], False, True),  # no per-CPU stats to read: emptied anyway
        ("8192 \n", [None], False, True),  # stats of another layout: emptied anyway
    ],
)
def test_reset_resizes_and_empties_the_ring_buffer_only_when_needed(
    tmp_path, size, per_cpu, resized, emptied
):
    root = _fake_tracefs(tmp_path, size, per_cpu)
    script = probes.reset_command(8192, tracefs=str(root))
    done = subprocess.run(["busybox", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ((root / "buffer_size_kb").read_text() == "8192\n") == resized
    assert ((root / "trace").read_text() == "\n") == emptied
    assert (root / "tracing_on").read_text() == "1\n"
    assert (root / "uprobe_events").read_text() == "\n"  # every definition removed
