"""harness.machine.console on recorded console logs (tests/data/console) and on inline splats.

The synthetic-*.log files are hand-written x86-64 Linux 6.1 serial output (CRLF line endings,
SeaBIOS escape sequences); real captures can be dropped next to them: the stability and
incremental tests run on every *.log, the expectations below name the synthetic ones.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from harness import cli
from harness.data import DataError
from harness.machine import console
from harness.machine.console import ConsoleWatch, normalise, parse_table, scan, scan_file, window

DATA = Path(__file__).parent / "data" / "console"
LOGS = sorted(DATA.glob("*.log"))

EXPECTED = {  # log -> [(kind, signature, title), ...]
    "synthetic-clean-boot.log": [],
    "synthetic-sysrq-panic.log": [
        ("crashed", "panic", "Kernel panic - not syncing: sysrq triggered crash")
    ],
    "synthetic-warning.log": [("crashed", "warning", "WARNING in uprobe_write_opcode")],
    "synthetic-gpf.log": [("crashed", "gpf", "general protection fault in consumer_del")],
    "synthetic-soft-lockup.log": [("crashed", "soft_lockup", "BUG: soft lockup in handle_swbp")]
    * 2,
    "synthetic-reboot.log": [("reboot", "reboot", "unexpected reboot (second boot banner)")],
}


def read(name: str) -> str:
    return console.read_log(DATA / name)


def summary(findings) -> list[tuple[str, str, str]]:
    return [(f.kind, f.signature, f.title) for f in findings]


def splat(*messages: str) -> str:
    """Console lines with kernel timestamps, as the serial port delivers them."""
    return "".join(f"[{12.345678 + n * 0.0004:12.6f}] {m}\r\n" for n, m in enumerate(messages))


def with_allow_entry(pattern: str, reason: str = "known", link: str = "https://example.org/x"):
    shipped = console.PATTERNS_FILE.read_text()
    return parse_table(
        shipped + f"\n[[allow]]\npattern = '{pattern}'\nreason = '{reason}'\nlink = '{link}'\n"
    )


# -- recorded logs ----------------------------------------------------------------------------


def test_every_synthetic_log_has_an_expectation():
    synthetic = {path.name for path in LOGS if path.name.startswith("synthetic-")}
    assert synthetic == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_log_verdicts(name):
    assert summary(scan_file(DATA / name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n, found in EXPECTED.items() if found))
def test_line_no_points_at_the_matching_line(name):
    lines = normalise(read(name)).split("\n")
    for finding in scan(read(name)):
        assert lines[finding.line_no - 1] in finding.excerpt.split("\n")
        assert (
            finding.excerpt.split("\n")[-1 if finding.kind == "reboot" else 0]
            == (lines[finding.line_no - 1])
        )


def test_sysrq_panic_excerpt_is_the_whole_splat():
    [finding] = scan(read("synthetic-sysrq-panic.log"))
    excerpt = finding.excerpt.split("\n")
    assert "Kernel panic - not syncing: sysrq triggered crash" in excerpt[0]
    assert "sysrq_handle_crash+0x16/0x20" in finding.excerpt
    assert excerpt[-1].endswith("---[ end Kernel panic - not syncing: sysrq triggered crash ]---")


def test_warning_excerpt_ends_at_end_trace_and_keeps_timestamps():
    [finding] = scan(read("synthetic-warning.log"))
    excerpt = finding.excerpt.split("\n")
    assert excerpt[0] == (
        "[    3.119705] WARNING: CPU: 1 PID: 131 at kernel/events/uprobes.c:492 "
        "uprobe_write_opcode+0x4c9/0x5e0"
    )
    assert excerpt[-1] == "[    3.138375] ---[ end trace 0000000000000000 ]---"
    assert "\r" not in finding.excerpt


def test_gpf_followed_by_fatal_exception_panic_is_one_finding():
    text = read("synthetic-gpf.log")
    assert "Kernel panic - not syncing: Fatal exception" in text
    [finding] = scan(text)
    assert finding.excerpt.split("\n")[-1].endswith("---[ end trace 0000000000000000 ]---")


def test_soft_lockup_excerpt_stops_where_the_next_report_starts():
    first, second = scan(read("synthetic-soft-lockup.log"))
    assert "stuck for 26s!" in first.excerpt and "stuck for 52s!" not in first.excerpt
    assert second.line_no == first.line_no + len(first.excerpt.split("\n"))


def test_reboot_excerpt_shows_what_came_before_the_second_banner():
    text = read("synthetic-reboot.log")
    lines = normalise(text).split("\n")
    banners = [n for n, line in enumerate(lines, 1) if "Linux version" in line]
    [finding] = scan(text)
    assert finding.line_no == banners[1]
    assert "uprobe-harness: BEGIN test_xol_slot_exhaustion" in finding.excerpt
    assert "\x1b" not in finding.excerpt


def test_boot_time_warning_inside_a_line_is_not_a_splat():
    text = read("synthetic-clean-boot.log")
    assert "RETBleed: WARNING: Spectre v2 mitigation" in text
    assert scan(text) == []


# -- one splat of each kind -------------------------------------------------------------------

RIP = "RIP: 0010:uprobe_notify_resume+0x5e/0x90"
WORKQUEUE_LOCKUP = "BUG: workqueue lockup - pool cpus=1 node=0 flags=0x0 nice=0 stuck for 31s!"
INLINE = [
    pytest.param(
        splat(
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "#PF: supervisor read access in kernel mode",
            "#PF: error_code(0x0000) - not-present page",
            "PGD 0 P4D 0 ",
            "Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "RIP: 0010:find_uprobe+0x1c/0x70",
        ),
        "null_deref",
        "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        id="null-deref-with-oops",
    ),
    pytest.param(
        splat(
            "BUG: unable to handle page fault for address: ffffc90000533000",
            "#PF: supervisor write access in kernel mode",
            "Oops: 0002 [#1] PREEMPT SMP NOPTI",
            "RIP: 0010:arch_uprobe_copy_ixol+0x2c/0x60",
        ),
        "page_fault",
        "BUG: unable to handle page fault in arch_uprobe_copy_ixol",
        id="page-fault",
    ),
    pytest.param(
        splat(
            "kernel BUG at kernel/events/uprobes.c:1245!",
            "invalid opcode: 0000 [#1] SMP",
            "RIP: 0010:__uprobe_register+0x2a1/0x2b0",
        ),
        "bug_at",
        "kernel BUG at kernel/events/uprobes.c:1245",
        id="kernel-bug-with-ud2",
    ),
    pytest.param(
        splat("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "CPU: 0 PID: 7", RIP),
        "invalid_opcode",
        "invalid opcode in uprobe_notify_resume",
        id="invalid-opcode",
    ),
    pytest.param(
        splat("int3: 0000 [#1] PREEMPT SMP NOPTI", RIP),
        "trap",
        "int3 in uprobe_notify_resume",
        id="int3",
    ),
    pytest.param(
        splat(
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            "rcu: \t1-....: (2100 ticks this GP) idle=c7c/1/0x4000000000000000",
            RIP,
        ),
        "rcu_stall",
        "INFO: rcu_preempt detected stall in uprobe_notify_resume",
        id="rcu-self-detected",
    ),
    pytest.param(
        splat(
            "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            "rcu: \t0-...!: (1 GPs behind) idle=4a2/0/0x1",
        ),
        "rcu_stall",
        "INFO: rcu_sched detected stall",
        id="rcu-detected-no-rip",
    ),
    pytest.param(
        splat(
            "INFO: task uprobe_reg:120 blocked for more than 122 seconds.",
            "      Not tainted 6.1.0-uprobe-test #1",
            '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
            "task:uprobe_reg      state:D stack:0     pid:120   ppid:1      flags:0x00004000",
            "Call Trace:",
            " <TASK>",
            " __schedule+0x2ed/0x860",
            " schedule+0x5a/0xd0",
            " schedule_preempt_disabled+0x11/0x20",
            " __mutex_lock.constprop.0+0x3a1/0x6b0",
            " ? uprobe_mmap+0x1c/0x3a0",
            " register_for_each_vma+0x5c/0x3e0",
        ),
        "hung_task",
        "INFO: task hung in register_for_each_vma",
        id="hung-task",
    ),
    pytest.param(
        splat(
            "BUG: KASAN: slab-use-after-free in consumer_filter+0x2b/0x60",
            "Read of size 8 at addr ffff888004a6e318 by task uprobe_race/104",
        ),
        "kasan",
        "KASAN: slab-use-after-free Read in consumer_filter",
        id="kasan",
    ),
    pytest.param(
        splat(
            "UBSAN: shift-out-of-bounds in kernel/events/uprobes.c:1912:23",
            "shift exponent 64 is too large for 64-bit type 'long unsigned int'",
        ),
        "ubsan",
        "UBSAN: shift-out-of-bounds in kernel/events/uprobes.c:1912:23",
        id="ubsan",
    ),
    pytest.param(
        splat(
            "WARNING: possible circular locking dependency detected",
            "6.1.0-uprobe-test #1 Not tainted",
        ),
        "warning_report",
        "WARNING: possible circular locking dependency detected",
        id="lockdep",
    ),
    pytest.param(
        splat("BUG: scheduling while atomic: uprobe_loop/118/0x00000002"),
        "sleep_in_atomic",
        "BUG: scheduling while atomic",
        id="scheduling-while-atomic",
    ),
    pytest.param(
        splat(WORKQUEUE_LOCKUP), "bug", WORKQUEUE_LOCKUP.replace("31s!", "Ns!"), id="generic-bug"
    ),
    pytest.param(
        splat("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", RIP),
        "hard_lockup",
        "hard LOCKUP in uprobe_notify_resume",
        id="hard-lockup",
    ),
    pytest.param(
        splat("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"),
        "panic",
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
        id="panic",
    ),
    pytest.param(
        splat("Kernel panic - not syncing: Fatal exception in interrupt"),
        "panic_followup",
        "Kernel panic - not syncing: Fatal exception in interrupt",
        id="fatal-exception-alone",
    ),
]


@pytest.mark.parametrize(("text", "signature", "title"), INLINE)
def test_each_pattern_gives_one_finding_with_a_stable_title(text, signature, title):
    assert summary(scan(text)) == [("crashed", signature, title)]


def test_normalises_crlf_ansi_and_caller_id():
    text = (
        "\x1b[1;31m[   12.345678][    T1] WARNING: CPU: 0 PID: 1 at a.c:1 foo+0x1/0x2\x1b[0m\r\r\n"
    )
    [finding] = scan(text)
    assert finding.title == "WARNING in foo"
    assert finding.excerpt == "[   12.345678][    T1] WARNING: CPU: 0 PID: 1 at a.c:1 foo+0x1/0x2"


# -- stable titles ----------------------------------------------------------------------------


def perturb(text: str, seed: int) -> str:
    """The same log as another run prints it: other timestamps, addresses, PIDs, CPUs, offsets."""
    rng = random.Random(seed)
    shift = rng.uniform(0.5, 90.0)

    def timestamp(m):
        return f"[{float(m.group(1)) + shift:12.6f}]"

    def address(m):
        value = m.group(0)
        if int(value, 16) < 0x10000:
            return value
        return value[:4] + "".join(rng.choice("0123456789abcdef") for _ in value[4:])

    text = re.sub(r"\[\s*(\d+\.\d+)\]", timestamp, text)
    text = re.sub(r"\b(?:0x)?[0-9a-f]{8,16}\b", address, text)
    text = re.sub(
        r"\+0x[0-9a-f]+/0x[0-9a-f]+",
        lambda m: f"+0x{rng.randint(1, 0x3FF):x}/0x{rng.randint(0x400, 0x900):x}",
        text,
    )
    text = re.sub(r"(PID: |pid:|\[\w+:)\d+", lambda m: f"{m.group(1)}{rng.randint(2, 4000)}", text)
    text = re.sub(r"(CPU: |CPU#)\d+", lambda m: f"{m.group(1)}{rng.randint(0, 7)}", text)
    return re.sub(r"stuck for \d+s", lambda m: f"stuck for {rng.randint(22, 300)}s", text)


@pytest.mark.parametrize("path", LOGS, ids=lambda path: path.name)
def test_titles_are_stable_across_runs(path):
    text = console.read_log(path)
    expected = [(f.signature, f.title, f.line_no) for f in scan(text)]
    for seed in range(4):
        other_run = perturb(text, seed)
        assert other_run != text
        assert [(f.signature, f.title, f.line_no) for f in scan(other_run)] == expected


def test_same_warning_elsewhere_in_the_code_gets_another_title():
    one = splat(
        "WARNING: CPU: 1 PID: 55 at kernel/events/uprobes.c:492 uprobe_write_opcode+0x4c9/0x5e0"
    )
    other = splat(
        "WARNING: CPU: 3 PID: 812 at kernel/events/uprobes.c:943 register_for_each_vma+0x36b/0x3e0"
    )
    assert [f.title for f in scan(one + other)] == [
        "WARNING in uprobe_write_opcode",
        "WARNING in register_for_each_vma",
    ]


@pytest.mark.parametrize(
    ("raw", "stable"),
    [
        (
            "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
            "handle_swbp.isra.0+0x3f1/0x420",
            "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
            "handle_swbp",
        ),
        (
            "BUG: Bad page map in process sh  pte:8000000003c1a025 pmd:03b9e067",
            "BUG: Bad page map in process sh pte:ADDR pmd:ADDR",
        ),
        (
            "BUG: Bad rss-counter state mm:00000000a1b2c3d4 type:MM_ANONPAGES val:1 Comm:sh Pid:85",
            "BUG: Bad rss-counter state mm:ADDR type:MM_ANONPAGES val:1 Comm:sh Pid:N",
        ),
        (
            "BUG: kernel NULL pointer dereference, address: 0000000000000010",
            "BUG: kernel NULL pointer dereference, address: 0000000000000010",
        ),
    ],
)
def test_volatile_values_are_removed_but_small_offsets_kept(raw, stable):
    assert console.default_table().stable(raw) == stable


# -- allow list and table checks -----------------------------------------------------------


def test_allow_list_suppresses_only_the_matching_finding():
    table = with_allow_entry("^WARNING in uprobe_write_opcode$")
    assert scan(read("synthetic-warning.log"), table) == []
    assert (
        summary(scan(read("synthetic-sysrq-panic.log"), table))
        == EXPECTED["synthetic-sysrq-panic.log"]
    )


def test_shipped_allow_entries_are_justified():
    for entry in console.default_table().allow:
        assert entry.reason and entry.link.startswith("https://")


@pytest.mark.parametrize(
    ("addition", "complaint"),
    [
        (
            "[[allow]]\npattern = 'x'\nreason = 'because'\nlink = ''\n",
            "[[allow]] 1: an allow entry needs a non-empty reason and link",
        ),
        ("[[allow]]\npattern = 'x'\nreason = 'because'\n", "[[allow]] 1: missing key 'link'"),
        (
            "[[pattern]]\nname = 'bad'\nregex = '('\ntitle = 'x'\n",
            "(name = 'bad'): regex: bad regex '('",
        ),
        (
            "[[pattern]]\nname = 'bad'\nregex = 'x'\ntitle = 'in {func}'\n",
            "(name = 'bad'): title 'in {func}' uses func",
        ),
        (
            "[[pattern]]\nname = 'bad'\nregex = 'x'\ncontext = '(?P<f>y)'\ntitle = '{f}'\n",
            "(name = 'bad'): a pattern with 'context' needs a 'fallback' title",
        ),
        (
            "[[pattern]]\nname = 'bad'\nregex = 'x'\ntitle = 'x'\nkind = 'oops'\n",
            "(name = 'bad'): kind must be one of crashed, reboot, not 'oops'",
        ),
        (
            "[[pattern]]\nname = 'bad'\nregex = 'x'\ntitle = 'x'\nmax_line = 3\n",
            "(name = 'bad'): unknown key 'max_line'; known keys: name, regex, title",
        ),
        (
            "[[pattern]]\nname = 'bad'\nregex = 'x'\ntitle = 'x'\nmax_lines = '3'\n",
            "(name = 'bad'): max_lines: expected `int | null`, got `str`",
        ),
        ("[[volatile]]\nregex = 'x'\nreplace = 1\n", ": replace: expected `str`, got `int`"),
    ],
)
def test_table_mistakes_name_the_file_the_entry_and_the_key(tmp_path, addition, complaint):
    path = tmp_path / "patterns.toml"
    path.write_text(console.PATTERNS_FILE.read_text() + "\n" + addition)
    entry = r"patterns.toml: (?=\[\[\w+\]\] \d+)"  # the message names the entry
    with pytest.raises(DataError, match=entry + ".*" + re.escape(complaint)):
        console.load_table(path)
    with pytest.raises(DataError, match="^console patterns: "):
        parse_table(path.read_text())


def test_end_of_splat_mistakes_name_the_item():
    with pytest.raises(DataError, match=r"^shipped: top level: end_of_splat: item 1: bad regex"):
        parse_table(
            console.PATTERNS_FILE.read_text().replace("end_of_splat = [", "end_of_splat = ['[', "),
            source="shipped",
        )


# -- attribution ------------------------------------------------------------------------------


def test_window_attributes_a_splat_to_the_test_that_printed_it():
    text = read("synthetic-warning.log")

    def findings_of(test):
        part = window(text, f"uprobe-harness: BEGIN {test}", f"uprobe-harness: END {test}")
        return scan(part, boot_banner_expected=False)

    [finding] = findings_of("test_unregister_thp")
    assert (finding.title, finding.line_no) == ("WARNING in uprobe_write_opcode", 3)
    assert findings_of("test_register_unregister") == []
    assert findings_of("test_probe_hits[nop]") == []


def test_window_runs_to_the_end_when_the_guest_died_before_the_end_marker():
    text = read("synthetic-gpf.log")
    part = window(
        text,
        "uprobe-harness: BEGIN test_unregister_race[smp2]",
        "uprobe-harness: END test_unregister_race[smp2]",
    )
    assert part == window(text, "uprobe-harness: BEGIN test_unregister_race[smp2]", None)
    assert [f.title for f in scan(part)] == ["general protection fault in consumer_del"]


def test_window_needs_the_exact_begin_marker():
    text = read("synthetic-warning.log")
    with pytest.raises(ValueError, match="BEGIN test_probe'"):
        window(text, "uprobe-harness: BEGIN test_probe", None)


def test_window_of_a_rerun_test_is_its_last_run():
    text = splat(
        "uprobe-harness: BEGIN t",
        "first run",
        "uprobe-harness: END t",
        "uprobe-harness: BEGIN t",
        "second run",
        "uprobe-harness: END t",
        "after",
    )
    assert window(text, "uprobe-harness: BEGIN t", "uprobe-harness: END t").endswith("second run")


def test_boot_banner_inside_a_test_window_is_a_reboot():
    text = read("synthetic-reboot.log")
    part = window(text, "uprobe-harness: BEGIN test_xol_slot_exhaustion", None)
    assert scan(part) == []  # alone, the banner looks like the boot
    assert summary(scan(part, boot_banner_expected=False)) == EXPECTED["synthetic-reboot.log"]


# -- incremental watching -----------------------------------------------------------------


@pytest.mark.parametrize("path", LOGS, ids=lambda path: path.name)
@pytest.mark.parametrize("seed", range(3))
def test_watch_fed_in_random_chunks_equals_batch_scan(path, seed):
    text = console.read_log(path)
    rng = random.Random(seed)
    watch, streamed, position = ConsoleWatch(), [], 0
    while position < len(text):
        size = rng.choice([1, 2, 3, 5, 17, 64, 300])
        streamed += watch.feed(text[position : position + size])
        position += size
        if rng.random() < 0.05:
            assert watch.findings == scan(watch.text)
    streamed += watch.finish()
    assert watch.text == text
    assert streamed == watch.findings == scan(text)


def test_watch_reports_a_warning_as_soon_as_its_end_marker_arrives():
    text = read("synthetic-warning.log")
    cut = text.index("---[ end trace")
    cut = text.index("\n", cut) + 1
    watch = ConsoleWatch()
    assert [f.title for f in watch.feed(text[:cut])] == ["WARNING in uprobe_write_opcode"]
    assert watch.feed(text[cut:]) == []


def test_watch_findings_include_a_splat_still_being_printed():
    text = read("synthetic-gpf.log")
    cut = text.index("RIP: 0010:consumer_del") + len("RIP: 0010:consumer_del+0x2a")
    watch = ConsoleWatch()
    assert watch.feed(text[:cut]) == []
    assert [f.title for f in watch.findings] == ["general protection fault in consumer_del"]


# -- command line -----------------------------------------------------------------------------


def test_main_exit_codes_and_output(capsys):
    assert cli.main(["console", str(DATA / "synthetic-clean-boot.log")]) == 0
    assert "clean" in capsys.readouterr().out
    assert cli.main(["console", str(DATA / "synthetic-warning.log")]) == 1
    out = capsys.readouterr().out
    assert "line 89: crashed [warning] WARNING in uprobe_write_opcode" in out


def test_main_json(capsys):
    assert cli.main(["console", str(DATA / "synthetic-soft-lockup.log"), "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert [f["title"] for f in findings] == ["BUG: soft lockup in handle_swbp"] * 2
    assert {"kind", "signature", "title", "line_no", "excerpt"} == set(findings[0])


def test_main_unreadable_log(tmp_path, capsys):
    missing = tmp_path / "no-such.log"
    assert cli.main(["console", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    assert cli.main(["console", str(tmp_path)]) == 2  # a directory


def test_format_findings_without_excerpts():
    findings = scan(read("synthetic-gpf.log"))
    assert console.format_findings(findings, excerpts=False) == (
        "1 finding(s):\nline 85: crashed [gpf] general protection fault in consumer_del"
    )
    assert console.format_findings([]) == "clean: no kernel splats found"
