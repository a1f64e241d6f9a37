"""Integration: boot the default kernel under QEMU. Exit status, crash verdicts, an
unresponsive guest, parallel VMs, and no QEMU left behind however the harness ends."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from harness.build import kernel
from harness.errors import InfraError
from harness.machine import console, image
from harness.machine.vm import VM, MachineSpec
from harness.paths import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built():
    return kernel.build(kernel.BuildRequest())


@pytest.fixture(scope="module")
def img():
    return image.build_image()


def qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_boot_run_command_and_exit_status(built, img):
    with VM(built, img, MachineSpec(smp=2)) as vm:
        assert vm.record.vcpus_seen == 2 and vm.record.accel in ("tcg", "kvm")
        result = vm.ssh.run(["sh", "-c", "echo hello; exit 7"])
        assert (result.status, result.stdout) == (7, "hello\n")
        assert result.signal is None and result.describe() == "status 7"
        # a command killed by a signal: the SSH server reports the signal, not a status
        killed = vm.ssh.run(["sh", "-c", "echo before; kill -SEGV $$"])
        assert (killed.signal, killed.status, killed.stdout) == ("SIGSEGV", 139, "before\n")
        assert killed.describe() == "killed by SIGSEGV"
        assert vm.ssh.run(["true"]).ok, "the session stays usable after a killed command"
        quoted = vm.ssh.run(["echo", "a b; $(id)"])
        assert quoted.stdout == "a b; $(id)\n", "arguments must be quoted, never interpreted"
        vm.ssh.put(b"payload\x00\x01", "/tmp/x", mode=0o600)
        assert vm.ssh.get("/tmp/x") == b"payload\x00\x01"
    assert not vm.alive()


def test_cli_boot_propagates_exit_status():
    result = subprocess.run(
        [sys.executable, "-m", "harness", "boot", "--", "sh", "-c", "exit 3"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr


def test_forced_panic_gives_verdict_and_no_leftover(built, img, tmp_path):
    vm = VM(built, img, MachineSpec(smp=1), workdir=tmp_path / "vm")
    vm.start()
    pid = vm._child.pid
    try:
        vm.ssh.run("echo c > /proc/sysrq-trigger", timeout=10)
    except Exception:
        pass  # the connection dies with the kernel
    deadline = time.monotonic() + 60
    while vm.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not vm.alive(), "panic=-1 with -no-reboot must end QEMU"
    vm.shutdown()
    findings = console.scan(vm.console_text())
    assert findings, vm.console_text()[-2000:]
    assert "sysrq" in findings[0].title.lower() or "panic" in findings[0].title.lower()
    assert "Call Trace" in findings[0].excerpt or "panic" in findings[0].excerpt
    assert wait_gone(pid, 5)
    saved = tmp_path / "vm" / "console.log"
    assert console.scan_file(saved), "the saved log re-parses to the same verdict"


def test_hung_guest_is_unresponsive_within_bound(built, img):
    with VM(built, img, MachineSpec(smp=1)) as vm:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(vm.qmp_socket))
        qmp.connect()
        qmp.cmd("stop")  # the guest freezes: no console, no SSH
        started = time.monotonic()
        assert not vm.responsive(silence_s=5)
        assert time.monotonic() - started < 30
        qmp.close()


def test_two_vms_boot_in_parallel(built, img):
    vms, errors = [], []

    def boot():
        try:
            vms.append(VM(built, img, MachineSpec(smp=1)).start())
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=boot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert len({vm.port for vm in vms}) == 2
        assert all(vm.ssh.run("true").ok for vm in vms)
    finally:
        for vm in vms:
            vm.shutdown()


SCRIPT = textwrap.dedent("""
    import sys, time
    from harness.machine import image
    from harness.build import kernel
    from harness.machine.vm import VM, MachineSpec
    vm = VM(kernel.build(kernel.BuildRequest()), image.build_image(), MachineSpec(),
            workdir=sys.argv[1]).start()  # under the test's tmp_path: no /tmp/uph-vm-* left
    print(vm._child.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_qemu_dies_with_the_harness(built, img, how, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "vm")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        qemu_pid = int(proc.stdout.readline())
        proc.send_signal(how)
        proc.wait(timeout=30)
        assert wait_gone(qemu_pid, 10), f"QEMU {qemu_pid} outlived the harness ({how.name})"
    finally:
        proc.kill()


def test_missing_qemu_is_an_infra_error(built, img, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InfraError, match="qemu-system-x86"):
        VM(built, img, MachineSpec(accel="tcg")).start()
