from harness import known_bugs

BUG = known_bugs.KnownBug(("test_profile*?smp4?",), ("debian:6.1",), "*per-CPU*", "lost hits", "")


def test_applies_to_stock_kernel_only():
    assert BUG.applies("test_profile_counts_every_hit[smp4]", "debian:6.1", [])
    assert not BUG.applies("test_profile_counts_every_hit[smp1]", "debian:6.1", [])
    assert not BUG.applies("test_profile_counts_every_hit[smp4]", "debian:6.12", [])
    assert not BUG.applies("test_profile_counts_every_hit[smp4]", "debian:6.1",
                           ["0001-tracing-uprobes-count-hits-per-CPU.patch"])


def test_shipped_table_loads_with_reasons():
    bugs = known_bugs.load()
    assert bugs and all(b.reason and b.kernels for b in bugs)


def test_brackets_are_literal_through_question_marks():
    bug = known_bugs.KnownBug(("t?uffd-push?",), ("*",), "", "r", "")
    assert bug.applies("t[uffd-push]", "debian:6.12", [])
    assert not bug.applies("t[uffd-push_r12]", "debian:6.12", [])
