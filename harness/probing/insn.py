"""Instruction cases: generate a program that runs each instruction from a known machine
state and prints the full resulting state; parse and compare that output.

The same engine serves the hand-written FP and RIP-relative scenarios and the generated
instruction sweep. A case is data: a name, the assembly (its first instruction is probed),
optional .data lines, and initial register values.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2

from harness import data
from harness.errors import HarnessError
from harness.paths import TARGETS_DIR, TEMPLATES_DIR, cache_dir

GPR_NAMES = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rflags",
    "rip",
    "rsp",
)  # rip: only set after a signal
# Register values that stand for addresses, resolved by the driver at run time
# (tag in the top 16 bits): 0x5c5c.. = scratch + low 16 bits, 0x57a7.. = stack + signed low 16.
SCRATCH_BASE = 0x5C5C_0000_0000_0000
STACK_BASE = 0x57A7_0000_0000_0000
DEFAULT_GPRS = {
    "rax": 0x0123456789ABCDEF,
    "rbx": SCRATCH_BASE + 0x100,
    "rcx": 0x0000000000000005,
    "rdx": 0x00000000DEADBEEF,
    "rsi": SCRATCH_BASE + 0x80,
    "rdi": SCRATCH_BASE + 0x180,
    "rbp": STACK_BASE + 0x40,
    "r8": 0x8888888888888888,
    "r9": 0x9999999999999999,
    "r10": 0x1010101010101010,
    "r11": 0x1111111111111111,
    "r12": SCRATCH_BASE + 0x40,
    "r13": 0x1313131313131313,
    "r14": 0x1414141414141414,
    "r15": 0x1515151515151515,
    "rflags": 0x0000000000000202,
}
# fxsave bytes that record where the last x87 instruction ran (FOP, FIP, FDP): they
# reveal the XOL slot by design and are compared separately.
FX_POINTER_BYTES = range(6, 24)
FX_FIELDS = (
    [("fcw", 0, 2), ("fsw", 2, 4), ("ftw", 4, 5), ("mxcsr", 24, 28)]
    + [(f"st{i}", 32 + 16 * i, 42 + 16 * i) for i in range(8)]
    + [(f"xmm{i}", 160 + 16 * i, 176 + 16 * i) for i in range(16)]
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Case:
    name: str
    asm: str
    data: str = ""
    pre: str = ""  # runs before the probe point
    gprs: tuple[tuple[str, int], ...] = ()  # overrides of DEFAULT_GPRS
    needs: tuple[str, ...] = ()  # cpu features, e.g. ("avx",)
    family: str = ""

    def initial_gprs(self) -> list[int]:
        values = dict(DEFAULT_GPRS, **dict(self.gprs))
        return [values.get(name, 0) for name in GPR_NAMES]


@dataclass(frozen=True)
class Program:
    binary: Path
    cases: tuple[Case, ...]
    avx: bool
    digest: str
    bits: int = 64  # 32: a compat (i386) task


@dataclass(frozen=True)
class CaseState:
    name: str
    fields: dict[str, str] = field(default_factory=dict)  # field name -> hex


class _CaseEntry(data.Spec):
    name: str
    asm: str
    data: str = ""
    pre: str = ""
    needs: list[str] = []
    gprs: list[tuple[str, int]] = []  # [[register, value], ...]


class _CaseFile(data.Spec):
    case: list[_CaseEntry] = []


def load_cases(path: Path, family: str = "") -> list[Case]:
    """Cases from a TOML file: [[case]] name, asm, pre, data, needs, gprs = [[reg, value]]."""
    raw = data.parse(path)
    cases = []
    for number, entry in enumerate(data.convert(raw, _CaseFile, path).case):
        unknown = sorted({register for register, _ in entry.gprs} - set(GPR_NAMES))
        if unknown:
            raise data.error(
                path,
                data.entry_name(raw, f"$.case[{number}]"),
                f"gprs: no register {', '.join(unknown)}; registers: {', '.join(GPR_NAMES)}",
            )
        cases.append(
            Case(
                entry.name,
                entry.asm,
                entry.data,
                entry.pre,
                tuple(entry.gprs),
                tuple(entry.needs),
                family or Path(path).stem,
            )
        )
    return cases


@functools.lru_cache(maxsize=1)
def _cases_template() -> jinja2.Template:
    """Compiled once per process: compat_cases() renders one program per case while the
    test modules are collected (a fresh Environment each time cost ~50 ms per case)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("insn_cases.S.j2")


def _render(cases: list[Case], avx: bool, source: str, bits: int = 64) -> tuple[str, str]:
    items = []
    for index, case in enumerate(cases):
        if not _SAFE_NAME.match(case.name):
            raise HarnessError(f"instruction case name {case.name!r} has unsafe characters")
        asm = case.asm.replace("{id}", str(index)).strip()
        data = case.data.replace("{id}", str(index)).strip()
        pre = case.pre.replace("{id}", str(index)).strip()
        items.append({"id": index, "name": case.name, "asm": asm, "data": data, "pre": pre})
    assembly = _cases_template().render(
        cases=items, avx=avx, source=source, bits=bits, pointer=".long" if bits == 32 else ".quad"
    )
    rows = ",\n".join(
        "\t{" + ", ".join(f"{v:#x}ULL" for v in case.initial_gprs()) + "}" for case in cases
    )
    table = "#include <stdint.h>\nconst uint64_t case_gpr_init[][18] = {\n" + rows + "\n};\n"
    return assembly, table


BITS_FLAGS = {64: (), 32: ("-m32",)}  # 32: gcc-multilib's static i386 libc
_RIP_OPERAND = re.compile(r"\(\s*%rip\s*\)")


def compat_cases(cases: list[Case]) -> list[Case]:
    """The cases as a 32-bit (compat) task runs them. A RIP-relative operand becomes an
    absolute one: the same ModRM encoding (mod=00, rm=101), which in 32-bit mode means a
    plain disp32, so the kernel must not apply its RIP-relative fixup there. Cases whose
    assembly is not valid 32-bit code (r8-r15, xmm8-15, 64-bit-only forms) are left out."""
    converted = [
        replace(
            c,
            asm=_RIP_OPERAND.sub("", c.asm),
            pre=_RIP_OPERAND.sub("", c.pre),
            data=_RIP_OPERAND.sub("", c.data),
        )
        for c in cases
    ]
    return [c for c in converted if _assembles(c, 32)]


@functools.lru_cache(maxsize=4096)
def _assembles(case: Case, bits: int) -> bool:
    assembly, _ = _render([case], any(n in ("avx", "avx2") for n in case.needs), case.name, bits)
    result = subprocess.run(
        ["as", f"--{bits}", "-o", "/dev/null", "-"], input=assembly, capture_output=True, text=True
    )
    return result.returncode == 0


def build_program(cases: list[Case], name: str, source: str = "", bits: int = 64) -> Program:
    """Compile cases into a static non-PIE program (cached by content); bits=32 makes it a
    32-bit (compat) task."""
    if not cases:
        raise HarnessError(f"instruction program {name}: no cases")
    if bits not in BITS_FLAGS:
        raise HarnessError(f"instruction program {name}: bits must be 64 or 32, not {bits}")
    avx = any("avx" in c.needs or "avx2" in c.needs for c in cases)
    assembly, table = _render(cases, avx, source or name, bits)
    driver = (TARGETS_DIR / "insn_driver.c").read_bytes()
    digest = hashlib.sha256(
        assembly.encode() + table.encode() + driver + str(bits).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir("targets", f"insn-{name}-{digest}")
    binary = out_dir / name
    if not binary.exists():
        (out_dir / "cases.S").write_text(assembly)
        (out_dir / "cases_init.c").write_text(table)
        tmp = out_dir / f".{name}.tmp"
        cmd = [
            "gcc",
            "-static",
            "-no-pie",
            "-O1",
            *BITS_FLAGS[bits],
            "-o",
            str(tmp),
            str(TARGETS_DIR / "insn_driver.c"),
            str(out_dir / "cases_init.c"),
            str(out_dir / "cases.S"),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(
                f"instruction program {name} did not assemble "
                f"({out_dir / 'cases.S'}):\n{result.stderr[-3000:]}"
            )
        tmp.rename(binary)
    return Program(binary, tuple(cases), avx, digest, bits)


def parse_output(text: str) -> dict[str, CaseState]:
    """The driver's lines as whole states: its byte areas come as differences from where
    each case started (`tag~=OFF:HEX,...`; the FP/SIMD and stack starts on the first line,
    `ref ...`; the scratch area's as the seed `ms` of its fill pattern)."""
    states = {}
    refs: dict[str, bytes] = {}
    for line in text.splitlines():
        if line.startswith("ref "):
            refs = {
                k: bytes.fromhex(v) for k, v in (word.split("=", 1) for word in line.split()[1:])
            }
            continue
        if not line.startswith("case "):
            continue
        words = line.split()
        fields = dict(word.split("=", 1) for word in words[2:])
        for tag in ("fx", "ymm", "mem", "stk"):
            changes = fields.pop(f"{tag}~", None)
            if changes is None:
                continue
            start = _fill(SCRATCH_SHOWN, int(fields["ms"], 16)) if tag == "mem" else refs[tag]
            fields[tag] = _apply_delta(start, changes).hex()
        states[words[1]] = CaseState(words[1], fields)
    return states


SCRATCH_SHOWN = 512  # the scratch bytes a state line shows (the rest is hashed)


@functools.lru_cache(maxsize=8192)
def _fill(length: int, seed: int) -> bytes:
    """The driver's fill pattern (insn_driver.c fill())."""
    out = bytearray(length)
    for index in range(length):
        seed = (seed * 1103515245 + 12345) & 0xFFFFFFFF
        out[index] = (seed >> 16) & 0xFF
    return bytes(out)


def _apply_delta(start: bytes, changes: str) -> bytes:
    data = bytearray(start)
    for run in filter(None, changes.split(",")):
        offset, _, hex_bytes = run.partition(":")
        changed = bytes.fromhex(hex_bytes)
        position = int(offset, 16)
        data[position : position + len(changed)] = changed
    return bytes(data)


def diff_states(expected: CaseState, actual: CaseState) -> list[str]:
    """Name every register, flag, FP/SIMD register or byte range that differs."""
    differences: list[str] = []
    exp_gpr, act_gpr = bytes.fromhex(expected.fields["gpr"]), bytes.fromhex(actual.fields["gpr"])
    for index, name in enumerate(GPR_NAMES):
        a = int.from_bytes(exp_gpr[8 * index : 8 * index + 8], "little")
        b = int.from_bytes(act_gpr[8 * index : 8 * index + 8], "little")
        if a != b:
            differences.append(f"{name}: {a:#x} != {b:#x}")
    exp_fx, act_fx = bytes.fromhex(expected.fields["fx"]), bytes.fromhex(actual.fields["fx"])
    for name, start, end in FX_FIELDS:
        if exp_fx[start:end] != act_fx[start:end]:
            differences.append(f"{name}: {exp_fx[start:end].hex()} != {act_fx[start:end].hex()}")
    ymm = expected.fields.get("ymm", "-"), actual.fields.get("ymm", "-")
    if "-" not in ymm and ymm[0] != ymm[1]:  # "-": no AVX state (or taken at a signal)
        exp_y, act_y = bytes.fromhex(expected.fields["ymm"]), bytes.fromhex(actual.fields["ymm"])
        for i in range(16):
            if exp_y[32 * i + 16 : 32 * i + 32] != act_y[32 * i + 16 : 32 * i + 32]:
                differences.append(f"ymm{i}.high differs")
    if expected.fields.get("sig", "0") != actual.fields.get("sig", "0"):
        differences.append(
            f"signal: {_signal_text(expected.fields.get('sig', '0'))} != "
            f"{_signal_text(actual.fields.get('sig', '0'))}"
        )
    if expected.fields.get("memh") != actual.fields.get("memh"):
        differences.append("mem[512..4095] differs")
    for tag in ("mem", "stk"):
        exp_b, act_b = bytes.fromhex(expected.fields[tag]), bytes.fromhex(actual.fields[tag])
        changed = [i for i in range(len(exp_b)) if exp_b[i] != act_b[i]]
        if changed:
            differences.append(f"{tag}[{changed[0]}..{changed[-1]}] differs ({len(changed)} bytes)")
    return differences


def _signal_text(note: str) -> str:
    """'11.1.deadbeef' -> 'SIGSEGV code 1 addr 0xdeadbeef'; '0' -> 'none'."""
    import signal

    parts = note.split(".")
    if parts[0] == "0" or not parts[0].isdigit():
        return "none"
    name = (
        signal.Signals(int(parts[0])).name
        if int(parts[0]) in signal.valid_signals()
        else f"signal {parts[0]}"
    )
    addr = f" addr {int(parts[2], 16):#x}" if len(parts) > 2 and int(parts[2], 16) else ""
    return f"{name} code {parts[1] if len(parts) > 1 else '?'}{addr}"


def fx_pointer_differs(expected: CaseState, actual: CaseState) -> bool:
    exp_fx, act_fx = bytes.fromhex(expected.fields["fx"]), bytes.fromhex(actual.fields["fx"])
    return any(exp_fx[i] != act_fx[i] for i in FX_POINTER_BYTES)
