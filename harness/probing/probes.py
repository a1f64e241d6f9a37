"""Uprobe definitions, ELF symbol -> file offset, tracefs control, and hit accounting."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.errors import HarnessError

TRACEFS = "/sys/kernel/tracing"
GROUP = "uph"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProbeError(HarnessError):
    pass


class ProbeRefused(ProbeError):
    """The kernel refused to register or enable the probe (e.g. an unsupported instruction)."""

    def __init__(self, probe: Probe, step: str, message: str):
        super().__init__(
            f"probe {probe.name} at {probe.path}:{probe.offset:#x}: {step} refused: {message}"
        )
        self.probe, self.step, self.message = probe, step, message


@dataclass(frozen=True)
class Probe:
    name: str  # event name inside group "uph"
    path: str  # the binary's path in the guest
    offset: int  # file offset of the probed instruction
    kind: str = "p"  # "p" (uprobe) or "r" (uretprobe)

    def definition(self) -> str:
        if not _NAME.match(self.name):
            raise ProbeError(f"invalid probe name {self.name!r}: letters, digits, _ only")
        return f"{self.kind}:{GROUP}/{self.name} {self.path}:{self.offset:#x}"


def _defined_symbols(elf: ELFFile) -> dict[str, int]:
    """{name: address} of the defined symbols (.symtab first, then .dynsym)."""
    addresses: dict[str, int] = {}
    for section_name in (".symtab", ".dynsym"):
        table = elf.get_section_by_name(section_name)
        if not isinstance(table, SymbolTableSection):
            continue
        for sym in table.iter_symbols():
            if sym.name and sym.name not in addresses and sym["st_shndx"] != "SHN_UNDEF":
                addresses[sym.name] = sym["st_value"]
    return addresses


def _file_offset(elf: ELFFile, elf_path: Path, address: int) -> int:
    """Map a virtual address to its file offset through the PT_LOAD program headers."""
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_LOAD":
            continue
        start = segment["p_vaddr"]
        if start <= address < start + segment["p_filesz"]:
            if not segment["p_flags"] & 1:
                raise ProbeError(f"{address:#x} in {elf_path} is not in an executable segment")
            return address - start + segment["p_offset"]
    raise ProbeError(f"address {address:#x} is not in any loadable segment of {elf_path}")


def _lookup(addresses: dict[str, int], symbol: str, elf_path: Path) -> int:
    if symbol not in addresses:
        raise ProbeError(f"symbol '{symbol}' not found in {elf_path}")
    return addresses[symbol]


def symbol_address(elf_path: Path, symbol: str) -> int:
    with open(elf_path, "rb") as handle:
        return _lookup(_defined_symbols(ELFFile(handle)), symbol, elf_path)


def address_to_offset(elf_path: Path, address: int) -> int:
    with open(elf_path, "rb") as handle:
        return _file_offset(ELFFile(handle), elf_path, address)


def symbol_offset(elf_path: Path, location: str) -> int:
    """'sym', 'sym+0x10' or '0xADDR' -> file offset of that instruction."""
    if location.startswith("0x"):
        return address_to_offset(elf_path, int(location, 16))
    symbol, _, plus = location.partition("+")
    address = symbol_address(elf_path, symbol) + (int(plus, 0) if plus else 0)
    return address_to_offset(elf_path, address)


def symbol_offsets(elf_path: Path, symbols: list[str]) -> dict[str, int]:
    """Many symbols at once (one ELF parse): {symbol: file offset of its address}."""
    return {symbol: offset for symbol, (_, offset) in symbol_places(elf_path, symbols).items()}


def symbol_places(elf_path: Path, symbols: list[str]) -> dict[str, tuple[int, int]]:
    """Many symbols at once: {symbol: (its address, the file offset of that address)}."""
    with open(elf_path, "rb") as handle:
        elf = ELFFile(handle)
        addresses = _defined_symbols(elf)
        places = {}
        for symbol in symbols:
            address = _lookup(addresses, symbol, elf_path)
            places[symbol] = (address, _file_offset(elf, elf_path, address))
        return places


# -- tracefs control, as shell commands run in the guest -----------------------------------------


ERR_FILE = "/tmp/uph-err"  # a guest script's last tracefs write error (2>ERR_FILE)


def say_error(words: str) -> str:
    """Shell: print 'WORDS ERROR' with the first line of ERR_FILE, by the shell's own `read`
    (a `$(cat ...)` forks and execs: ~30 ms under TCG, once per refused sweep form)."""
    return f'{{ read -r e < {ERR_FILE}; echo "{words} $e"; }}'


def add_command(probe: Probe) -> str:
    return f"echo {shlex.quote(probe.definition())} >> {TRACEFS}/uprobe_events"


def enable_path(probe: Probe) -> str:
    """The probe's tracefs enable file (a probed program may toggle its own probe)."""
    return f"{TRACEFS}/events/{GROUP}/{probe.name}/enable"


def enable_command(probe: Probe, on: bool = True) -> str:
    return f"echo {1 if on else 0} > {enable_path(probe)}"


def remove_command(probe: Probe) -> str:
    """Disable and delete one probe (quietly: it may not exist)."""
    return (
        f"{enable_command(probe, on=False)} 2>/dev/null; echo "
        f"{shlex.quote('-:' + GROUP + '/' + probe.name)} >> {TRACEFS}/uprobe_events "
        f"2>/dev/null"
    )


def remove_all_command(tracefs: str = TRACEFS) -> str:
    """Disable the whole group with one write (not one per probe: a sweep batch has 700)
    and remove every definition."""
    group = f"{tracefs}/events/{GROUP}/enable"
    return (
        f"echo 0 > {tracefs}/tracing_on; "
        f"if [ -e {group} ]; then echo 0 > {group}; fi; echo > {tracefs}/uprobe_events"
    )


# The per-CPU stats counters that a reset of the ring buffer zeroes; when every one is 0 on
# every CPU the buffer already is as a reset would leave it
RESET_COUNTERS = ("entries", "overrun", "commit overrun", "dropped events", "read events")


def reset_command(buffer_kb: int, tracefs: str = TRACEFS) -> str:
    """Remove every probe, size the ring buffer to BUFFER_KB per CPU, empty it and turn
    tracing on. Both the size write and the emptying wait for the kernel (the latter for an
    RCU grace period: ~22 and ~37 ms of a 60-ms command under TCG), so each is done only
    when needed: the size when it differs, the emptying when a counter is not 0."""
    counters = " | ".join(f'"{c}"' for c in RESET_COUNTERS)
    return (
        f"{remove_all_command(tracefs)}; "
        f"read -r kb rest < {tracefs}/buffer_size_kb; "
        f'[ "$kb" = {int(buffer_kb)} ] || echo {int(buffer_kb)} > {tracefs}/buffer_size_kb; '
        f"dirty=0; seen=0; for stats in {tracefs}/per_cpu/cpu*/stats; do "
        f'while IFS=: read -r key value; do case "$key" in {counters}) seen=$((seen + 1)); '
        f"[ $value = 0 ] || dirty=1 ;; esac; done < $stats; done 2>/dev/null; "
        # no counter read at all (another layout of the files): emptied as before
        f"[ $seen -gt 0 ] || dirty=1; "
        f"[ $dirty = 0 ] || echo > {tracefs}/trace; echo 1 > {tracefs}/tracing_on"
    )


def parse_profile_rows(text: str) -> list[tuple[str, int]]:
    """uprobe_profile lines: '  PATH  EVENT  HITS' (6.1 and 6.12 print the same columns),
    one per probe, in the kernel's order: [(event, hits)]."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-1].isdigit():
            rows.append((fields[-2], int(fields[-1])))
    return rows


def parse_profile(text: str) -> dict[str, int]:
    """{event: hits} (an event of one probe each)."""
    return dict(parse_profile_rows(text))


_DEFINITION = re.compile(r"^[pr]:[^/\s]+/(\S+) \S+:0x([0-9a-f]+)(?:\(0x[0-9a-f]+\))?(?: |$)")


def parse_definitions(text: str) -> list[tuple[str, int]]:
    """uprobe_events lines ('p:GROUP/EVENT PATH:0xOFFSET ...'), one per probe, in the kernel's
    order: [(event, file offset)]. An event may hold many probes (each appended with the
    same name); uprobe_profile lists the same probes in the same order, as both walk the
    one list of dynamic events, so the two zip into per-probe counts (`hits_by_offset`)."""
    rows = []
    for line in text.splitlines():
        match = _DEFINITION.match(line)
        if match is None:
            if line.strip():
                raise ProbeError(f"uprobe_events: cannot read {line!r}")
            continue
        rows.append((match[1], int(match[2], 16)))
    return rows


def hits_by_offset(
    definitions: list[tuple[str, int]], profile_rows: list[tuple[str, int]]
) -> dict[int, int]:
    """{file offset: hits} from parse_definitions() and parse_profile_rows() of the same
    probes (one probe per offset); ProbeError unless the two list the same events in the
    same order."""
    if [event for event, _ in definitions] != [event for event, _ in profile_rows]:
        raise ProbeError(
            f"uprobe_events ({len(definitions)} probes) and uprobe_profile "
            f"({len(profile_rows)} probes) do not list the same events in the same order"
        )
    hits: dict[int, int] = {}
    for (event, offset), (_, count) in zip(definitions, profile_rows, strict=True):
        if offset in hits:
            raise ProbeError(f"uprobe_events: two probes at offset {offset:#x} ({event})")
        hits[offset] = count
    return hits


def trace_counts_command(tracefs: str = TRACEFS) -> str:
    """Shell: the number of events per event name in the trace buffer ('  COUNT NAME: (')."""
    return f"grep -v '^#' {tracefs}/trace | grep -o ' [A-Za-z0-9_]*: (' | sort | uniq -c"


def address_counts_command(event: str, tracefs: str = TRACEFS) -> str:
    """Shell: the number of hits per address of one (multi-probe) event in the trace buffer
    ('  COUNT 0xADDR'); a uprobe's trace line names the address it hit."""
    return (
        f"grep -v '^#' {tracefs}/trace | grep -o ' {event}: (0x[0-9a-f]*)' "
        f"| grep -o '0x[0-9a-f]*' | sort | uniq -c"
    )


def parse_address_counts(text: str) -> dict[int, int]:
    """Output of address_counts_command() -> {address: hits}."""
    counts = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\d+)\s+0x([0-9a-f]+)\s*$", line)
        if match:
            counts[int(match.group(2), 16)] = int(match.group(1))
    return counts


def parse_trace_counts(text: str) -> dict[str, int]:
    """Output of trace_counts_command() -> {event name: events}."""
    counts = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\d+)\s+(\w+): \(", line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def parse_overruns(stats_text: str) -> int:
    """Sum of 'overrun' and 'dropped events' over per-CPU stats files (concatenated)."""
    total = 0
    for line in stats_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("overrun", "dropped events") and value.strip().isdigit():
            total += int(value.strip())
    return total
