"""testcases/targets/bpcount.c, the realcode family's ptrace oracle, on the host: with the
instructions it emulates (one stop per hit) it must count exactly what single-stepping
every hit counts, and leave the program's output as it is. Two programs: every emulated
form at a label (tests/data/bpcount_forms.S: each site runs once per call, so each count
is known beforehand), and Debian's static busybox with a breakpoint on every function
entry running a few of the realcode workloads."""

import re
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.probing.functions import function_entries
from harness.probing.targets import compile_target

DATA = Path(__file__).parent / "data"
BUSYBOX = Path("/bin/busybox")
FORMS_CALLS = 30  # bpcount_forms_main.c: 10 operand pairs, 3 rounds
SUMMARY = re.compile(r"^bpcount status=(\d+) traps=(\d+) emulated=(\d+)$", re.M)


@pytest.fixture(scope="module")
def counter() -> Path:
    return compile_target("bpcount").binary


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The forms program and {site label: address}."""
    binary = tmp_path_factory.mktemp("bpcount") / "forms"
    sources = [DATA / "bpcount_forms.S", DATA / "bpcount_forms_main.c"]
    subprocess.run(
        ["gcc", "-static", "-no-pie", "-O2", "-o", str(binary), *map(str, sources)], check=True
    )
    with open(binary, "rb") as handle:
        symbols = ELFFile(handle).get_section_by_name(".symtab")
        assert isinstance(symbols, SymbolTableSection)
        sites = {
            s.name: s["st_value"] for s in symbols.iter_symbols() if s.name.startswith("site_")
        }
    return binary, sites


def counted(counter: Path, addresses: list[int], argv: list[str], cwd: Path, emulate: bool):
    """(stdout, traps, emulated, {address: count}) of argv run under bpcount."""
    listing = cwd / "addresses"
    listing.write_text("".join(f"{a:x}\n" for a in addresses))
    env = {"PATH": "/usr/bin:/bin"} | ({} if emulate else {"BPCOUNT_STEP_ONLY": "1"})
    done = subprocess.run(
        # no address-space randomization: code whose branches depend on addresses runs the
        # same number of times in every run (as the realcode family does in the guest)
        ["setarch", "x86_64", "-R", str(counter), str(listing), "--", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = SUMMARY.search(done.stderr)
    assert summary, done.stderr[-2000:]
    assert summary.group(1) == "0", f"{argv}: wait status {summary.group(1)}"
    counts = {int(a, 16): int(n) for a, n in re.findall(r"^([0-9a-f]+) (\d+)$", done.stderr, re.M)}
    assert sum(counts.values()) == int(summary.group(2))
    return done.stdout, int(summary.group(2)), int(summary.group(3)), counts


def test_every_emulated_form_counts_and_computes_as_when_stepped(counter, forms, tmp_path):
    binary, sites = forms
    assert len(sites) >= 90, sorted(sites)
    plain = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert plain.count("\n") == FORMS_CALLS
    for emulate in (True, False):
        stdout, traps, emulated, counts = counted(
            counter, list(sites.values()), [str(binary)], tmp_path, emulate
        )
        assert stdout == plain, f"emulate={emulate}: the program computed something else"
        wrong = {
            name: counts.get(a, 0) for name, a in sites.items() if counts.get(a) != FORMS_CALLS
        }
        assert not wrong, f"emulate={emulate}: sites not counted {FORMS_CALLS} times: {wrong}"
        assert traps == FORMS_CALLS * len(sites)
        stepped = FORMS_CALLS * len([name for name in sites if name.startswith("site_step_")])
        assert emulated == (traps - stepped if emulate else 0), (emulate, traps, emulated)


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static (./run installs it)")
def test_busybox_every_function_entry_same_counts_emulated_or_stepped(counter, tmp_path):
    entries = function_entries(BUSYBOX)
    addresses = sorted({e.address for e in entries})
    lines = "".join(f"{(i * 7919) % 1000} line{i} alpha\n" for i in range(1, 121))
    (tmp_path / "in.txt").write_text(lines)
    commands = [
        ["sort", "-n", "in.txt"],
        ["sed", "-e", "s/line/L/g", "-e", "/9/d", "in.txt"],
        ["awk", "{ s += $1 } END { print s, NR }", "in.txt"],
        ["md5sum", "in.txt"],
    ]
    emulated_total = traps_total = 0
    for argv in commands:
        plain = subprocess.run(
            [str(BUSYBOX), *argv], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout  # (output does not depend on addresses)
        runs = {
            emulate: counted(counter, addresses, [str(BUSYBOX), *argv], tmp_path, emulate)
            for emulate in (True, False)
        }
        (out_e, traps_e, emulated, counts_e), (out_s, traps_s, _, counts_s) = (
            runs[True],
            runs[False],
        )
        assert out_e == out_s == plain, argv
        assert counts_e == counts_s, f"{argv}: counts differ between emulated and stepped hits"
        assert traps_e == traps_s > 0
        emulated_total += emulated
        traps_total += traps_e
    # most function entries start with an emulated form (endbr64, push, mov, jmp)
    assert emulated_total > traps_total // 3, (emulated_total, traps_total)
