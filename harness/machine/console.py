"""Kernel console watching: find splats (oops, WARNING, panic, lockups...) in serial output.

What counts as a splat, and how a splat is reduced to a stable one-line title, is data:
configs/console_patterns.toml. This module applies that table to a saved log (scan, scan_file,
main) or incrementally to a live console (ConsoleWatch); both share one line-by-line scanner,
so a live watch and a re-parse of its saved log always agree.
"""

from __future__ import annotations

import copy
import re
import string
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness import data
from harness.paths import CONFIGS_DIR

PATTERNS_FILE = CONFIGS_DIR / "console_patterns.toml"
KINDS = ("crashed", "reboot")
MAX_TEXT = 32 << 20  # characters of the raw console kept in memory (the log file has all)
MAX_LINE = 64 << 10  # a line is cut there (the kernel prints at most 1,024 per line)
KEEP_LINES = 20_000  # complete lines kept for splat excerpts (a splat is <= max_lines)

_ANSI_ESCAPE = re.compile(  # CSI ("ESC [ 2 J"), OSC ("ESC ] ... BEL"), others ("ESC c", "ESC ( B")
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]"
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # includes \r; keeps \t
_LOG_PREFIX = re.compile(r"^(?:<\d+>)?\[\s*\d+\.\d+\]\s?(?:\[\s*[TC]\d+\]\s?)?")


@dataclass(frozen=True)
class ConsoleFinding:
    """One kernel splat, or an unexpected reboot, found in a console log."""

    kind: str  # "crashed" for splats, "reboot" for a second boot banner
    signature: str  # name of the pattern that matched: "panic", "warning", "gpf"...
    title: str  # stable one-line title, comparable across runs
    line_no: int  # 1-based line of the matching line in the scanned text
    excerpt: str  # the splat, from the matching line to its end marker (bounded)


# -- the pattern table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One [[pattern]] entry; the meaning of each field is documented in the TOML file."""

    name: str
    regex: re.Pattern[str]
    title: str
    fallback: str
    context: re.Pattern[str] | None
    absorb_within: int | None
    kind: str
    lines_before: int
    max_lines: int

    def render_title(self, match: re.Match[str], following: Iterable[str]) -> str:
        fields = _named_groups(match)
        if self.context is None:
            return self.title.format(**fields)
        for line in following:
            found = self.context.search(line)
            if found:
                return self.title.format(**{**fields, **_named_groups(found)})
        return self.fallback.format(**fields)


@dataclass(frozen=True)
class AllowEntry:
    pattern: re.Pattern[str]
    reason: str
    link: str


@dataclass(frozen=True)
class PatternTable:
    patterns: tuple[Pattern, ...]
    end_of_splat: tuple[re.Pattern[str], ...]
    volatile: tuple[tuple[re.Pattern[str], str], ...]
    allow: tuple[AllowEntry, ...] = ()

    def stable(self, title: str) -> str:
        """The title without addresses, PIDs, offsets and other values that change per run."""
        for regex, replacement in self.volatile:
            title = regex.sub(replacement, title)
        return " ".join(title.split())

    def allows(self, title: str) -> bool:
        return any(entry.pattern.search(title) for entry in self.allow)

    def ends_splat(self, message: str) -> bool:
        return any(regex.search(message) for regex in self.end_of_splat)


def _named_groups(match: re.Match[str]) -> dict[str, str]:
    return {name: value or "" for name, value in match.groupdict().items()}


class _PatternEntry(data.Spec):
    name: str
    regex: str
    title: str
    context: str | None = None
    fallback: str | None = None
    absorb_within: int | None = None
    kind: str = "crashed"
    lines_before: int = 0
    max_lines: int | None = None  # default: the table's excerpt_lines


class _VolatileEntry(data.Spec):
    regex: str
    replace: str


class _AllowEntry(data.Spec):
    pattern: str
    reason: str
    link: str


class _TableFile(data.Spec):
    excerpt_lines: int = 80
    end_of_splat: list[str] = []
    pattern: list[_PatternEntry] = []
    volatile: list[_VolatileEntry] = []
    allow: list[_AllowEntry] = []


def load_table(path: Path | str = PATTERNS_FILE) -> PatternTable:
    return _table(data.parse(Path(path)), str(path))


@cache
def default_table() -> PatternTable:
    return load_table(PATTERNS_FILE)


def parse_table(toml_text: str, source: str = "console patterns") -> PatternTable:
    """Parse and check a pattern table; any mistake raises data.DataError naming the entry."""
    return _table(data.parse(source, toml_text), source)


def _table(raw: dict, source: str) -> PatternTable:
    spec = data.convert(raw, _TableFile, source)

    def where(section: str, index: int) -> str:
        return data.entry_name(raw, f"$.{section}[{index}]")

    return PatternTable(
        patterns=tuple(
            _parse_pattern(entry, spec.excerpt_lines, source, where("pattern", n))
            for n, entry in enumerate(spec.pattern)
        ),
        end_of_splat=tuple(
            _compile(regex, source, "top level", f"end_of_splat: item {n + 1}")
            for n, regex in enumerate(spec.end_of_splat)
        ),
        volatile=tuple(
            (_compile(entry.regex, source, where("volatile", n), "regex"), entry.replace)
            for n, entry in enumerate(spec.volatile)
        ),
        allow=tuple(
            _parse_allow(entry, source, where("allow", n)) for n, entry in enumerate(spec.allow)
        ),
    )


def _parse_pattern(entry: _PatternEntry, excerpt_lines: int, source: str, where: str) -> Pattern:
    regex = _compile(entry.regex, source, where, "regex")
    context = (
        _compile(entry.context, source, where, "context") if entry.context is not None else None
    )
    if context is not None and entry.fallback is None:
        raise data.error(source, where, "a pattern with 'context' needs a 'fallback' title")
    fallback = entry.title if entry.fallback is None else entry.fallback
    _check_title_fields(entry.title, regex, context, source, where)
    _check_title_fields(fallback, regex, None, source, where)
    if entry.kind not in KINDS:
        raise data.error(
            source, where, f"kind must be one of {', '.join(KINDS)}, not {entry.kind!r}"
        )
    return Pattern(
        name=entry.name,
        regex=regex,
        title=entry.title,
        fallback=fallback,
        context=context,
        absorb_within=entry.absorb_within,
        kind=entry.kind,
        lines_before=entry.lines_before,
        max_lines=excerpt_lines if entry.max_lines is None else entry.max_lines,
    )


def _parse_allow(entry: _AllowEntry, source: str, where: str) -> AllowEntry:
    reason, link = entry.reason.strip(), entry.link.strip()
    if not reason or not link:
        raise data.error(source, where, "an allow entry needs a non-empty reason and link")
    return AllowEntry(_compile(entry.pattern, source, where, "pattern"), reason, link)


def _compile(regex: str, source: str, where: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise data.error(source, where, f"{key}: bad regex {regex!r}: {exc}") from None


def _check_title_fields(
    template: str, regex: re.Pattern[str], context: re.Pattern[str] | None, source: str, where: str
) -> None:
    known = set(regex.groupindex) | set(context.groupindex if context else ())
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except ValueError as exc:
        raise data.error(source, where, f"bad title template {template!r}: {exc}") from None
    if used - known:
        raise data.error(
            source,
            where,
            f"title {template!r} uses "
            f"{', '.join(sorted(used - known))}, which no named "
            f"group of its regex provides",
        )


# -- lines ----------------------------------------------------------------------------------


def normalise_line(raw: str) -> str:
    """A console line without CR, ANSI escape sequences or other control characters."""
    return _CONTROL_CHARS.sub("", _ANSI_ESCAPE.sub("", raw))


def normalise(text: str) -> str:
    return "\n".join(normalise_line(line) for line in text.split("\n"))


def message_of(line: str) -> str:
    """The kernel message of a normalised line, without "[   12.345678] " and caller id."""
    return _LOG_PREFIX.sub("", line, count=1)


# -- the scanner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _OpenSplat:
    """A splat whose lines are still arriving; it extends to the last line seen so far."""

    pattern: Pattern
    match: re.Match[str]
    start: int  # 0-based index of its first line


class ConsoleWatch:
    """Incremental scanner for a live console; thread-safe.

    feed() returns the splats completed by that chunk (a splat is complete at its end marker,
    at the start of the next one, after max_lines, or at finish()); `findings` is always what
    scan(self.text) would report, including a splat still being printed.
    """

    def __init__(self, table: PatternTable | None = None, *, boot_banner_expected: bool = True):
        self._table = table or default_table()
        self._banner_pending = boot_banner_expected
        self._lock = threading.Lock()
        self._chunks: list[str] = []  # the last MAX_TEXT characters fed, as fed
        self._chunks_size = 0
        self._text_dropped = 0  # characters fed before those
        self._partial: list[str] = []  # raw text after the last newline, in pieces
        self._partial_size = 0
        self._cut = False  # the line being fed was cut at MAX_LINE
        self._lines: list[str] = []  # normalised complete lines, the last ones only
        self._first = 0  # the line number (0-based) of self._lines[0]
        self._open: _OpenSplat | None = None
        self._last_start: int | None = None
        self._findings: list[ConsoleFinding] = []

    @property
    def text(self) -> str:
        """What is kept of the console, as fed: all of it, or of a console that printed
        more than 2 x MAX_TEXT characters, at least the last MAX_TEXT (`dropped` came
        before)."""
        with self._lock:
            joined = "".join(self._chunks)
            self._chunks = [joined]
            return joined

    @property
    def dropped(self) -> int:
        return self._text_dropped

    @property
    def fed(self) -> int:
        """Characters fed so far: an offset for since()."""
        with self._lock:
            return self._text_dropped + self._chunks_size

    def since(self, offset: int, end: int | None = None) -> str:
        """What was fed from `offset` (a `fed` value) on, up to `end` (another), as far as
        it is kept."""
        with self._lock:
            joined = "".join(self._chunks)
            self._chunks = [joined]
            stop = None if end is None else max(end - self._text_dropped, 0)
            return joined[max(offset - self._text_dropped, 0) : stop]

    @property
    def findings(self) -> list[ConsoleFinding]:
        with self._lock:
            if self._open is None and not self._partial:
                return list(self._findings)
            probe = copy.copy(self)
            probe._lines, probe._findings = list(self._lines), list(self._findings)
            probe._partial = list(self._partial)
        probe._finish()
        return probe._findings

    def feed(self, chunk: str) -> list[ConsoleFinding]:
        """Linear in the chunk's size whatever came before (a line without a newline is
        kept in pieces, and cut at MAX_LINE characters); memory is bounded by MAX_TEXT,
        MAX_LINE and KEEP_LINES."""
        with self._lock:
            self._keep_text(chunk)
            known = len(self._findings)
            *complete, last = chunk.split("\n")
            for piece in complete:
                self._extend_partial(piece)
                self._add_line("".join(self._partial))
                self._partial, self._partial_size, self._cut = [], 0, False
            self._extend_partial(last)
            return self._findings[known:]

    def _keep_text(self, chunk: str) -> None:
        self._chunks.append(chunk)
        self._chunks_size += len(chunk)
        if self._chunks_size > 2 * MAX_TEXT:  # amortised: one copy per MAX_TEXT fed
            joined = "".join(self._chunks)
            cut = len(joined) - MAX_TEXT
            self._chunks, self._chunks_size = [joined[cut:]], MAX_TEXT
            self._text_dropped += cut

    def _extend_partial(self, piece: str) -> None:
        room = MAX_LINE - self._partial_size
        if self._cut or not piece:
            return
        if len(piece) > room:
            piece, self._cut = piece[:room], True
        self._partial.append(piece)
        self._partial_size += len(piece)

    def finish(self) -> list[ConsoleFinding]:
        """End of the console stream: the last line and the splat in progress are complete."""
        with self._lock:
            known = len(self._findings)
            self._finish()
            return self._findings[known:]

    def _finish(self) -> None:
        if self._partial:
            self._add_line("".join(self._partial))
            self._partial, self._partial_size, self._cut = [], 0, False
        self._close(self._first + len(self._lines))

    def _add_line(self, raw: str) -> None:
        line = normalise_line(raw)
        index = self._first + len(self._lines)
        self._lines.append(line)
        if len(self._lines) >= 2 * KEEP_LINES:  # amortised: one copy per KEEP_LINES
            self._lines = self._lines[-KEEP_LINES:]
            self._first = index + 1 - KEEP_LINES
        message = message_of(line)
        opened = self._splat_starting(message, index)
        if opened is not None:
            self._close(index)
            self._open, self._last_start = opened, index
        splat = self._open
        if splat is None:
            return
        at_end_marker = opened is None and self._table.ends_splat(message)
        if at_end_marker or index + 1 - splat.start >= splat.pattern.max_lines:
            self._close(index + 1)

    def _splat_starting(self, message: str, index: int) -> _OpenSplat | None:
        for pattern in self._table.patterns:
            match = pattern.regex.search(message)
            if match is None:
                continue
            if pattern.kind == "reboot" and self._banner_pending:
                self._banner_pending = False  # the first banner is the boot itself
                return None
            if self._is_follow_up(pattern, index):
                return None
            return _OpenSplat(pattern, match, index)
        return None

    def _is_follow_up(self, pattern: Pattern, index: int) -> bool:
        return (
            pattern.absorb_within is not None
            and self._last_start is not None
            and index - self._last_start <= pattern.absorb_within
        )

    def _close(self, end: int) -> None:
        splat, self._open = self._open, None
        if splat is None:
            return
        finding = self._finding(splat, end)
        if not self._table.allows(finding.title):
            self._findings.append(finding)

    def _finding(self, splat: _OpenSplat, end: int) -> ConsoleFinding:
        pattern = splat.pattern
        following = (message_of(line) for line in self._window(splat.start + 1, end))
        title = self._table.stable(pattern.render_title(splat.match, following))
        first = max(0, splat.start - pattern.lines_before)
        return ConsoleFinding(
            kind=pattern.kind,
            signature=pattern.name,
            title=title,
            line_no=splat.start + 1,
            excerpt="\n".join(self._window(first, end)),
        )

    def _window(self, start: int, end: int) -> list[str]:
        """Lines start..end-1 (0-based line numbers of the whole console) still kept."""
        return self._lines[max(start - self._first, 0) : max(end - self._first, 0)]


def scan(
    text: str, table: PatternTable | None = None, *, boot_banner_expected: bool = True
) -> list[ConsoleFinding]:
    """All splats in a complete console log. With boot_banner_expected=False (a window cut
    out of a log after boot) every boot banner counts as an unexpected reboot."""
    watch = ConsoleWatch(table, boot_banner_expected=boot_banner_expected)
    watch.feed(text)
    watch.finish()
    return watch.findings


def read_log(path: Path | str) -> str:
    """A saved console log; bytes that are not UTF-8 (serial line noise) become U+FFFD."""
    return Path(path).read_bytes().decode("utf-8", errors="replace")


def scan_file(
    path: Path | str, table: PatternTable | None = None, *, boot_banner_expected: bool = True
) -> list[ConsoleFinding]:
    return scan(read_log(path), table, boot_banner_expected=boot_banner_expected)


# -- attribution ----------------------------------------------------------------------------


def window(text: str, begin_marker: str, end_marker: str | None) -> str:
    """The normalised lines strictly between the last `begin_marker` line and the first
    `end_marker` line after it; to the end of the log when end_marker is None or missing
    (a test that crashed the guest never writes its END marker). ValueError when there is no
    begin marker."""
    lines = normalise(text).split("\n")
    begin = _find_marker(lines, begin_marker, range(len(lines) - 1, -1, -1))
    if begin is None:
        raise ValueError(f"marker {begin_marker!r} is not in the console log")
    end = None
    if end_marker is not None:
        end = _find_marker(lines, end_marker, range(begin + 1, len(lines)))
    return "\n".join(lines[begin + 1 : end])


def _find_marker(lines: list[str], marker: str, order: Iterable[int]) -> int | None:
    marker_line = re.compile(r"(?:^|\]\s?)" + re.escape(marker) + r"\s*$")
    return next((index for index in order if marker_line.search(lines[index])), None)


# -- output ---------------------------------------------------------------------------------


def format_findings(findings: Sequence[ConsoleFinding], *, excerpts: bool = True) -> str:
    if not findings:
        return "clean: no kernel splats found"
    out = [f"{len(findings)} finding(s):"]
    for finding in findings:
        out.append(f"line {finding.line_no}: {finding.kind} [{finding.signature}] {finding.title}")
        if excerpts:
            out.extend(f"    | {line}" for line in finding.excerpt.split("\n"))
    return "\n".join(out)
