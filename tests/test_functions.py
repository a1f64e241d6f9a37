"""harness.probing.functions: function entries of a static program, the instructions of a
function, the choice of hot functions, and the real-programs data file."""

import itertools
import subprocess
import textwrap

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from harness.errors import HarnessError
from harness.paths import REPO_ROOT
from harness.probing.functions import (
    FunctionEntry,
    function_entries,
    hot_functions,
    instructions_of,
    load_programs,
)

SOURCE = r"""
__attribute__((noinline)) long twice(long x) { return x * 2 + 1; }
__attribute__((noinline)) long sum(long *a, long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += twice(a[i]);
    return s;
}
int main(int argc, char **argv) { long a[3] = {argc, 2, 3}; return (int)sum(a, 3) & 1; }
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    directory = tmp_path_factory.mktemp("functions")
    (directory / "p.c").write_text(SOURCE)
    binary = directory / "p"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(binary), str(directory / "p.c")], check=True)
    return binary


def test_entries_have_names_offsets_sizes_and_first_instruction(program):
    entries = {e.name: e for e in function_entries(program) if e.name}
    assert {"main", "sum", "twice"} <= set(entries)
    twice = entries["twice"]
    image = program.read_bytes()
    # the file offset holds the function's first instruction, as decoded independently
    first = next(Cs(CS_ARCH_X86, CS_MODE_64).disasm(image[twice.offset : twice.offset + 15], 0))
    assert twice.insn_bytes == bytes(first.bytes)
    assert twice.insn == f"{first.mnemonic} {first.op_str}".strip()
    assert twice.size > 0 and twice.probe_name == f"f_{twice.address:x}"


def test_stripped_program_keeps_its_functions_through_the_unwind_table(program, tmp_path):
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-o", str(stripped), str(program)], check=True)
    named = {e.address for e in function_entries(program)}
    unnamed = function_entries(stripped)
    assert unnamed and all(e.name == "" for e in unnamed)
    by_address = {e.address: e for e in function_entries(program) if e.name == "sum"}
    (sum_address,) = by_address
    assert sum_address in {e.address for e in unnamed} and {e.address for e in unnamed} <= named


def test_entries_are_kept_by_the_file_s_identity(program, tmp_path, monkeypatch):
    """A second call reads the cache (the same entries); a file changed in place is parsed
    again, not answered from the cache."""
    monkeypatch.setenv("UPROBE_HARNESS_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "p"
    copy.write_bytes(program.read_bytes())
    first = function_entries(copy)
    assert len(list((tmp_path / "cache" / "functions").glob("*.json"))) == 1
    assert function_entries(copy) == first
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-o", str(stripped), str(copy)], check=True)
    copy.write_bytes(stripped.read_bytes())  # the same path, other contents
    again = function_entries(copy)
    assert again != first and all(e.name == "" for e in again)


def test_instructions_of_cover_the_function_exactly(program):
    entries = {e.name: e for e in function_entries(program) if e.name}
    function = entries["sum"]
    sites = instructions_of(program, function)
    assert sites[0].address == function.address and sites[0].insn == function.insn
    assert sum(len(s.insn_bytes) for s in sites) == function.size
    for before, after in itertools.pairwise(sites):
        assert after.address == before.address + len(before.insn_bytes)
        assert after.offset - before.offset == after.address - before.address
    assert sites[1].name == f"sum+{sites[1].address - function.address:#x}"
    assert any(s.insn.startswith("call") for s in sites), "sum calls twice"
    assert instructions_of(program, FunctionEntry(1, 1, "", "", b"", 0)) == []


def test_hot_functions_are_the_most_entered_within_the_bound():
    def entry(address, size=10):
        return FunctionEntry(address, address, "", "nop", b"\x90", size)

    entries = [entry(1), entry(2), entry(3), entry(4, size=0), entry(5), entry(6)]
    calls = {"f_1": 50, "f_2": 5000, "f_3": 70, "f_4": 900, "f_5": 70, "f_6": 0}
    chosen = hot_functions(entries, calls, 2, calls_max=2000)
    # f_2 is over the bound, f_4 has no known size, f_6 never ran; 70 = 70: lower address
    assert [e.address for e in chosen] == [3, 5]
    assert [e.address for e in hot_functions(entries, calls, 5, 2000)] == [3, 5, 1]
    entries[0] = entry(1, size=40)  # f_1 large enough, the others too small
    assert [e.address for e in hot_functions(entries, calls, 5, 2000, bytes_min=20)] == [1]


def test_shipped_programs_load_and_name_debian_packages():
    programs = load_programs(REPO_ROOT / "testcases" / "real_programs.toml")
    assert {p.name for p in programs} >= {"busybox", "bash"}
    assert all(p.commands and p.idle and p.package for p in programs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[program]]\nname = 'x'\n", "missing key"),
        (
            "[[program]]\nname='x'\npackage='p'\npath='/p'\nsetup=''\nidle=[]\n"
            "commands=[]\ncolour='red'\n",
            "unknown key 'colour'",
        ),
        (
            textwrap.dedent(
                """
                [[program]]
                name='x'
                package='p'
                path='/p'
                setup=''
                idle=[]
                commands=[]
                [[program]]
                name='x'
                package='q'
                path='/q'
                setup=''
                idle=[]
                commands=[]
                """
            ),
            "two programs are named 'x'",
        ),
    ],
)
def test_bad_program_files_are_named_errors(tmp_path, text, message):
    path = tmp_path / "programs.toml"
    path.write_text(text)
    with pytest.raises(HarnessError) as error:
        load_programs(path)
    assert str(path) in str(error.value) and message in str(error.value)
