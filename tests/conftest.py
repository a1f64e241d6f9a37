import subprocess

import pytest


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
