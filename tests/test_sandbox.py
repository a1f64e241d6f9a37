"""The build sandbox: a malicious series (its Makefile runs as root in the kernel build)
cannot write outside the tree and build directory, cannot reach the network (not even the
host's loopback), and cannot read the home directories; the build itself still works."""

import socket
import subprocess
import threading

from harness.build import sandbox

MAKEFILE = """\
all:
\techo built > $(OUT)/result
\t-echo escaped > {outside}/escaped
\t-echo root > /etc/uph-sandbox-probe
\t-python3 -c 'import socket; socket.create_connection(("127.0.0.1", {port}), 2)' \\
\t    && echo connected > $(OUT)/network
\t-cat {secret} > $(OUT)/secret
"""


def test_a_malicious_makefile_is_contained(tmp_path, monkeypatch):
    tree, out, outside = tmp_path / "tree", tmp_path / "build", tmp_path / "outside"
    for path in (tree, out, outside):
        path.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept, daemon=True).start()
    secret = sandbox.HIDDEN[0] + "/uph-sandbox-secret"
    with open(secret, "w") as handle:
        handle.write("key material")
    try:
        (tree / "Makefile").write_text(
            MAKEFILE.format(outside=outside, port=listener.getsockname()[1], secret=secret)
        )
        monkeypatch.setenv("UPROBE_HARNESS_SANDBOX", "on")
        cmd = sandbox.wrap(["make", "-C", str(tree), f"OUT={out}"], [tree, out], cwd=tree)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (out / "result").read_text() == "built\n"  # the build itself works
        assert not (outside / "escaped").exists()
        assert not (out / "network").exists() and not accepted
        assert not (out / "secret").exists() or (out / "secret").read_text() == ""
        assert not subprocess.run(["test", "-e", "/etc/uph-sandbox-probe"]).returncode == 0
    finally:
        listener.close()
        subprocess.run(["rm", "-f", secret, "/etc/uph-sandbox-probe"])


def test_off_means_unwrapped(monkeypatch):
    monkeypatch.setenv("UPROBE_HARNESS_SANDBOX", "off")
    assert sandbox.wrap(["make"], []) == ["make"]


def test_no_capabilities_and_a_read_only_git_directory(tmp_path):
    """Root without capabilities cannot remount the read-only host writable; a tree's .git
    (where git later runs unsandboxed) cannot be written."""
    tree = tmp_path / "tree"
    (tree / ".git").mkdir(parents=True)
    cmd = sandbox.wrap(
        [
            "sh",
            "-c",
            "grep CapEff /proc/self/status; "
            "mount -o remount,bind,rw / 2>/dev/null && echo REMOUNTED; "
            "echo x > .git/config 2>/dev/null && echo GIT_WRITTEN; "
            "echo y > built 2>/dev/null && echo TREE_WRITTEN",
        ],
        [tree],
        cwd=tree,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert "CapEff:\t0000000000000000" in out, out
    assert "REMOUNTED" not in out and "GIT_WRITTEN" not in out
    assert "TREE_WRITTEN" in out and (tree / "built").read_text() == "y\n"


def test_every_tree_is_built_at_the_same_place(tmp_path, monkeypatch):
    """Two trees and their build directories are seen at the same two paths: the step runs
    in the tree (as seen), writes land in the real directories, the .git stays read-only."""
    monkeypatch.setenv("UPROBE_HARNESS_SANDBOX", "on")
    seen = set()
    for name in ("one", "two"):
        tree, build = tmp_path / name / "tree", tmp_path / name / "build"
        (tree / ".git").mkdir(parents=True)
        view = sandbox.build_view(tree, build)
        script = (
            f"pwd; echo {name} > {view.seen_build_dir}/out; "
            "echo x > .git/config 2>/dev/null && echo GIT_WRITTEN"
        )
        out = subprocess.run(
            view.wrap(["sh", "-c", script]), capture_output=True, text=True, timeout=60
        ).stdout
        assert "GIT_WRITTEN" not in out
        assert (build / "out").read_text() == f"{name}\n"
        seen.add((out.splitlines()[0], view.seen_build_dir))
    assert seen == {(str(sandbox.SEEN_TREE), sandbox.SEEN_BUILD)}


def test_without_the_sandbox_a_tree_is_built_where_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("UPROBE_HARNESS_SANDBOX", "off")
    view = sandbox.build_view(tmp_path / "tree", tmp_path / "build")
    assert (view.seen_tree, view.seen_build_dir) == (tmp_path / "tree", tmp_path / "build")


def test_ccache_shares_objects_between_trees(tmp_path, monkeypatch):
    """The reason for the fixed places: the same file compiled in a second tree, with the
    absolute paths kbuild puts on the command line of an out-of-tree build, is a cache hit."""
    if sandbox.ccache_dir() is None:
        raise AssertionError("ccache is a dependency of the build (./run installs it)")
    monkeypatch.setenv("UPROBE_HARNESS_SANDBOX", "on")
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "ccache"))
    sandbox.ccache_dir.cache_clear()
    try:
        stats = []
        for name in ("one", "two"):
            tree, build = tmp_path / name / "tree", tmp_path / name / "build"
            (tree / "include").mkdir(parents=True)
            build.mkdir()
            (tree / "include" / "answer.h").write_text("#define ANSWER 42\n")
            (tree / "x.c").write_text('#include "answer.h"\nint f(void) { return ANSWER; }\n')
            view = sandbox.build_view(tree, build)
            compile_ = (
                f"ccache gcc -I{view.seen_tree}/include -c {view.seen_tree}/x.c "
                f"-o {view.seen_build_dir}/x.o && ccache --print-stats"
            )
            out = subprocess.run(
                view.wrap(["sh", "-c", compile_]), capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            assert (build / "x.o").is_file()
            counters = dict(line.split("\t") for line in out.stdout.splitlines() if "\t" in line)
            stats.append((int(counters["direct_cache_hit"]), int(counters["cache_miss"])))
        assert stats == [(0, 1), (1, 1)]
    finally:
        sandbox.ccache_dir.cache_clear()
