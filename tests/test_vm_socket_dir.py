"""Short QMP socket directories: named after their creator, removed once it is gone."""

import os
import subprocess

from harness.machine import vm


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_dirs_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{_dead_pid()}-abc"
    alive = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{vm.SOCKET_DIR_PREFIX}x1y2-ghi"  # not ours to judge
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


def test_liveness_is_the_owner_lock_not_the_pid(tmp_path, monkeypatch):
    """/tmp shared by pid namespaces: a directory whose name carries a pid that is alive
    here but whose owner lock is free is stale; one whose lock is held is alive, whatever
    its pid says."""
    monkeypatch.setattr(vm.tempfile, "gettempdir", lambda: str(tmp_path))
    mine = vm.short_socket_dir()  # locked by this process
    reused = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{os.getpid()}-other"  # another namespace
    reused.mkdir()
    (reused / vm.OWNER_LOCK).write_text("")
    held = tmp_path / f"{vm.SOCKET_DIR_PREFIX}{_dead_pid()}-held"
    held.mkdir()
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'wb'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
            str(held / vm.OWNER_LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert vm.remove_stale_socket_dirs(tmp_path) == [reused]
        assert mine.exists() and held.exists()
    finally:
        holder.kill()
        holder.wait()
    vm.release_socket_dir(mine)
    assert not mine.exists()
