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
