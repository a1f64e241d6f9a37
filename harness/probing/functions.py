"""Function entries of real programs: where a user's `perf probe func` puts its uprobe.

Debian strips its binaries, so the symbol table is often gone; the unwind table stays
(`.eh_frame`: one FDE per function compiled with unwind tables, glibc's included). An entry
is every FDE's start and every defined STT_FUNC symbol, inside an executable segment, with
its first instruction decoded (capstone) for the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness import data


@dataclass(frozen=True)
class FunctionEntry:
    address: int  # virtual address (non-PIE static programs: as loaded)
    offset: int  # file offset: where a uprobe goes
    name: str  # the symbol, or "" (an unwind-table entry only)
    insn: str  # the first instruction, e.g. "endbr64" or "push rbp"
    insn_bytes: bytes

    @property
    def probe_name(self) -> str:
        return f"f_{self.address:x}"


def function_entries(path: Path) -> list[FunctionEntry]:
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        segments = [
            s
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1  # PF_X
        ]
        names: dict[int, str] = {}
        table = elf.get_section_by_name(".symtab")
        if isinstance(table, SymbolTableSection):
            for sym in table.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                    names.setdefault(sym["st_value"], sym.name)
        starts = set(names)
        if elf.has_dwarf_info():
            dwarf = elf.get_dwarf_info()
            if dwarf.has_EH_CFI():
                for entry in dwarf.EH_CFI_entries():
                    if isinstance(entry, FDE):
                        starts.add(entry.header["initial_location"])
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
                FunctionEntry(address, offset, names.get(address, ""), text, code[:length])
            )
        return entries


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


class _Programs(data.Spec):
    program: list[RealProgram]


def load_programs(path: Path) -> list[RealProgram]:
    programs = data.load(path, _Programs).program
    names = [p.name for p in programs]
    for name in names:
        if names.count(name) > 1:
            raise data.error(path, "", f"two programs are named {name!r}")
    return programs
