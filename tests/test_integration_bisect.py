"""End to end: bisect a local git history built from the Debian 6.1 source.

The history (kept in the cache so that CI reruns reuse its builds):
  base  pristine debian:6.1
  1-3   harmless comment changes in uprobes code
  4     breaks the build (the bisect must skip it)
  5     fixes the build
  6     THE BUG: x86 uprobes forget to restore the scratch register after a
        RIP-relative instruction ran out of line (the riprel family sees it)
  7-8   harmless
  9     THE FIX: the scratch register is restored again
  10    harmless
"""

import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT, cache_dir

pytestmark = pytest.mark.slow

SELECTION = ["-k", "test_riprel_instruction_transparent and load_rax"]
RESTORE = "\t\t*sr = utask->autask.saved_scratch_register;\n"
FORGET = "\t\t(void)sr;\t/* the scratch register is not restored */\n"
GIT = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost", "-c", "commit.gpgsign=false"]


def git(repo, *args):
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def commit(repo, subject):
    subprocess.run(GIT + ["commit", "-qam", subject], cwd=repo, check=True)
    return git(repo, "rev-parse", "HEAD")


def append(repo, path, text):
    with open(repo / path, "a") as handle:
        handle.write(text)


def replace(repo, path, old, new):
    file = repo / path
    content = file.read_text()
    assert old in content, f"{old!r} not in {path}"
    file.write_text(content.replace(old, new, 1))


def build_history(repo):
    from harness.build import sources

    pristine = sources.prepare(sources.parse_spec("debian:6.1")).tree
    subprocess.run(["git", "clone", "-q", "--shared", str(pristine), str(repo)], check=True)
    shas = {"base": git(repo, "rev-parse", "HEAD")}
    x86, core, trace = (
        "arch/x86/kernel/uprobes.c",
        "kernel/events/uprobes.c",
        "kernel/trace/trace_uprobe.c",
    )
    steps = [
        ("c1", lambda: append(repo, core, "/* e2e: comment 1 */\n"), "uprobes: comment 1"),
        ("c2", lambda: append(repo, x86, "/* e2e: comment 2 */\n"), "x86/uprobes: comment 2"),
        ("c3", lambda: append(repo, trace, "/* e2e: comment 3 */\n"), "tracing: comment 3"),
        (
            "broken",
            lambda: append(repo, trace, "#error e2e: the build is broken here\n"),
            "tracing/uprobes: break the build",
        ),
        (
            "fixed-build",
            lambda: replace(repo, trace, "#error e2e: the build is broken here\n", ""),
            "tracing/uprobes: repair the build",
        ),
        (
            "bug",
            lambda: replace(repo, x86, RESTORE, FORGET),
            "x86/uprobes: do not restore the scratch register",
        ),
        ("c7", lambda: append(repo, core, "/* e2e: comment 7 */\n"), "uprobes: comment 7"),
        ("c8", lambda: append(repo, trace, "/* e2e: comment 8 */\n"), "tracing: comment 8"),
        (
            "fix",
            lambda: replace(repo, x86, FORGET, RESTORE),
            "x86/uprobes: restore the scratch register again",
        ),
        ("c10", lambda: append(repo, core, "/* e2e: comment 10 */\n"), "uprobes: comment 10"),
    ]
    for name, change, subject in steps:
        change()
        shas[name] = commit(repo, subject)
    git(repo, "tag", "e2e-complete")
    return shas


@pytest.fixture(scope="module")
def history():
    repo = cache_dir("e2e") / "bisect-linux"
    if (
        repo.exists()
        and subprocess.run(
            ["git", "rev-parse", "-q", "--verify", "e2e-complete"], cwd=repo, capture_output=True
        ).returncode
        != 0
    ):
        import shutil

        shutil.rmtree(repo)
    if not repo.exists():
        shas = build_history(repo)
    else:
        subjects = git(repo, "log", "--format=%H %s", "e2e-complete").splitlines()
        by_subject = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in subjects}
        shas = {
            "base": git(repo, "rev-list", "--max-parents=0", "HEAD"),
            "broken": by_subject["tracing/uprobes: break the build"],
            "bug": by_subject["x86/uprobes: do not restore the scratch register"],
            "c8": by_subject["tracing: comment 8"],
            "fix": by_subject["x86/uprobes: restore the scratch register again"],
            "c10": by_subject["uprobes: comment 10"],
        }
    return repo, shas


def snapshot(repo):
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "symbolic-ref", "-q", "HEAD"),
        git(repo, "status", "--porcelain"),
        (repo / ".git" / "BISECT_LOG").exists(),
    )


def bisect(repo, *args, results):
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "bisect",
        "--kernel",
        str(repo),
        "--series",
        "none",
        "--smp",
        "1",
        "--results",
        str(results),
        *args,
        "--",
        *SELECTION,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)


def test_bisect_names_the_bug_and_skips_the_broken_build(history, tmp_path):
    repo, shas = history
    before = snapshot(repo)
    result = bisect(repo, "--good", shas["base"], "--bad", shas["c8"], results=tmp_path / "r")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"first bad commit: {shas['bug']}" in result.stdout
    assert "do not restore the scratch register" in result.stdout
    steps = result.stdout.split("first bad commit")[1]
    if shas["broken"][:12] in steps:
        line = next(s for s in steps.splitlines() if shas["broken"][:12] in s)
        assert "skip" in line
    assert (tmp_path / "r" / "bisect.log").exists()
    assert snapshot(repo) == before, "the bisected repository must be left untouched"


def test_find_fix_names_the_fixing_commit(history, tmp_path):
    repo, shas = history
    before = snapshot(repo)
    result = bisect(
        repo, "--find-fix", "--bad", shas["bug"], "--good", shas["c10"], results=tmp_path / "r"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"first fixed commit: {shas['fix']}" in result.stdout
    assert snapshot(repo) == before
