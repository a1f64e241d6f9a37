import signal
import subprocess

import pytest

# A run started in the background by a non-interactive shell (`./run tests &`, nohup, some CI
# runners) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every
# process a test starts would ignore it too, and the tests that interrupt a harness with
# SIGINT would wait for nothing. A handler (not inherited across exec) gives them the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point the harness cache at a temporary directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("UPROBE_HARNESS_CACHE", str(cache))
    return cache


@pytest.fixture
def git_tree(tmp_path):
    """A tiny git repository standing in for a kernel tree."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "kernel").mkdir()
    (tree / "kernel" / "counter.c").write_text("int nhit;\nvoid hit(void)\n{\n\tnhit++;\n}\n")
    (tree / "Kconfig").write_text(
        'config FOO\n\tbool "foo"\n\tdepends on BAR && !BAZ\n\nconfig BAR\n\tbool\n'
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=tree, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tree, check=True)
    subprocess.run(git + ["commit", "-qm", "base"], cwd=tree, check=True)
    return tree
