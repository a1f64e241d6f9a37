"""The QEMU machine definition (harness/configs/qemu_x86_64.toml) is typed data."""

import pytest

from harness import data
from harness.machine import vm
from harness.paths import CONFIGS_DIR

SHIPPED = (CONFIGS_DIR / "qemu_x86_64.toml").read_text()


def test_shipped_machine_loads():
    assert vm.MACHINE.binary == "qemu-system-x86_64"
    assert "panic=-1" in vm.MACHINE.cmdline and vm.MACHINE.boot_timeout_s > 0


def test_machine_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "qemu_x86_64.toml"
    path.write_text(SHIPPED + "smp = 2\n")
    with pytest.raises(
        data.DataError,
        match=r"qemu_x86_64.toml: top level: unknown key 'smp'; "
        r"known keys: binary, machine",
    ):
        data.load(path, vm.Machine)
    path.write_text(SHIPPED.replace("memory_mb = 512", 'memory_mb = "512M"'))
    with pytest.raises(
        data.DataError,
        match=r"qemu_x86_64.toml: top level: memory_mb: "
        r"expected `int`, got `str`",
    ):
        data.load(path, vm.Machine)
