"""The QEMU machine definition (harness/configs/qemu_x86_64.toml) is typed data."""

from types import SimpleNamespace

import pytest

from harness import data
from harness.errors import InfraError
from harness.machine import vm
from harness.paths import CONFIGS_DIR

SHIPPED = (CONFIGS_DIR / "qemu_x86_64.toml").read_text()


def test_shipped_machine_loads():
    assert vm.MACHINE.binary == "qemu-system-x86_64"
    assert "panic=-1" in vm.MACHINE.cmdline and vm.MACHINE.boot_timeout_s > 0


def test_machine_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "qemu_x86_64.toml"
    path.write_text("smp = 2\n" + SHIPPED)
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


def _config(tmp_path, *options):
    path = tmp_path / ".config"
    path.write_text("".join(f"{o}=y\n" for o in options) + "# CONFIG_PCI is not set\n")
    return path


MICROVM_OPTIONS = ("CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_X86_MPPARSE")


def test_auto_takes_microvm_where_the_kernel_has_virtio_mmio(tmp_path):
    config = _config(tmp_path, *MICROVM_OPTIONS, "CONFIG_PCI", "CONFIG_VIRTIO_PCI")
    assert vm.choose_machine("auto", config) == "microvm"


def test_auto_falls_back_to_pc_without_virtio_mmio(tmp_path):
    config = _config(tmp_path, "CONFIG_ACPI", "CONFIG_PCI", "CONFIG_VIRTIO_PCI")
    assert vm.choose_machine("auto", config) == "pc"
    # a bare bzImage (no .config to read) boots on the last, most compatible type
    assert vm.choose_machine("auto", None) == "pc"


def test_a_named_machine_the_kernel_cannot_use_is_refused_with_the_options(tmp_path):
    config = _config(tmp_path, "CONFIG_ACPI", "CONFIG_PCI", "CONFIG_VIRTIO_PCI")
    with pytest.raises(InfraError, match="CONFIG_VIRTIO_MMIO, CONFIG_VIRTIO_MMIO_CMDLINE"):
        vm.choose_machine("microvm", config)
    assert vm.choose_machine("pc", config) == "pc"
    with pytest.raises(InfraError, match="unknown machine 'q35'"):
        vm.choose_machine("q35", config)


def _unstarted_vm(tmp_path, machine: str) -> vm.VM:
    """A VM object that is never started, its machine type set as start() would."""
    kernel = SimpleNamespace(bzimage=tmp_path / "bzImage", config=None, identity="k", label="k")
    image = SimpleNamespace(initramfs=tmp_path / "initramfs")
    guest = vm.VM(kernel, image, vm.MachineSpec(machine=machine), workdir=tmp_path)
    guest.machine = machine
    return guest


def test_the_qemu_command_uses_the_chosen_machine_type(tmp_path):
    guest = _unstarted_vm(tmp_path, "microvm")
    guest.accel = vm.AccelChoice("tcg", "test")
    command = guest._qemu_command()
    assert command[command.index("-machine") + 1] == "microvm,acpi=off"
    assert "virtio-net-device,netdev=n0" in command


def test_microvm_resets_by_triple_fault_and_pc_by_its_default(tmp_path):
    """Without ACPI (microvm runs with acpi=off) a panicking guest would try keyboard-
    controller resets forever instead of letting -no-reboot end QEMU."""
    guest = _unstarted_vm(tmp_path, "microvm")
    assert "reboot=t" in guest._cmdline().split()
    guest.machine = "pc"
    assert not any(a.startswith("reboot=") for a in guest._cmdline().split())


def test_microvm_gets_the_host_tsc_frequency_and_pc_does_not(tmp_path, monkeypatch):
    """microvm has no HPET or ACPI PM timer: a guest whose PIT calibration fails under load
    would mark its TSC unstable and hang, so the host's TSC frequency goes on its command
    line; pc calibrates against its HPET."""
    monkeypatch.setattr(vm.tsc, "host_tsc_khz", lambda: 2445377)
    guest = _unstarted_vm(tmp_path, "microvm")
    assert "tsc_early_khz=2445377" in guest._cmdline().split()
    guest.machine = "pc"
    assert not any(a.startswith("tsc_early_khz=") for a in guest._cmdline().split())


def test_microvm_presets_the_delay_loop_from_the_host_tsc_and_the_kernels_hz(tmp_path, monkeypatch):
    """Each AP would otherwise calibrate its delay loop against the tick (~0.1 s per AP under
    TCG); the preset is the kernel's own formula, TSC cycles per jiffy."""
    monkeypatch.setattr(vm.tsc, "host_tsc_khz", lambda: 2596080)
    guest = _unstarted_vm(tmp_path, "microvm")
    assert not any(a.startswith("lpj=") for a in guest._cmdline().split())  # HZ unknown
    config = tmp_path / ".config"
    config.write_text("CONFIG_SMP=y\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n")
    guest.kernel.config = config
    # the value 6.1 printed for this TSC when it calibrated itself: "(lpj=10384320)"
    assert "lpj=10384320" in guest._cmdline().split()
    guest.machine = "pc"
    assert not any(a.startswith("lpj=") for a in guest._cmdline().split())


def test_the_host_tsc_frequency_is_measured():
    khz = vm.tsc.host_tsc_khz()
    # any x86-64 host of the last twenty years: between 500 MHz and 10 GHz
    assert khz is not None and 500_000 < khz < 10_000_000


def test_the_host_tsc_frequency_is_measured_once_per_host_boot(tmp_path, monkeypatch):
    monkeypatch.setenv("UPROBE_HARNESS_CACHE", str(tmp_path / "cache"))
    boot_id = tmp_path / "boot_id"
    monkeypatch.setattr(vm.tsc, "BOOT_ID", boot_id)
    measured = []
    monkeypatch.setattr(
        vm.tsc, "_measure", lambda binary: measured.append(1) or 2596080 + len(measured)
    )

    def fresh_process():
        vm.tsc.host_tsc_khz.cache_clear()
        return vm.tsc.host_tsc_khz()

    try:
        boot_id.write_text("one\n")
        assert fresh_process() == 2596081
        assert fresh_process() == 2596081 and len(measured) == 1  # kept for this host boot
        boot_id.write_text("two\n")
        assert fresh_process() == 2596082 and len(measured) == 2  # measured again
        kept = list((tmp_path / "cache").rglob("khz-*"))
        assert [p.name for p in kept] == ["khz-two"]  # the other boot's value is gone
    finally:
        vm.tsc.host_tsc_khz.cache_clear()


def _kernel_files(tmp_path, *options, vmlinux=True):
    (tmp_path / "bzImage").write_bytes(b"bz")
    if vmlinux:
        (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    return SimpleNamespace(
        bzimage=tmp_path / "bzImage",
        vmlinux=tmp_path / "vmlinux" if vmlinux else None,
        config=_config(tmp_path, *options),
    )


def test_microvm_boots_the_vmlinux_through_pvh_where_the_kernel_has_it(tmp_path):
    microvm, pc = vm.MACHINE.machines["microvm"], vm.MACHINE.machines["pc"]
    with_pvh = _kernel_files(tmp_path, "CONFIG_PVH")
    assert vm.kernel_image(with_pvh, microvm) == tmp_path / "vmlinux"
    assert vm.kernel_image(with_pvh, pc) == tmp_path / "bzImage"  # pc: no PVH loader used
    # asked not to (bench_boot.py --bzimage): the bzImage
    assert vm.kernel_image(with_pvh, microvm, pvh=False) == tmp_path / "bzImage"


@pytest.mark.parametrize(
    "options, vmlinux", [((), True), (("CONFIG_PVH",), False)], ids=["no-pvh", "no-vmlinux"]
)
def test_microvm_falls_back_to_the_bzimage(tmp_path, options, vmlinux):
    """A kernel without the PVH entry point (QEMU would refuse its vmlinux) or without a
    vmlinux (a bare bzImage) boots from its bzImage."""
    kernel = _kernel_files(tmp_path, *options, vmlinux=vmlinux)
    assert vm.kernel_image(kernel, vm.MACHINE.machines["microvm"]) == tmp_path / "bzImage"
