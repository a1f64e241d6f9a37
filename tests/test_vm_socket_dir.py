"""Short QMP socket directories: named after their creator, removed once it is gone."""

import os
import subprocess

from harness import vm


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_dirs_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{_dead_pid()}-abc"
    alive = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{vm.SOCKET_DIR_PREFIX}x1y2-ghi"     # not ours to judge
    other = tmp_path / "unrelated-123-dir"
    for directory in (dead, alive, unnamed, other):
        directory.mkdir()
        (directory / "qmp.sock").write_text("")
    removed = vm.remove_stale_socket_dirs(tmp_path)
    assert removed == [dead]
    assert not dead.exists()
    assert alive.exists() and unnamed.exists() and other.exists()


def test_symlinked_entry_is_left_alone(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{_dead_pid()}-lnk"
    link.symlink_to(target)
    assert vm.remove_stale_socket_dirs(tmp_path) == []
    assert target.exists()


def test_short_socket_dir_is_short_and_carries_the_pid(monkeypatch, tmp_path):
    monkeypatch.setattr(vm.tempfile, "gettempdir", lambda: str(tmp_path))
    stale = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{_dead_pid()}-old"
    stale.mkdir()
    directory = vm.short_socket_dir()
    assert directory.parent == tmp_path
    assert directory.name.startswith(f"{vm.SOCKET_DIR_PREFIX}{os.getpid()}-")
    assert not stale.exists()
