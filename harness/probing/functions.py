"""Function entries of real programs: where a user's `perf probe func` puts its uprobe.

Debian strips its binaries, so the symbol table is often gone; the unwind table stays
(`.eh_frame`: one FDE per function compiled with unwind tables, glibc's included). An entry
is every FDE's start and every defined STT_FUNC symbol, inside an executable segment, with
its first instruction decoded (capstone) for the report. `instructions_of` decodes a whole
function (the FDE's range, or the symbol's size) for probing every instruction of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness import data
from harness.paths import cache_dir


@dataclass(frozen=True)
class FunctionEntry:
    address: int  # virtual address (non-PIE static programs: as loaded)
    offset: int  # file offset: where a uprobe goes
    name: str  # the symbol, or "" (an unwind-table entry only)
    insn: str  # the first instruction, e.g. "endbr64" or "push rbp"
    insn_bytes: bytes
    size: int = 0  # bytes the function spans (unwind table, else symbol size); 0: unknown

    @property
    def probe_name(self) -> str:
        return f"f_{self.address:x}"

    @property
    def label(self) -> str:
        return self.name or hex(self.address)


def function_entries(path: Path) -> list[FunctionEntry]:
    """Every function entry of the ELF file at `path`, kept in the cache by the file's
    identity (path, inode, size, mtime) and this module's code: parsing the unwind tables
    of the sweep's prologue programs takes ~2.6 s, every sweep."""
    stat = os.stat(path)
    key = hashlib.sha256(
        f"{Path(path).resolve()}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()
        + Path(__file__).read_bytes()
    ).hexdigest()
    stored = cache_dir("functions") / f"{key[:32]}.json"
    if stored.is_file():
        try:
            return [
                FunctionEntry(**{**e, "insn_bytes": bytes.fromhex(e["insn_bytes"])})
                for e in json.loads(stored.read_text())
            ]
        except (ValueError, TypeError, KeyError):
            pass  # unreadable: parsed again and written anew
    entries = _parse_function_entries(path)
    staging = stored.with_name(f"{stored.name}.{os.getpid()}")
    staging.write_text(
        json.dumps([{**asdict(e), "insn_bytes": e.insn_bytes.hex()} for e in entries])
    )
    staging.replace(stored)
    return entries


def _parse_function_entries(path: Path) -> list[FunctionEntry]:
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        segments = [
            s
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1  # PF_X
        ]
        names: dict[int, str] = {}
        sizes: dict[int, int] = {}
        table = elf.get_section_by_name(".symtab")
        if isinstance(table, SymbolTableSection):
            for sym in table.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                    names.setdefault(sym["st_value"], sym.name)
                    if sym["st_size"]:
                        sizes.setdefault(sym["st_value"], sym["st_size"])
        starts = set(names)
        if elf.has_dwarf_info():
            dwarf = elf.get_dwarf_info()
            if dwarf.has_EH_CFI():
                for entry in dwarf.EH_CFI_entries():
                    if isinstance(entry, FDE):
                        start = entry.header["initial_location"]
                        starts.add(start)
                        sizes[start] = entry.header["address_range"]
        decoder = Cs(CS_ARCH_X86, CS_MODE_64)
        images = {id(s): s.data() for s in segments}
        entries = []
        for address in sorted(starts):
            segment = next(
                (s for s in segments if s["p_vaddr"] <= address < s["p_vaddr"] + s["p_filesz"]),
                None,
            )
            if segment is None:
                continue
            offset = address - segment["p_vaddr"] + segment["p_offset"]
            start = offset - segment["p_offset"]
            code = images[id(segment)][start : start + 15]
            insn = next(decoder.disasm(code, address, 1), None)
            text = f"{insn.mnemonic} {insn.op_str}".strip() if insn else "(undecodable)"
            length = insn.size if insn else 1
            entries.append(
                FunctionEntry(
                    address,
                    offset,
                    names.get(address, ""),
                    text,
                    code[:length],
                    sizes.get(address, 0),
                )
            )
        return entries


def instructions_of(path: Path, function: FunctionEntry) -> list[FunctionEntry]:
    """Every instruction of the function, decoded linearly over its range (capstone; the
    decoding stops at the first byte it cannot decode), as sites named `label+offset`."""
    if function.size <= 0:
        return []
    with open(path, "rb") as handle:
        handle.seek(function.offset)
        code = handle.read(function.size)
    decoder = Cs(CS_ARCH_X86, CS_MODE_64)
    sites = []
    for insn in decoder.disasm(code, function.address):
        delta = insn.address - function.address
        sites.append(
            FunctionEntry(
                insn.address,
                function.offset + delta,
                f"{function.label}+{delta:#x}",
                f"{insn.mnemonic} {insn.op_str}".strip(),
                bytes(insn.bytes),
            )
        )
    return sites


def hot_functions(
    entries: list[FunctionEntry],
    calls: dict[str, int],
    count: int,
    calls_max: int,
    bytes_min: int = 1,
) -> list[FunctionEntry]:
    """The `count` functions entered most often ({probe name: times entered}), among those
    of a known size of at least `bytes_min` entered at least once and at most `calls_max`
    times; ties by address."""
    eligible = [
        e
        for e in entries
        if e.size >= max(bytes_min, 1) and 0 < calls.get(e.probe_name, 0) <= calls_max
    ]
    eligible.sort(key=lambda e: (-calls[e.probe_name], e.address))
    return eligible[:count]


# -- the programs and their workloads (testcases/real_programs.toml) --------------------------


class Command(data.Spec):
    argv: list[str]  # the applet and its arguments (the program itself is prepended)
    stdin: str = ""  # a file in the workload directory fed on stdin


class RealProgram(data.Spec):
    name: str
    package: str  # the Debian package it comes from (built by someone else)
    path: str  # on the host (the same file goes into the guest)
    setup: str  # shell commands (the guest's own busybox) creating the workload's inputs
    commands: list[Command]
    idle: list[str]  # arguments that keep the program alive doing nothing (while probes go in)
    # second mode: every instruction of the `hot_functions` functions the workload enters
    # most often, among those of at least `hot_bytes_min` bytes entered at most
    # `hot_calls_max` times (which bounds the counting run's traps, loops aside)
    hot_functions: int = 0
    hot_calls_max: int = 1000
    hot_bytes_min: int = 200


class _Programs(data.Spec):
    program: list[RealProgram]


def load_programs(path: Path) -> list[RealProgram]:
    programs = data.load(path, _Programs).program
    names = [p.name for p in programs]
    for name in names:
        if names.count(name) > 1:
            raise data.error(path, "", f"two programs are named {name!r}")
    return programs
