import pytest

from harness.errors import HarnessError
from harness.results import known_bugs

BUG = known_bugs.KnownBug(
    ("test_profile*?smp4?",), ("debian:6.1",), ("*per-CPU*",), "lost hits", ""
)


def test_applies_to_stock_kernel_only():
    assert BUG.applies("test_profile_counts_every_hit[smp4]", "debian:6.1", [])
    assert not BUG.applies("test_profile_counts_every_hit[smp1]", "debian:6.1", [])
    assert not BUG.applies("test_profile_counts_every_hit[smp4]", "debian:6.12", [])
    assert not BUG.applies(
        "test_profile_counts_every_hit[smp4]",
        "debian:6.1",
        ["0001-tracing-uprobes-count-hits-per-CPU.patch"],
    )


def test_shipped_table_loads_with_reasons():
    bugs = known_bugs.load()
    assert bugs and all(b.reason and b.kernels for b in bugs)


def test_brackets_are_literal_through_question_marks():
    bug = known_bugs.KnownBug(("t?uffd-push?",), ("*",), (), "r", "")
    assert bug.applies("t[uffd-push]", "debian:6.12", [])
    assert not bug.applies("t[uffd-push_r12]", "debian:6.12", [])


def test_fixed_upstream_exempts_that_version_and_newer():
    bug = known_bugs.KnownBug(("t",), ("*",), (), "r", "", fixed_upstream="6.12")
    assert bug.applies("t", "debian:6.1", [], "6.1.192")
    assert not bug.applies("t", "debian:6.12", [], "6.12.117")
    assert not bug.applies("t", "debian:7.3", [], "7.3.0-rc7")
    assert bug.applies("t", "/src/linux@v6.11", [], "6.11.0")
    assert bug.applies("t", "/boot/vmlinuz", [], "")  # unknown release: still expected


def test_shipped_table_marks_the_upstream_fixes():
    bugs = {b.test[0]: b for b in known_bugs.load()}
    assert bugs["test_profile_counts_every_hit?smp4?"].fixed_upstream == "6.12"
    assert bugs["sweep:branch-4190"].fixed_upstream == "7.2"


def _write(tmp_path, text):
    path = tmp_path / "known_bugs.toml"
    path.write_text(text)
    return path


def test_table_errors_name_the_file_the_entry_and_the_key(tmp_path):
    with pytest.raises(
        HarnessError,
        match=r"known_bugs.toml: \[\[bug\]\] 1 \(test = 'a'\): "
        r"kernels: expected `array`, got `str`",
    ):
        known_bugs.load(_write(tmp_path, '[[bug]]\ntest="a"\nkernels="*"\nreason="r"\n'))
    with pytest.raises(HarnessError, match=r"\[\[bug\]\] 2 \(test = 'b'\): missing key 'reason'"):
        known_bugs.load(
            _write(
                tmp_path,
                '[[bug]]\ntest="a"\nkernels=["*"]\nreason="r"\n[[bug]]\ntest="b"\nkernels=["*"]\n',
            )
        )
    with pytest.raises(
        HarnessError,
        match=r"\[\[bug\]\] 1 \(test = 'a'\): unknown key "
        r"'fixed_in'; known keys: test, kernels",
    ):
        known_bugs.load(
            _write(tmp_path, '[[bug]]\ntest="a"\nkernels=["*"]\nreason="r"\nfixed_in="7.2"\n')
        )
    with pytest.raises(HarnessError, match=r"fixed_upstream = 'soon' is not a version"):
        known_bugs.load(
            _write(
                tmp_path, '[[bug]]\ntest="a"\nkernels=["*"]\nreason="r"\nfixed_upstream="soon"\n'
            )
        )


def test_stale_message_says_how_to_record_the_fix():
    message = BUG.stale_message("debian:7.3 (7.3~rc7-1~exp1)")
    assert "stale" in message and "debian:7.3" in message and "fixed_upstream" in message


def test_a_splat_entry_explains_only_its_own_crash(tmp_path):
    table = tmp_path / "bugs.toml"
    table.write_text(
        '[[bug]]\ntest = "test_x"\nkernels = ["*"]\nreason = "r"\n'
        'splat = "WARNING"\n[[bug]]\ntest = "test_y"\nkernels = ["*"]\n'
        'reason = "r"\n'
    )
    with_splat, without = known_bugs.load(table)
    assert with_splat.explains_crash("kernel WARNING: CPU: 0 PID: 1 at uprobes.c:1")
    assert not with_splat.explains_crash("kernel Oops: general protection fault")
    assert not without.explains_crash("kernel WARNING: CPU: 0 PID: 1 at uprobes.c:1")
