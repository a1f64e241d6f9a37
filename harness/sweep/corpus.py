"""The instruction sweep's corpus: x86-64 instruction forms generated from the opcode maps
(harness/configs/sweep.toml), each with the prefixes that change its meaning and with
register, base+index and RIP-relative ModRM forms, decoded back with capstone; and (class
"prologue") the first instructions of real programs' functions, taken from their binaries.

Generation works on bytes: a candidate is prefixes + opcode (+ ModRM/SIB/displacement) +
filler immediate bytes; capstone says whether it is defined in 64-bit mode, how long it is
and what it is. Only then is it turned into an instruction case for the engine in
harness/probing/insn.py: `.byte` lines for GNU as, with RIP-relative displacements and branch
targets left to the assembler as expressions. After the program is linked, every form is
decoded again from the binary (`verify_program`) and must match byte for byte.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import capstone
import msgspec

from harness import data
from harness.errors import HarnessError
from harness.paths import CONFIGS_DIR
from harness.probing import insn

CONFIG = CONFIGS_DIR / "sweep.toml"
CLASSES = ("onebyte", "twobyte", "x87", "sse", "avx", "prefixed", "branch", "compat", "prologue")
COMPAT = "compat"  # the class of the forms run in a 32-bit task (Form.bits == 32)
PROLOGUE = "prologue"  # first instructions of real functions, run as at a function's entry
IMM_FILLER = 0x11
_GPR_BY_NUMBER = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)
_WORD = re.compile(r"[a-z0-9]+")
_CANARY = "reads the stack-protector canary or pointer guard (fs:0x28/0x30): random per process"
_LEGACY_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}
_SEGMENT_OVERRIDE = re.compile(r"\b[c-gs]s:(?=\[)")  # "fs:[...]": a memory operand, not a register
# opcodes the kernel handles itself rather than single-stepping (arch/x86/kernel/uprobes.c
# branch_setup_xol_ops, push_setup_xol_ops) and other control transfers: class "branch"
_BRANCH_ONEBYTE = {
    0xE8: "rel32",
    0xE9: "rel32",
    0xEB: "rel8",
    0xE0: "rel8",
    0xE1: "rel8",
    0xE2: "rel8",
    0xE3: "rel8",
    0xC3: "ret",
    0xC2: "ret",
}
_BRANCH_ONEBYTE.update({op: "rel8" for op in range(0x70, 0x80)})


@dataclass(frozen=True)
class Form:
    name: str
    klass: str
    head: bytes  # prefixes, opcode, ModRM, SIB, disp8 (no disp32, no imm)
    rip: bool  # a RIP-relative disp32 follows the head
    imm: bytes
    text: str  # capstone: "mnemonic op_str"
    branch: str = ""  # "", rel8, rel32, ret, indirect
    needs: tuple[str, ...] = ()
    gprs: tuple[tuple[str, int], ...] = ()
    prefix_len: int = 0  # legacy prefixes, REX or VEX at the start of head
    bits: int = 64  # 32: decoded and run in a 32-bit (compat) task, where `rip`
    # marks an absolute disp32 (the same ModRM encoding)

    @property
    def length(self) -> int:
        return len(self.head) + (4 if self.rip else 0) + len(self.imm)

    def encoding(self, disp: int = 0) -> bytes:
        """The bytes, with a given disp32 for RIP-relative forms."""
        return self.head + (disp.to_bytes(4, "little", signed=True) if self.rip else b"") + self.imm

    def hex_bytes(self) -> str:
        disp = " <abs32>" if self.bits == 32 else " <disp32>"
        return (
            self.head.hex(" ")
            + (disp if self.rip else "")
            + (" " + self.imm.hex(" ") if self.imm else "")
        )

    def display(self) -> str:
        return f"{self.hex_bytes():<32} {self.text}"


@dataclass
class Corpus:
    forms: list[Form]
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    candidates: int = 0

    def by_class(self) -> Counter:
        return Counter(f.klass for f in self.forms)


class _Maps(data.Spec):
    onebyte_skip: list[str]
    onebyte_groups: list[str]
    twobyte_skip: list[str]
    twobyte_groups: list[str]
    sse_twobyte: list[str]


class _Prefixes(data.Spec):
    modrm: list[str]
    no_modrm: list[str]
    sse: list[str]
    x87: list[str]
    combos: list[str]


class _Compat(data.Spec):
    onebyte_skip: list[str]
    prefixes: list[str]


class _Avx(data.Spec):
    maps: dict[str, list[str]]  # VEX map (0f, 0f38, 0f3a) -> opcode ranges


class _Modrm(data.Spec):
    reg_field: int
    rm_register: int
    mem: str


class _Exclude(data.Spec):
    privileged: list[str]
    nondeterministic: list[str]
    breaks_driver: list[str]
    operands: list[str]
    emulator_vex_l1: list[str] = []
    emulator_mmx_rex_b: bool = False


class _Program(data.Spec):
    package: str  # the Debian package that provides it (named when the file is missing)
    path: str


class _Prologue(data.Spec):
    programs: list[_Program]
    scratch_offset: int  # where a memory operand lands in the scratch area
    stack_reach: int  # the largest |displacement| from rsp kept


class SweepConfig(data.Spec):
    """harness/configs/sweep.toml, which documents each key."""

    maps: _Maps
    prefixes: _Prefixes
    compat: _Compat
    avx: _Avx
    modrm: _Modrm
    gprs: dict[str, int]  # register -> value, for memory forms
    exclude: _Exclude
    cpu: dict[str, str]  # capstone group -> /proc/cpuinfo flag
    prologue: _Prologue


_BYTE_RANGE = re.compile(r"([0-9a-fA-F]{2})(?:-([0-9a-fA-F]{2}))?")
_HEX_BYTES = re.compile(r"(?:[0-9a-fA-F]{2})*")
_VEX_MAPS = ("0f", "0f38", "0f3a")


def _load_config(path: Path = CONFIG) -> SweepConfig:
    raw = data.parse(path)
    config = data.convert(raw, SweepConfig, path)
    for section, lists in (
        ("maps", msgspec.structs.asdict(config.maps)),
        ("compat", {"onebyte_skip": config.compat.onebyte_skip}),
        ("avx.maps", config.avx.maps),
    ):
        _check_items(path, section, lists, _is_byte_range, 'a byte or a range such as "40-4f"')
    for section, lists in (
        ("prefixes", msgspec.structs.asdict(config.prefixes)),
        ("compat", {"prefixes": config.compat.prefixes}),
    ):
        _check_items(path, section, lists, _HEX_BYTES.fullmatch, 'hex bytes such as "6648"')
    if unknown := sorted(set(config.avx.maps) - set(_VEX_MAPS)):
        raise data.error(
            path,
            "[avx.maps]",
            f"no VEX map {', '.join(unknown)}; the maps are {', '.join(_VEX_MAPS)}",
        )
    modrm = config.modrm
    for key in ("reg_field", "rm_register"):
        if not 0 <= getattr(modrm, key) <= 7:
            raise data.error(path, "[modrm]", f"{key}: {getattr(modrm, key)} is not 0 to 7")
    if not modrm.mem or not _HEX_BYTES.fullmatch(modrm.mem):
        raise data.error(
            path, "[modrm]", f"mem: {modrm.mem!r} is not hex bytes (ModRM, SIB, disp8)"
        )
    if unknown := sorted(set(config.gprs) - set(insn.GPR_NAMES)):
        raise data.error(path, "[gprs]", f"no register {', '.join(unknown)}")
    return config


def _check_items(path: Path, section: str, lists: dict[str, list[str]], valid, wanted: str) -> None:
    for key, items in lists.items():
        for number, item in enumerate(items, start=1):
            if not valid(item):
                raise data.error(
                    path, f"[{section}]", f"{key}: item {number}: {item!r} is not {wanted}"
                )


def _is_byte_range(text: str) -> bool:
    found = _BYTE_RANGE.fullmatch(text)
    return found is not None and int(found[2] or found[1], 16) >= int(found[1], 16)


def _byte_set(items: list[str]) -> set[int]:
    values: set[int] = set()
    for item in items:
        low, _, high = item.partition("-")
        values.update(range(int(low, 16), int(high or low, 16) + 1))
    return values


def _vex_l(prefix: bytes) -> bool:
    """VEX.L of a VEX prefix (c5 RvvvvLpp / c4 RXBmmmmm WvvvvLpp)."""
    if prefix[:1] == b"\xc5" and len(prefix) >= 2:
        return bool(prefix[1] & 4)
    if prefix[:1] == b"\xc4" and len(prefix) >= 3:
        return bool(prefix[2] & 4)
    return False


def _prefix_bytes(text: str) -> bytes:
    return bytes.fromhex(text)


class _Decoder:
    def __init__(self, bits: int = 64):
        mode = capstone.CS_MODE_32 if bits == 32 else capstone.CS_MODE_64
        self.cs = capstone.Cs(capstone.CS_ARCH_X86, mode)
        self.cs.detail = True

    def decode(self, code: bytes):
        for decoded in self.cs.disasm(code, 0x400000, count=1):
            return decoded
        return None


class _Generator:
    def __init__(self, config: SweepConfig, cpu_flags: set[str] | None):
        self.config = config
        self.flags = cpu_flags
        self.decoder = self.decoder64 = _Decoder()
        self.decoder32 = _Decoder(32)
        self.bits = 64
        self.corpus = Corpus([])
        self.seen: set[tuple[int, bytes]] = set()
        modrm = config.modrm
        self.reg_field = modrm.reg_field
        self.rm_register = modrm.rm_register
        self.mem = bytes.fromhex(modrm.mem)
        exclude = config.exclude
        self.exclude = {m: "privileged" for m in exclude.privileged}
        self.exclude.update({m: "non-deterministic" for m in exclude.nondeterministic})
        self.exclude.update({m: "would break the test driver" for m in exclude.breaks_driver})
        self.bad_operands = set(exclude.operands)
        self.emulator_vex_l1 = set(exclude.emulator_vex_l1)
        self.emulator_mmx_rex_b = exclude.emulator_mmx_rex_b
        self.gprs = tuple(sorted(config.gprs.items()))

    def _mmx_rm_with_rex_b(self, prefix: bytes, code: bytes, modrm_at: int, operands: str) -> bool:
        """A register-direct ModRM naming an MMX register in its r/m field, behind a REX
        prefix with B set: the CPU ignores REX.B there."""
        if self.bits != 64 or not modrm_at or not prefix or not 0x41 <= prefix[-1] <= 0x4F:
            return False
        modrm = code[modrm_at]
        return (
            bool(prefix[-1] & 1) and modrm >> 6 == 3 and f"mm{modrm & 7}" in _WORD.findall(operands)
        )

    # -- candidates ---------------------------------------------------------------------
    def modrm_variants(self, reg_values) -> list[tuple[bytes, bool, str]]:
        """(ModRM[+SIB+disp8], rip?, mode) for each reg field value."""
        variants = []
        for reg in reg_values:
            variants.append((bytes([0xC0 | reg << 3 | self.rm_register]), False, "reg"))
            variants.append((bytes([self.mem[0] | reg << 3]) + self.mem[1:], False, "mem"))
            variants.append((bytes([0x05 | reg << 3]), True, "rip"))
        return variants

    def add(
        self,
        klass: str,
        prefix: bytes,
        opcode: bytes,
        tail: bytes = b"",
        rip: bool = False,
        mode: str = "",
        modrm_expected: bool | None = None,
        opcode_map: str = "",
    ) -> None:
        """Decode one candidate; keep it as a Form or count why it was dropped. opcode_map:
        the map the opcode belongs to when the class does not say it ("prefixed")."""
        head = prefix + opcode + tail
        probe = head + (b"\0\0\0\0" if rip else b"") + bytes([IMM_FILLER]) * 8
        self.corpus.candidates += 1
        decoded = self.decoder.decode(probe)
        undefined = f"undefined in {self.bits}-bit mode (capstone)"
        if decoded is None:
            self.corpus.dropped[undefined] += 1
            return
        has_modrm = decoded.modrm_offset != 0
        if modrm_expected is not None and has_modrm != modrm_expected:
            self.corpus.dropped["duplicate (ModRM not used by this opcode)"] += 1
            return
        imm_start = len(head) + (4 if rip else 0)
        if decoded.size < imm_start:
            self.corpus.dropped["prefix or ModRM not part of the insn"] += 1
            return
        # a RIP-relative displacement is 4 bytes, right after the head (capstone says 2 behind
        # a 66 prefix without REX.W: its disp_size follows the operand size)
        if rip and not (decoded.disp_offset == len(head) and decoded.size >= imm_start):
            self.corpus.dropped[undefined] += 1
            return
        imm = probe[imm_start : decoded.size]
        encoding = head + (b"\0" * 4 if rip else b"") + imm
        if (self.bits, encoding) in self.seen:
            self.corpus.dropped["duplicate encoding"] += 1
            return
        self.seen.add((self.bits, encoding))
        mnemonic = decoded.mnemonic.split()[-1]
        reason = self.exclude.get(mnemonic)
        operands = _SEGMENT_OVERRIDE.sub("", decoded.op_str)
        if reason is None and self.bad_operands & set(_WORD.findall(operands)):
            reason = "privileged"
        if (
            reason is None
            and klass == "avx"
            and _vex_l(prefix)
            and mnemonic in self.emulator_vex_l1
        ):
            reason = "crashes the emulator (QEMU TCG assertion)"
        if (
            reason is None
            and self.emulator_mmx_rex_b
            and self._mmx_rm_with_rex_b(
                prefix, probe, decoded.modrm_offset if has_modrm else 0, operands
            )
        ):
            reason = "MMX register with REX.B (the emulator reads past the MMX registers)"
        if reason:
            self.corpus.dropped[reason] += 1
            return
        needs = self._needs(decoded, klass)
        if needs is None:
            self.corpus.dropped["not supported by the guest CPU"] += 1
            return
        branch, emulated = self._branch_kind(opcode_map or klass, prefix, opcode, tail)
        if branch and 0x66 in prefix:
            self.corpus.dropped["operand-size prefix on a near branch (vendor-dependent)"] += 1
            return
        if (branch or emulated) and self.bits == 64:
            klass = "branch"
        text = f"{decoded.mnemonic} {decoded.op_str}".strip()
        suffix = ("-abs" if self.bits == 32 else "-rip") if rip else ""
        name = f"{klass}-{head.hex()}{suffix}"
        gprs = self.gprs if mode == "mem" and self.bits == 64 else ()
        self.corpus.forms.append(
            Form(name, klass, head, rip, imm, text, branch, needs, gprs, len(prefix), self.bits)
        )

    def _needs(self, decoded, klass: str) -> tuple[str, ...] | None:
        wanted = []
        for group in decoded.groups:
            flag = self.config.cpu.get(decoded.group_name(group))
            if flag:
                wanted.append(flag)
        if klass == "avx" and not wanted:
            wanted.append("avx")  # VEX without a more specific group
        if self.flags is not None and any(f not in self.flags for f in wanted):
            return None
        return tuple(sorted(set(wanted)))

    @staticmethod
    def _branch_kind(klass, prefix, opcode, tail) -> tuple[str, bool]:
        """(control transfer kind or "", emulated by the kernel without being a branch:
        push reg and the nops)."""
        op = opcode[-1]
        if klass == "onebyte" and op in _BRANCH_ONEBYTE:
            return _BRANCH_ONEBYTE[op], False
        if klass == "twobyte" and 0x80 <= op <= 0x8F:
            return "rel32", False
        if klass == "onebyte" and op == 0xFF and tail and (tail[0] >> 3 & 7) in (2, 4):
            return "indirect", False
        if klass == "onebyte" and (0x50 <= op <= 0x57 or op == 0x90):
            return "", True
        if klass == "twobyte" and op == 0x1F:
            return "", True
        return "", False

    # -- maps ---------------------------------------------------------------------------
    def onebyte(self) -> None:
        maps, prefixes = self.config.maps, self.config.prefixes
        skip = _byte_set(maps.onebyte_skip)
        groups = _byte_set(maps.onebyte_groups)
        for op in range(256):
            if op in skip:
                continue
            opcode = bytes([op])
            if self._has_modrm(opcode):
                regs = range(8) if op in groups else [self.reg_field]
                for prefix in prefixes.modrm:
                    for tail, rip, mode in self.modrm_variants(regs):
                        if prefix.endswith("42") and mode != "mem":
                            continue
                        self.add("onebyte", _prefix_bytes(prefix), opcode, tail, rip, mode, True)
            else:
                for prefix in prefixes.no_modrm:
                    self.add("onebyte", _prefix_bytes(prefix), opcode, modrm_expected=False)

    def twobyte(self) -> None:
        maps, prefixes = self.config.maps, self.config.prefixes
        skip = _byte_set(maps.twobyte_skip)
        groups = _byte_set(maps.twobyte_groups)
        sse = _byte_set(maps.sse_twobyte)
        for op in range(256):
            if op in skip:
                continue
            opcode = bytes([0x0F, op])
            klass = "sse" if op in sse else "twobyte"
            chosen = prefixes.sse if klass == "sse" else prefixes.modrm
            if self._has_modrm(opcode):
                regs = range(8) if op in groups else [self.reg_field]
                for prefix in chosen:
                    for tail, rip, mode in self.modrm_variants(regs):
                        if prefix.endswith("42") and mode != "mem":
                            continue
                        self._add_prefixed(klass, prefix, opcode, tail, rip, mode)
            else:
                for prefix in prefixes.no_modrm:
                    self.add(klass, _prefix_bytes(prefix), opcode, modrm_expected=False)
        for escape in (b"\x0f\x38", b"\x0f\x3a"):
            for op in range(256):
                for prefix in ("", "66", "f2", "f3", "6648", "f248"):
                    for tail, rip, mode in self.modrm_variants([self.reg_field]):
                        self._add_prefixed("sse", prefix, escape + bytes([op]), tail, rip, mode)

    def prefixed(self) -> None:
        """Prefix combinations (class "prefixed"): several prefixes at once on every one- and
        two-byte opcode with a ModRM; register forms only for the REX-only combinations
        (a segment, address-size or lock prefix changes nothing there but validity)."""
        maps, combos = self.config.maps, self.config.prefixes.combos
        tables = (
            ("onebyte", b"", _byte_set(maps.onebyte_skip), _byte_set(maps.onebyte_groups)),
            ("twobyte", b"\x0f", _byte_set(maps.twobyte_skip), _byte_set(maps.twobyte_groups)),
        )
        for opcode_map, escape, skip, groups in tables:
            for op in range(256):
                opcode = escape + bytes([op])
                if op in skip or not self._has_modrm(opcode):
                    continue
                regs = range(8) if op in groups else [self.reg_field]
                for combo in combos:
                    prefix = _prefix_bytes(combo)
                    rex_only = all(0x40 <= b <= 0x4F for b in prefix)
                    for tail, rip, mode in self.modrm_variants(regs):
                        if mode == "reg" and not rex_only:
                            continue
                        if prefix[-1:] == b"\x4a" and mode != "mem":
                            continue  # REX.X only means something with a SIB
                        self.add(
                            "prefixed", prefix, opcode, tail, rip, mode, True, opcode_map=opcode_map
                        )

    def compat(self) -> None:
        """Class "compat": the one- and two-byte maps decoded and run as a 32-bit task, which
        uprobes checks against tables of its own (good_insns_32) and emulates with 4-byte
        stack slots. No REX (40-4f are inc/dec there), the opcodes 64-bit mode lacks (push/
        pop of segment registers aside: their operands are excluded), and the ModRM form
        that is RIP-relative in 64-bit mode is an absolute disp32 here."""
        maps, section = self.config.maps, self.config.compat
        skip = _byte_set(section.onebyte_skip)
        groups = _byte_set(maps.onebyte_groups)
        self.decoder, self.bits = self.decoder32, 32
        try:
            tables = (
                (b"", skip, groups),
                (b"\x0f", _byte_set(maps.twobyte_skip), _byte_set(maps.twobyte_groups)),
            )
            for escape, skipped, grouped in tables:
                opcode_map = "twobyte" if escape else "onebyte"
                for op in range(256):
                    if op in skipped:
                        continue
                    opcode = escape + bytes([op])
                    if self._has_modrm(opcode):
                        regs = range(8) if op in grouped else [self.reg_field]
                        for prefix in section.prefixes:
                            for tail, rip, mode in self.modrm_variants(regs):
                                self.add(
                                    COMPAT,
                                    _prefix_bytes(prefix),
                                    opcode,
                                    tail,
                                    rip,
                                    mode,
                                    True,
                                    opcode_map=opcode_map,
                                )
                    else:
                        for prefix in section.prefixes:
                            self.add(
                                COMPAT,
                                _prefix_bytes(prefix),
                                opcode,
                                modrm_expected=False,
                                opcode_map=opcode_map,
                            )
        finally:
            self.decoder, self.bits = self.decoder64, 64

    def prologue(self) -> None:
        """Class "prologue": the distinct first instructions of every function of programs
        built by Debian (sweep.toml [prologue]), the forms compilers emit, by name. One form
        per shape (the bytes before any displacement or immediate, and the mnemonic) with
        the displacement and immediate of its first occurrence; a memory operand's base
        register points into the scratch area (rsp: the test stack), its index is 0."""
        from harness.probing.functions import function_entries

        section = self.config.prologue
        shapes: set[tuple[bytes, str]] = set()
        for program in section.programs:
            path = Path(program.path)
            if not path.is_file():
                raise HarnessError(
                    f"{CONFIG}: [prologue] {program.path} does not exist; install the Debian "
                    f"package {program.package} (the sweep's prologue class reads it)."
                )
            for entry in function_entries(path):
                self.corpus.candidates += 1
                self._add_real(PROLOGUE, entry.insn_bytes, shapes)

    def _add_real(self, klass: str, code: bytes, shapes: set[tuple[bytes, str]]) -> None:
        """One instruction taken from a real program, as a form of `klass`. Every reason to
        drop it is weighed before its shape counts as taken (another occurrence of the shape,
        with other operands, may be usable)."""
        decoded = self.decoder.decode(code)
        if decoded is None or decoded.size != len(code):
            self.corpus.dropped["undefined in 64-bit mode (capstone)"] += 1
            return
        prefix_len = 0
        while prefix_len < len(code) and (
            code[prefix_len] in _LEGACY_PREFIXES or 0x40 <= code[prefix_len] <= 0x4F
        ):
            prefix_len += 1
        prefix, rest = code[:prefix_len], code[prefix_len:]
        escape = 2 if rest[:2] in (b"\x0f\x38", b"\x0f\x3a") else 1 if rest[:1] == b"\x0f" else 0
        opcode = rest[: escape + 1]
        opcode_map = ("onebyte", "twobyte", "threebyte")[escape]
        vex = code[:1] in (b"\xc4", b"\xc5", b"\x62")
        if vex:
            prefix_len, opcode_map = 0, "avx"  # VEX/EVEX: no branch, no legacy prefix
        branch, _ = self._branch_kind(opcode_map, prefix, opcode, rest[escape + 1 :])
        gprs, rip, reason = self._real_operand(decoded)
        mnemonic = decoded.mnemonic.split()[-1]
        operands = _SEGMENT_OVERRIDE.sub("", decoded.op_str)
        if reason is None:
            reason = self.exclude.get(mnemonic)
        if reason is None and self.bad_operands & set(_WORD.findall(operands)):
            reason = "privileged"
        if reason is None and vex and _vex_l(code) and mnemonic in self.emulator_vex_l1:
            reason = "crashes the emulator (QEMU TCG assertion)"
        if reason is None and branch == "indirect" and "ptr [" in decoded.op_str and not rip:
            reason = "indirect branch through memory (no landing pad at its operand)"
        if reason is None and branch and 0x66 in prefix:
            reason = "operand-size prefix on a near branch (vendor-dependent)"
        needs = self._needs(decoded, klass)
        if reason is None and needs is None:
            reason = "not supported by the guest CPU"
        if reason:
            self.corpus.dropped[reason] += 1
            return
        cut = min([o for o in (decoded.disp_offset, decoded.imm_offset) if o] or [len(code)])
        shape = (code[:cut], decoded.mnemonic)
        if shape in shapes:
            self.corpus.dropped["duplicate shape (prologue)"] += 1
            return
        shapes.add(shape)
        if rip:
            head, imm = code[: decoded.disp_offset], code[decoded.disp_offset + 4 :]
        elif decoded.imm_offset:
            head, imm = code[: decoded.imm_offset], code[decoded.imm_offset :]
        else:
            head, imm = code, b""
        text = f"{decoded.mnemonic} {decoded.op_str}".strip()
        name = f"{klass}-{head.hex()}{'-rip' if rip else ''}"
        self.corpus.forms.append(
            Form(name, klass, head, rip, imm, text, branch, needs or (), gprs, prefix_len, 64)
        )

    def _real_operand(self, decoded):
        """(register values for its memory operand, RIP-relative?, reason to drop or None).
        The base register points at scratch + scratch_offset (a displacement too large for
        that: at the middle of the test stack); the index is 0. Without a base (an absolute
        address, an offset into the TLS block) the address is the same in both runs: the
        driver runs without ASLR."""
        section = self.config.prologue
        gprs: dict[str, int] = {}
        rip = False
        reason = None
        for operand in decoded.operands:
            if operand.type != capstone.x86.X86_OP_MEM:
                continue
            base = decoded.reg_name(operand.mem.base) if operand.mem.base else ""
            index = decoded.reg_name(operand.mem.index) if operand.mem.index else ""
            segment = decoded.reg_name(operand.mem.segment) if operand.mem.segment else ""
            disp = operand.mem.disp
            if segment == "fs" and not base and not index and disp in (0x28, 0x30):
                reason = _CANARY
            elif base == "rip":
                rip = True
            elif base == "rsp" or (base and base not in _GPR_BY_NUMBER):
                if base != "rsp":
                    reason = "a 32-bit base register (address-size prefix)"
                elif abs(disp) > section.stack_reach:
                    reason = "displacement beyond the test stack"
            elif base:
                offset = section.scratch_offset - disp
                if 0 <= offset <= 0xF00:
                    gprs[base] = insn.SCRATCH_BASE + offset
                elif abs(disp) <= section.stack_reach:
                    gprs[base] = insn.STACK_BASE + (-disp & 0xFFFF)
                else:
                    reason = "displacement beyond the scratch area and the test stack"
            if index and index == base:  # lea and nop compute no access: any value will do
                if decoded.mnemonic not in ("lea", "nop"):
                    reason = reason or "base and index are one register (no address to choose)"
            elif index in _GPR_BY_NUMBER and index != "rsp":
                gprs[index] = 0
        return tuple(sorted(gprs.items())), rip, reason

    def _add_prefixed(self, klass, prefix_text, opcode, tail, rip, mode) -> None:
        """Mandatory prefixes (66/f2/f3) must come before REX: split a combined text."""
        self.add(klass, _prefix_bytes(prefix_text), opcode, tail, rip, mode, True)

    def x87(self) -> None:
        for op in range(0xD8, 0xE0):
            opcode = bytes([op])
            for prefix in self.config.prefixes.x87:
                for reg in range(8):
                    self.add(
                        "x87",
                        _prefix_bytes(prefix),
                        opcode,
                        bytes([self.mem[0] | reg << 3]) + self.mem[1:],
                        False,
                        "mem",
                        True,
                    )
                    self.add(
                        "x87",
                        _prefix_bytes(prefix),
                        opcode,
                        bytes([0x05 | reg << 3]),
                        True,
                        "rip",
                        True,
                    )
            for modrm in range(0xC0, 0x100):
                self.add("x87", b"", opcode, bytes([modrm]), False, "reg", True)

    def avx(self) -> None:
        maps = self.config.avx.maps
        map_select = {"0f": 1, "0f38": 2, "0f3a": 3}
        for map_name, ranges in maps.items():
            for op in sorted(_byte_set(ranges)):
                for pp in range(4):
                    for length in (0, 1):
                        for tail, rip, mode in self.modrm_variants([self.reg_field]):
                            vex = self._vex(map_select[map_name], pp, length, vvvv=3)
                            self.add("avx", vex, bytes([op]), tail, rip, mode)

    @staticmethod
    def _vex(map_select: int, pp: int, length: int, vvvv: int) -> bytes:
        inverted_v = (~vvvv & 0xF) << 3
        if map_select == 1:  # two-byte VEX: R vvvv L pp
            return bytes([0xC5, 0x80 | inverted_v | length << 2 | pp])
        return bytes([0xC4, 0xE0 | map_select, inverted_v | length << 2 | pp])  # W0

    def _has_modrm(self, opcode: bytes) -> bool:
        # 32-bit mode: a memory ModRM (c4/c5/62 with a register ModRM are VEX/EVEX there)
        modrm = b"\x00" if self.bits == 32 else b"\xc0"
        decoded = self.decoder.decode(opcode + modrm + bytes([IMM_FILLER]) * 8)
        return bool(decoded and decoded.modrm_offset)


def generate(cpu_flags: set[str] | None = None, config_path: Path = CONFIG) -> Corpus:
    """The whole corpus; with cpu_flags, forms needing other CPU features are dropped."""
    generator = _Generator(_load_config(config_path), cpu_flags)
    generator.onebyte()
    generator.twobyte()
    generator.x87()
    generator.avx()
    generator.prefixed()
    generator.compat()
    generator.prologue()
    return generator.corpus


def select(corpus: Corpus, patterns: list[str]) -> list[Form]:
    """--filter: keep forms whose name, class or disassembly matches any regex."""
    if not patterns:
        return list(corpus.forms)
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as error:
        raise HarnessError(
            f"sweep --filter: {error.pattern!r} is not a valid regular expression: {error}."
        ) from None
    return [
        f
        for f in corpus.forms
        if any(c.search(f.name) or c.search(f.text) or c.fullmatch(f.klass) for c in compiled)
    ]


# -- forms -> instruction cases ---------------------------------------------------------
def _bytes_line(data: bytes) -> str:
    return ".byte " + ", ".join(f"{b:#04x}" for b in data)


def to_case(form: Form, rip_target: str = "scratch+0x100") -> insn.Case:
    """The form as an engine case: the probed insn, then landing pads for control flow
    (fall-through continues, a taken branch runs `not %r15` first, `not %ebp` in a 32-bit
    task: flags untouched)."""
    compat = form.bits == 32
    lines = [_bytes_line(form.head)] if form.head else []
    imm = form.imm
    if form.branch in ("rel8", "rel32"):
        size = len(imm)
        directive = {1: ".byte", 2: ".word", 4: ".long"}[size]
        lines.append(f"{directive} .Ltaken_{{id}} - (. + {size})")
        imm = b""
    if form.rip:  # 32-bit: the same ModRM form is an absolute address
        lines.append(
            f".long {rip_target}" if compat else f".long {rip_target} - (. + {4 + len(imm)})"
        )
    if imm:
        lines.append(_bytes_line(imm))
    pre = ""
    if form.branch:
        lines += ["jmp 2f", ".Ltaken_{id}:", "not %ebp" if compat else "not %r15", "2:"]
        if form.branch == "ret":
            pre = "pushl $.Ltaken_{id}" if compat else "pushq $.Ltaken_{id}"
        elif form.branch == "indirect":
            pre = _indirect_target_setup32(form) if compat else _indirect_target_setup(form)
    if form.klass == PROLOGUE:  # rsp as at a function's entry: 8 below a 16-byte boundary
        pre = "lea -8(%rsp), %rsp" + (f"\n{pre}" if pre else "")
    return insn.Case(
        form.name, "\n".join(lines), pre=pre, gprs=form.gprs, needs=form.needs, family=form.klass
    )


def _indirect_target_setup(form: Form) -> str:
    """ff /2 and ff /4: put the landing pad's address where the insn reads its target."""
    prefix = form.head[: form.prefix_len]
    rex = prefix[-1] if prefix and 0x40 <= prefix[-1] <= 0x4F else 0
    modrm = form.head[form.prefix_len + 1]
    if modrm >= 0xC0:  # register form: r/m names the register
        register = _GPR_BY_NUMBER[(modrm & 7) + (8 if rex & 1 else 0)]
        return f"lea .Ltaken_{{id}}(%rip), %{register}"
    if form.rip:
        return "lea .Ltaken_{id}(%rip), %r10\nmov %r10, scratch+0x100(%rip)"
    base = "r11" if rex & 1 else "rbx"
    index = "r9" if rex & 2 else "rcx"
    return f"lea .Ltaken_{{id}}(%rip), %r10\nmov %r10, 0x10(%{base},%{index},1)"


def _indirect_target_setup32(form: Form) -> str:
    """ff /2 and ff /4 in a 32-bit task: the landing pad's address where the insn reads it."""
    modrm = form.head[form.prefix_len + 1]
    if modrm >= 0xC0:
        return f"mov $.Ltaken_{{id}}, %{_GPR32_BY_NUMBER[modrm & 7]}"
    if form.rip:
        return "movl $.Ltaken_{id}, scratch+0x100"
    return "movl $.Ltaken_{id}, 0x10(%ebx,%ecx,1)"


_GPR32_BY_NUMBER = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


def verify_program(program: insn.Program, forms: list[Form]) -> list[str]:
    """Decode every probed insn back from the linked binary with capstone: it must have
    the intended length and bytes (RIP-relative displacement and branch offsets aside)."""
    from harness.probing.probes import symbol_offsets

    problems = []
    decoder = _Decoder(program.bits)
    offsets = symbol_offsets(program.binary, [f"probe_{i}" for i in range(len(program.cases))])
    image = program.binary.read_bytes()
    by_name = {f.name: f for f in forms}
    for index, case in enumerate(program.cases):
        form = by_name.get(case.name)
        if form is None:
            continue
        offset = offsets[f"probe_{index}"]
        code = image[offset : offset + 16]
        decoded = decoder.decode(code)
        if decoded is None or decoded.size != form.length:
            problems.append(
                f"{form.name}: linked insn decodes as "
                f"{decoded.mnemonic + ' ' + decoded.op_str if decoded else 'nothing'}"
                f" ({decoded.size if decoded else 0} bytes), expected {form.length}"
            )
            continue
        fixed = bytearray(code[: form.length])
        if form.rip:
            fixed[len(form.head) : len(form.head) + 4] = b"\0\0\0\0"
        expected = form.encoding()
        if form.branch in ("rel8", "rel32"):
            fixed[len(form.head) :] = b"\0" * (len(fixed) - len(form.head))
            expected = form.head + b"\0" * len(form.imm)
        if bytes(fixed) != expected:
            problems.append(
                f"{form.name}: linked bytes {bytes(fixed).hex()} != intended {expected.hex()}"
            )
    return problems
