"""The console watch stays linear and bounded whatever the guest prints: a line without a
newline, a flood of lines, more text than it keeps; and it still finds a splat after that,
at its true line number."""

import time

from harness.machine import console
from harness.machine.console import ConsoleWatch

SPLAT = (
    "[   12.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
    "[   12.000001] Oops: 0000 [#1] PREEMPT SMP NOPTI\n"
    "[   12.000002] RIP: 0010:find_uprobe+0x1c/0x70\n"
    "[   12.000003] ---[ end trace 0000000000000000 ]---\n"
)


def _feed(watch: ConsoleWatch, text: str, chunk: int = 65536) -> float:
    started = time.monotonic()
    for at in range(0, len(text), chunk):
        watch.feed(text[at : at + chunk])
    return time.monotonic() - started


def test_a_32_mb_line_without_newline_is_linear_and_cut():
    watch = ConsoleWatch(boot_banner_expected=False)
    seconds = _feed(watch, "x" * (32 << 20))
    assert seconds < 2.0, f"{seconds:.1f} s for 32 MB without a newline"
    assert watch._partial_size == console.MAX_LINE
    _feed(watch, "\n" + SPLAT)
    watch.finish()
    assert [f.signature for f in watch.findings] == ["null_deref"]
    assert watch.findings[0].line_no == 2


def test_a_flood_of_lines_keeps_the_last_ones_and_true_line_numbers():
    watch = ConsoleWatch(boot_banner_expected=False)
    lines = 5 * console.KEEP_LINES
    _feed(watch, "".join(f"[    1.{n:06d}] noise {n}\n" for n in range(lines)) + SPLAT)
    watch.finish()
    assert len(watch._lines) < 2 * console.KEEP_LINES
    (finding,) = watch.findings
    assert finding.line_no == lines + 1
    assert "RIP: 0010:find_uprobe" in finding.excerpt


def test_text_keeps_the_last_characters_and_offsets_stay_absolute():
    """A test's window of the console is an absolute offset (fed): after the watch dropped
    the oldest text, a window still reads what was fed since its start."""
    watch = ConsoleWatch(boot_banner_expected=False)
    chunk = "y" * 1023 + "\n"
    start = watch.fed
    _feed(watch, chunk * (2 * console.MAX_TEXT // len(chunk) + 64), chunk=len(chunk) * 64)
    assert watch.dropped > 0 and len(watch.text) <= 2 * console.MAX_TEXT
    middle = watch.fed
    _feed(watch, SPLAT)
    window = watch.since(middle)
    assert window == SPLAT and watch.since(middle, middle + 10) == SPLAT[:10]
    assert watch.since(start).endswith(SPLAT)  # as far as it is kept
    assert watch.fed == middle + len(SPLAT)
