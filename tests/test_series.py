import subprocess

import pytest

from harness.build import series
from harness.errors import PatchError

GOOD = """From: A <a@example.org>
Subject: [PATCH 1/1] count atomically

---
diff --git a/kernel/counter.c b/kernel/counter.c
--- a/kernel/counter.c
+++ b/kernel/counter.c
@@ -1,5 +1,5 @@
 int nhit;
 void hit(void)
 {
-\tnhit++;
+\t__atomic_add_fetch(&nhit, 1, 0);
 }
"""

BAD = GOOD.replace("-\tnhit++;", "-\tnhit += 2;")


def write_series(directory, patches, series_text=None):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in patches.items():
        (directory / name).write_text(text)
    (directory / "series").write_text(series_text or "\n".join(patches) + "\n")
    return directory


def test_quilt_series_comments_and_strip_level(tmp_path):
    d = write_series(
        tmp_path / "s",
        {"a.patch": GOOD, "b.patch": GOOD},
        "# leading comment\na.patch -p1  # trailing comment\n\nb.patch -p0\n",
    )
    loaded = series.load_series(d)
    assert [p.name for p in loaded.patches] == ["a.patch", "b.patch"]
    assert [p.strip for p in loaded.patches] == [1, 0]
    assert loaded.patches[1].origin.endswith("series:4")


def test_missing_patch_file_names_series_line(tmp_path):
    d = write_series(tmp_path / "s", {"a.patch": GOOD}, "a.patch\nmissing.patch\n")
    with pytest.raises(PatchError, match=r"series:2: patch file 'missing.patch'"):
        series.load_series(d)


@pytest.mark.parametrize("name", ["../outside.patch", "ABSOLUTE", "link.patch"])
def test_a_series_names_only_patches_in_its_directory(tmp_path, name):
    (tmp_path / "outside.patch").write_text(GOOD)
    d = write_series(tmp_path / "s", {"a.patch": GOOD})
    (d / "link.patch").symlink_to(tmp_path / "outside.patch")
    name = str(tmp_path / "outside.patch") if name == "ABSOLUTE" else name
    (d / "series").write_text(f"a.patch\n{name}\n")
    with pytest.raises(PatchError, match=r"series:2: patch file .* lies outside"):
        series.load_series(d)


def test_a_known_bad_series_may_reuse_the_default_series_patches():
    mutant = series.load_series("known-bad/mainline-trampoline-pop-order")
    assert mutant.patches[0].name.startswith("../../uprobes-7.3-fixes/")


def test_unknown_option_rejected(tmp_path):
    d = write_series(tmp_path / "s", {"a.patch": GOOD}, "a.patch -R\n")
    with pytest.raises(PatchError, match="unsupported option '-R'"):
        series.load_series(d)


def test_unknown_series_lists_known_ones():
    with pytest.raises(PatchError, match="uprobes-6.1-fixes"):
        series.load_series("no-such-series")


def test_none_means_no_patches():
    assert not series.load_series("none")
    assert series.load_series(None) == series.NO_SERIES


def test_shipped_series_parses():
    shipped = series.load_series("uprobes-6.1-fixes")
    assert shipped.patches and all(b"+++ b/" in p.text for p in shipped.patches)


def test_mbox_split_skips_cover_letter(tmp_path):
    cover = (
        "From git@z Thu Jan  1 00:00:00 1970\nFrom: A <a@example.org>\n"
        "Subject: [PATCH 0/2] cover\n\nThe cover letter.\n\n"
    )
    member = "From git@z Thu Jan  1 00:00:00 1970\n" + GOOD + "\n"
    second = member.replace("[PATCH 1/1] count atomically", "[PATCH 2/2] again")
    mbox = tmp_path / "series.mbox"
    mbox.write_text(cover + member + second)
    loaded = series.load_series(mbox)
    assert len(loaded.patches) == 2
    assert "again" in loaded.patches[1].name


def test_digest_changes_with_content(tmp_path):
    a = series.load_series(write_series(tmp_path / "a", {"x.patch": GOOD}))
    b = series.load_series(write_series(tmp_path / "b", {"x.patch": GOOD + "\n"}))
    assert a.digest != b.digest


def test_apply_good_patch(git_tree, tmp_path):
    s = series.load_series(write_series(tmp_path / "s", {"good.patch": GOOD}))
    series.apply_series(s, git_tree, "tiny")
    assert "__atomic_add_fetch" in (git_tree / "kernel" / "counter.c").read_text()


def test_bad_patch_message_names_series_patch_and_hunk(git_tree, tmp_path):
    s = series.load_series(
        write_series(tmp_path / "my-series", {"good.patch": GOOD, "bad.patch": BAD}, "bad.patch\n")
    )
    with pytest.raises(PatchError) as caught:
        series.apply_series(s, git_tree, "tiny tree")
    message = str(caught.value)
    assert "'my-series'" in message and "'bad.patch'" in message
    assert "kernel/counter.c:1" in message and "tiny tree" in message
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=git_tree, capture_output=True, text=True
    ).stdout
    assert status == "", "a failed git apply must leave no partial change"
