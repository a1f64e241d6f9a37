"""Console logs recorded from real boots of the default kernel (debian:6.1 + series)."""

from pathlib import Path

from harness.machine import console

DATA = Path(__file__).parent / "data" / "console"


def test_real_clean_boot_has_no_findings():
    assert console.scan_file(DATA / "real-6.1-clean-boot.log") == []


def test_real_sysrq_panic_is_one_crash_with_trace():
    findings = console.scan_file(DATA / "real-6.1-sysrq-panic.log")
    assert [f.title for f in findings] == ["Kernel panic - not syncing: sysrq triggered crash"]
    assert "Call Trace" in findings[0].excerpt


# Recorded with the LKDTM fragment (harness/configs/fragments/lkdtm.config), see
# tests/data/console/README.md for the commands.


def test_real_lkdtm_warning_is_one_warning_with_its_location():
    findings = console.scan_file(DATA / "real-6.1-lkdtm-warning.log")
    assert [(f.signature, f.title) for f in findings] == [("warning", "WARNING in lkdtm_WARNING")]
    assert "drivers/misc/lkdtm/bugs.c:85" in findings[0].excerpt
    assert "end trace" in findings[0].excerpt


def test_real_null_dereference_is_one_oops_not_three():
    """'BUG: kernel NULL pointer dereference', '#PF' and 'Oops: 0002' are one event."""
    findings = console.scan_file(DATA / "real-6.1-lkdtm-null-deref.log")
    assert [f.signature for f in findings] == ["null_deref"]
    assert findings[0].title.startswith("BUG: kernel NULL pointer dereference")
    assert "Oops: 0002" in findings[0].excerpt and "lkdtm_EXCEPTION" in findings[0].excerpt
