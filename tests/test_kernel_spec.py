import json

import pytest

from harness.build import kconfig, kernel, series, sources
from harness.errors import HarnessError, SourceError


def test_known_specs():
    spec = sources.parse_spec("debian:6.1")
    assert spec.kind == "debian" and spec.default_series == "uprobes-6.1-fixes"
    assert sources.parse_spec("").text == "debian:6.1"
    assert sources.parse_spec("debian:6.12").default_series == "uprobes-6.12-fixes"


def test_per_source_config_fragments_are_data_and_exist():
    """7.3 gets fragments/mainline.config after base.config (CONFIG_SYSCALL_USER_DISPATCH is
    not an option before 7.3); other sources get nothing extra; every named fragment parses."""
    assert sources.parse_spec("debian:6.1").source_fragments == ()
    assert sources.parse_spec("debian:7.2").source_fragments == ()
    mainline = sources.parse_spec("debian:7.3").source_fragments
    assert [p.name for p in mainline] == ["mainline.config"]
    for name in sources.KNOWN.sources:
        for path in sources.parse_spec(name).source_fragments:
            symbols = {o.symbol for o in kconfig.parse_fragment(path).options}
            assert symbols, f"{path} sets nothing"
    assert "CONFIG_SYSCALL_USER_DISPATCH" in {
        o.symbol for o in kconfig.parse_fragment(mainline[0]).options
    }


def test_kernels_table_errors_name_the_file_the_entry_and_the_key(tmp_path):
    path = tmp_path / "kernels.toml"
    entry = '[sources."debian:9.9"]\nkind = "debian"\npackage = "p"\nsuite = "sid"\n'
    defaults = '[defaults]\nkernel = "debian:9.9"\n'
    path.write_text(entry + "suit = 'sid'\n" + defaults)
    with pytest.raises(
        HarnessError,
        match=r'kernels.toml: \[sources."debian:9.9"\]: unknown key '
        r"'suit'; known keys: kind, package",
    ):
        sources.load_known(path)
    path.write_text(entry + "source_fragments = 'a.config'\n" + defaults)
    with pytest.raises(
        HarnessError,
        match=r'kernels.toml: \[sources."debian:9.9"\]: '
        r"source_fragments: expected `array`, got `str`",
    ):
        sources.load_known(path)
    path.write_text(entry + "tarball = '/x.tar.xz'\n" + defaults)
    with pytest.raises(HarnessError, match=r'\[sources."debian:9.9"\]: give exactly one of'):
        sources.load_known(path)
    path.write_text(entry + defaults.replace("9.9", "9"))
    with pytest.raises(HarnessError, match=r"\[defaults\]: kernel = 'debian:9' is not one"):
        sources.load_known(path)


def test_unknown_debian_version():
    with pytest.raises(SourceError, match="Unknown Debian kernel source 'debian:5.10'"):
        sources.parse_spec("debian:5.10")


def test_git_tree_and_revision(git_tree):
    spec = sources.parse_spec(f"{git_tree}@HEAD~0")
    assert spec.kind == "git" and spec.rev == "HEAD~0" and spec.path == git_tree


def test_plain_directory_is_rejected(tmp_path):
    with pytest.raises(SourceError, match="not a git repository"):
        sources.parse_spec(str(tmp_path))


def test_prebuilt_image(tmp_path):
    image = tmp_path / "vmlinuz-6.1.0-test"
    image.write_bytes(b"not really a kernel")
    built = kernel.prebuilt(sources.parse_spec(str(image)))
    assert built.bzimage == image and built.release == "6.1.0-test" and built.cached


def test_artefact_key_depends_on_every_input(tmp_path):
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_A=y\n")
    fragments = [kconfig.parse_fragment(frag)]
    patched = series.load_series("uprobes-6.1-fixes")
    base = kernel._artefact_key("src", series.NO_SERIES, fragments, "gcc 12")
    assert base == kernel._artefact_key("src", series.NO_SERIES, fragments, "gcc 12")
    assert base != kernel._artefact_key("src2", series.NO_SERIES, fragments, "gcc 12")
    assert base != kernel._artefact_key("src", patched, fragments, "gcc 12")
    assert base != kernel._artefact_key("src", series.NO_SERIES, fragments, "gcc 13")
    frag.write_text("CONFIG_A=n\n")
    assert base != kernel._artefact_key(
        "src", series.NO_SERIES, [kconfig.parse_fragment(frag)], "gcc 12"
    )


def test_git_source_never_touches_user_checkout(git_tree, isolated_cache):
    import subprocess

    head_before = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=git_tree, capture_output=True, text=True
    ).stdout
    (git_tree / "untracked.txt").write_text("user work in progress\n")
    source = sources.prepare(sources.parse_spec(f"{git_tree}@HEAD"))
    assert source.tree != git_tree and (source.tree / "kernel" / "counter.c").exists()
    (source.tree / "kernel" / "counter.c").write_text("modified in the cache\n")
    sources.prepare(sources.parse_spec(f"{git_tree}@HEAD"))
    assert "nhit++" in (source.tree / "kernel" / "counter.c").read_text(), "reset to pristine"
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=git_tree, capture_output=True, text=True
    ).stdout
    assert status == "?? untracked.txt\n"
    assert (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=git_tree, capture_output=True, text=True
        ).stdout
        == head_before
    )


def test_reset_survives_git_locks_left_by_a_killed_run(git_tree):
    """A harness SIGKILLed inside `git checkout` leaves .git/index.lock behind; the next
    build (holding the tree's lock, so no live git can own it) must not fail on it."""
    commit = sources.git(git_tree, "rev-parse", "HEAD")
    (git_tree / "kernel" / "counter.c").write_text("half-patched\n")
    (git_tree / ".git" / "index.lock").write_text("")
    (git_tree / ".git" / "HEAD.lock").write_text("")
    sources._reset(git_tree, commit)
    assert "nhit++" in (git_tree / "kernel" / "counter.c").read_text()
    assert not list((git_tree / ".git").glob("*.lock"))


def test_pinned_spec_names_the_commit_and_the_absolute_path(tmp_path, monkeypatch):
    """`main` hands pytest (which runs from the repository root, later) the kernel it built:
    a relative git tree at HEAD becomes its absolute path at the commit HEAD names now."""
    import subprocess

    tree = tmp_path / "linux"
    tree.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tree)]
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    first = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(tmp_path)
    pinned = sources.pinned_spec("linux@HEAD")
    assert pinned == f"{tree}@{first}"
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "two"], check=True)
    assert sources.parse_spec(pinned).rev == first  # still the built commit
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    assert sources.pinned_spec("bzImage") == str(image)
    assert sources.pinned_spec("debian:7.3") == "debian:7.3"


def test_one_git_tree_takes_one_lock_however_it_is_spelled(tmp_path, monkeypatch):
    import subprocess

    tree = tmp_path / "linux"
    tree.mkdir()
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    (tmp_path / "alias").symlink_to(tree)
    monkeypatch.chdir(tmp_path)
    names = {
        kernel.source_lock_name(sources.parse_spec(text))
        for text in ("linux@HEAD", "./linux", f"{tree}/@v1", "alias@HEAD")
    }
    assert len(names) == 1
    assert kernel.source_lock_name(sources.parse_spec("debian:6.1")) not in names


def test_a_tree_owned_by_another_user_gets_a_message_that_says_so(tmp_path, monkeypatch):
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("runs as root (it chowns a tree to another user)")
    monkeypatch.setenv("HOME", str(tmp_path))  # no global safe.directory
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    tree = tmp_path / "linux"
    tree.mkdir()
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-C",
            str(tree),
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "one",
        ],
        check=True,
    )
    subprocess.run(["chown", "-R", "65534:65534", str(tree)], check=True)
    with pytest.raises(SourceError, match="safe.directory"):
        sources.pinned_spec(f"{tree}@HEAD")


@pytest.mark.parametrize(
    "patch, touches",
    [
        (b"--- a/arch/x86/Kconfig\n+++ b/arch/x86/Kconfig\n", True),
        (b"--- a/init/Kconfig.old\n+++ /dev/null\n", True),  # a deleted Kconfig
        (b"--- a/kernel/configs/tiny.config\n+++ b/kernel/configs/tiny.config\n", True),
        (b"--- a/scripts/kconfig/merge_config.sh\n+++ b/scripts/kconfig/merge_config.sh\n", True),
        (b"diff --git a/x/Kconfig b/y/Kconfig\nrename from x/Kconfig\nrename to y/Kconfig\n", True),
        (b"--- a/scripts/cc-version.sh\n+++ b/scripts/cc-version.sh\n", True),  # Kconfig runs it
        (b"--- /dev/null\n+++ b/arch/x86/kernel/Makefile.extra\n", True),  # an added Makefile
        (b"--- a/arch/x86/kernel/uprobes.c\n+++ b/arch/x86/kernel/uprobes.c\n", False),
        (b"--- a/Documentation/kbuild/kconfig.rst\n+++ b/Documentation/kconfig.rst\n", False),
        (b"rename from tools/scripts/x.c\nrename to tools/scripts/y.c\n", False),
    ],
)
def test_what_counts_as_a_configuration_change(patch, touches):
    assert kernel.patch_touches_kconfig_inputs(patch) is touches


# a C file and one of each kind of configuration input
TREE_PATHS = (
    "arch/x86/kernel/uprobes.c",
    "arch/x86/Kconfig",
    "init/Kconfig.debug",
    "kernel/configs/tiny.config",
    "scripts/cc-version.sh",
    "arch/x86/kernel/Makefile",
)


@pytest.mark.parametrize("path", TREE_PATHS)
def test_a_patch_and_a_commit_agree_on_what_is_a_configuration_input(path):
    """One rule for both: a series patch reconfigures exactly when a commit changing the same
    file would."""
    patch = f"--- a/{path}\n+++ b/{path}\n".encode()
    assert kernel.patch_touches_kconfig_inputs(patch) is kernel.is_kconfig_input(path)


def _commit_tree(tree, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    sources.git(tree, "add", "-A")
    sources.git(tree, "commit", "-q", "-m", "edit")
    return sources.git(tree, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    "edited, reconfigures",
    [
        ("arch/x86/kernel/uprobes.c", False),  # a developer's edit: no new .config
        ("arch/x86/Kconfig", True),
        ("init/Kconfig.debug", True),
        ("kernel/configs/tiny.config", True),
        ("scripts/cc-version.sh", True),  # Kconfig runs it
        ("arch/x86/kernel/Makefile", True),
    ],
)
def test_a_commit_reconfigures_only_when_a_configuration_input_changed(
    tmp_path, edited, reconfigures
):
    """A git tree's build directory keeps its .config across commits that change no file
    the configuration is made from (the config stamp hashes those files' blob ids)."""
    tree = tmp_path / "linux"
    tree.mkdir()
    sources.git(tree, "init", "-q")
    files = dict.fromkeys(TREE_PATHS, "original\n")
    first = _commit_tree(tree, files)
    second = _commit_tree(tree, {edited: "edited\n"})

    def digest(commit):
        return kernel._kconfig_inputs(sources.Source(None, tree, commit, "", "", ""))

    assert (digest(first) != digest(second)) is reconfigures


def test_a_cached_kernel_is_recorded_under_the_series_asked_for(tmp_path):
    """The artefact key is content-addressed: a series first built from a temporary copy and
    later asked for as patches/NAME hits the same entry, whose metadata.json must then name
    NAME and its reproducer, not the vanished copy (other fields are kept)."""
    metadata = tmp_path / "metadata.json"
    metadata.write_text(
        '{"series": "tmpcopy", "reproducer": "python -m harness build --series /tmp/x", '
        '"patches": ["0001-a.patch"]}'
    )
    kernel._rename_series(metadata, "uprobes-6.1-fixes", "python -m harness build --series u")
    meta = json.loads(metadata.read_text())
    assert meta == {
        "series": "uprobes-6.1-fixes",
        "reproducer": "python -m harness build --series u",
        "patches": ["0001-a.patch"],
    }
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]  # no staging file left
