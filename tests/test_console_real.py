"""Console logs recorded from real boots of the default kernel (debian:6.1 + series)."""

from pathlib import Path

from harness import console

DATA = Path(__file__).parent / "data" / "console"


def test_real_clean_boot_has_no_findings():
    assert console.scan_file(DATA / "real-6.1-clean-boot.log") == []


def test_real_sysrq_panic_is_one_crash_with_trace():
    findings = console.scan_file(DATA / "real-6.1-sysrq-panic.log")
    assert [f.title for f in findings] == ["Kernel panic - not syncing: sysrq triggered crash"]
    assert "Call Trace" in findings[0].excerpt
