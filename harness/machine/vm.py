"""QEMU lifecycle: accelerator choice, ports, console capture, readiness, teardown.

Lessons from QEMUMachine: a context manager; the console is drained on its own thread so
QEMU never blocks on a full pty; shutdown is soft then hard through one cleanup path;
launch failures carry the command line and QEMU's own output. QEMU is started through
`children` (PR_SET_PDEATHSIG from one long-lived thread), so it dies with the harness even
when the harness is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import pexpect

from harness import children, data
from harness.errors import BootError, InfraError
from harness.machine import tsc
from harness.machine.console import ConsoleWatch
from harness.machine.ssh import Result, SSHSession
from harness.paths import CONFIGS_DIR, cache_dir

log = logging.getLogger(__name__)


class MachineType(data.Spec):
    """One QEMU machine type a guest can run on (a [machines.NAME] table)."""

    qemu_machine: str  # -machine
    nic: str  # the virtio-net device for that machine's bus
    requires: list[str]  # kernel options "auto" needs in the kernel's .config
    bios: str = ""  # firmware; "": QEMU's default
    # pass the host's TSC frequency as tsc_early_khz=, and the delay loop's calibration it
    # implies as lpj= where the kernel's CONFIG_HZ is known
    tsc_from_host: bool = False
    cmdline: list[str] = []  # kernel arguments this machine type needs, after the common ones
    # boot the uncompressed vmlinux through its PVH entry point when the kernel has one
    # (CONFIG_PVH and a vmlinux next to the bzImage): no decompression, no real-mode setup
    pvh: bool = False


class Machine(data.Spec):
    """The QEMU machine guests run on (harness/configs/qemu_x86_64.toml, which says more)."""

    binary: str
    machine: str  # "auto" or a key of machines
    cpu_tcg: str
    cpu_kvm: str
    memory_mb: int
    console: str
    cmdline: list[str]
    unresponsive_s: int
    boot_timeout_s: int
    kvm_probe_s: int
    machines: dict[str, MachineType]


MACHINE = data.load(CONFIGS_DIR / "qemu_x86_64.toml", Machine)
if MACHINE.machine != "auto" and MACHINE.machine not in MACHINE.machines:
    raise data.error(
        CONFIGS_DIR / "qemu_x86_64.toml",
        "machine",
        f"'{MACHINE.machine}' is neither \"auto\" nor one of {sorted(MACHINE.machines)}",
    )
UNIX_PATH_MAX = 100  # sun_path holds 108 bytes with the NUL; QEMU refuses longer paths
_LIVE: set[VM] = set()
# the first command a booted guest answers: how many CPUs it sees and its kernel release
SELF_CHECK = "nproc; uname -r"
SOCKET_DIR_PREFIX = "uph-qmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


OWNER_LOCK = ".owner"  # flock'ed by the creating process for as long as it lives
_OWNER_LOCKS: dict = {}  # directory -> its open, locked owner file


def _owner_alive(entry: Path, pid_text: str) -> bool:
    """Whether the process that made `entry` still runs: it holds the flock on the
    directory's owner file (pids say nothing across pid namespaces sharing /tmp); for a
    directory made before there was one, by its pid."""
    lock = entry / OWNER_LOCK
    if not lock.exists():
        return _pid_alive(int(pid_text))
    try:
        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True  # cannot tell: leave it
    return False


def remove_stale_socket_dirs(parent: Path) -> list[Path]:
    """Remove short socket directories whose creating harness process is gone."""
    removed = []
    for entry in parent.glob(f"{SOCKET_DIR_PREFIX}*-*"):
        pid_text = entry.name[len(SOCKET_DIR_PREFIX) :].split("-", 1)[0]
        try:
            if (
                not pid_text.isdigit()
                or entry.is_symlink()
                or not entry.is_dir()
                or entry.stat().st_uid != os.getuid()
                or _owner_alive(entry, pid_text)
            ):
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def short_socket_dir() -> Path:
    """A private directory short enough for a UNIX socket path, named after this process,
    with an owner file this process keeps locked."""
    parent = Path(tempfile.gettempdir())
    remove_stale_socket_dirs(parent)
    # made and locked under another name, then renamed: a cleaner never sees it unlocked
    staging = Path(tempfile.mkdtemp(prefix=f"uph-new-{os.getpid()}-", dir=parent))
    handle = open(staging / OWNER_LOCK, "wb")
    fcntl.flock(handle, fcntl.LOCK_EX)
    directory = parent / f"{SOCKET_DIR_PREFIX}{os.getpid()}-{staging.name.rsplit('-', 1)[1]}"
    os.rename(staging, directory)
    _OWNER_LOCKS[directory] = handle
    return directory


def release_socket_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    handle = _OWNER_LOCKS.pop(directory, None)
    if handle is not None:
        handle.close()


@dataclass(frozen=True)
class MachineSpec:
    smp: int = 1
    memory_mb: int = 0  # 0 = the machine definition's default
    accel: str = "auto"  # auto | tcg | kvm
    tcg_threads: str = "multi"  # multi | single (only under TCG)
    oops_panic: bool = False
    extra_cmdline: tuple[str, ...] = ()
    machine: str = "auto"  # auto | a key of the machine definition's machines (pc, microvm)
    pvh: bool = True  # False: boot the bzImage even where the machine type could boot PVH


def _config_values(config: Path | None) -> dict[str, str] | None:
    """A kernel .config's options and their values; None when there is none to read. (Its
    own reading, not harness.build.kconfig's: machine and build stay independent.)"""
    if config is None or not Path(config).is_file():
        return None
    values = {}
    for line in Path(config).read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            values[name] = value
    return values


def _config_options(config: Path | None) -> set[str] | None:
    """The options set (=y or =m) in a kernel .config; None when there is none to read."""
    values = _config_values(config)
    if values is None:
        return None
    return {name for name, value in values.items() if value in ("y", "m")}


def _config_number(config: Path | None, name: str) -> int | None:
    """The integer value of option NAME in a kernel .config; None when unknown."""
    value = (_config_values(config) or {}).get(name, "")
    return int(value) if value.isdigit() else None


def kernel_image(kernel, machine_type: MachineType, pvh: bool = True) -> Path:
    """The file QEMU's -kernel loads: the kernel's vmlinux where the machine type boots PVH
    (and `pvh` allows it) and the kernel was built for it, else its bzImage."""
    vmlinux = getattr(kernel, "vmlinux", None)
    if pvh and machine_type.pvh and vmlinux is not None and Path(vmlinux).is_file():
        options = _config_options(getattr(kernel, "config", None))
        if options is not None and "CONFIG_PVH" in options:
            return Path(vmlinux)
    return kernel.bzimage


def choose_machine(requested: str, config: Path | None) -> str:
    """The machine type a guest boots on: REQUESTED if it names one; for "auto", the first
    of the machine definition's types whose required options the kernel's .config has (the
    last type when the kernel has no .config). A named type the kernel lacks options for is
    refused with the missing options named."""
    requested = MACHINE.machine if requested == "auto" else requested
    names = list(MACHINE.machines)
    options = _config_options(config)
    if requested != "auto":
        if requested not in MACHINE.machines:
            raise InfraError(f"unknown machine '{requested}'; known: auto, {', '.join(names)}")
        missing = [o for o in MACHINE.machines[requested].requires if o not in (options or ())]
        if options is not None and missing:
            raise InfraError(
                f"machine '{requested}' needs {', '.join(missing)} in the kernel's "
                f"configuration ({config}); use --machine auto or a config fragment with them"
            )
        return requested
    if options is None:
        return names[-1]
    for name in names:
        if all(o in options for o in MACHINE.machines[name].requires):
            return name
    return names[-1]


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "tcg" or "kvm"
    reason: str


QMP_QUIT_TIMEOUT = 3.0  # s for connect + greeting + quit; SIGKILL follows anyway


def qemu_option_value(value) -> str:
    """A value inside a QEMU option list: a comma is written as two (else it would end the
    value and start another option)."""
    return str(value).replace(",", ",,")


def qmp_quit(socket_path: Path, timeout: float) -> str | None:
    """Ask QEMU to quit over QMP, bounded by `timeout` as a whole (a wedged QEMU, or a monitor
    that accepts but never greets, must not hang the shutdown). None, or what went wrong."""
    from qemu.qmp import QMPClient

    async def quit_() -> None:
        client = QMPClient("uprobe-harness")
        await client.connect(str(socket_path))
        try:
            await client.execute("quit")
        except Exception:  # QEMU may close the monitor before it answers
            pass
        finally:
            try:
                await client.disconnect()
            except Exception:  # ...and the reader saw that first
                pass

    try:
        asyncio.run(asyncio.wait_for(quit_(), timeout))
    except asyncio.TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as error:  # no monitor to connect to, or no QMP greeting
        return f"{type(error).__name__}: {error}"
    return None


@dataclass(frozen=True)
class GuestRecord:
    """What a verdict must record about the machine that produced it."""

    accel: str
    tcg_threads: str  # "multi", "single", or "" under KVM
    vcpus_requested: int
    vcpus_seen: int
    kernel_identity: str
    kernel_release: str
    machine: str = ""  # the QEMU machine type (pc, microvm)


def qemu_binary() -> str:
    path = shutil.which(MACHINE.binary)
    if not path:
        raise InfraError(
            f"{MACHINE.binary} is not installed. On Debian: apt-get install -y qemu-system-x86"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- accelerator -------------------------------------------------------------------------------


def _kvm_device_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _host_key() -> str:
    version = subprocess.run(
        [qemu_binary(), "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    return f"{socket.gethostname()}|{os.uname().release}|{version}"


def choose_accel(requested: str, bzimage: Path) -> AccelChoice:
    """auto: KVM only when /dev/kvm opens AND a guest prints its banner under it within a
    bounded time. The decision is cached per host (hostname, host kernel, QEMU version)."""
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    if requested == "kvm":
        if not _kvm_device_usable():
            raise InfraError("--accel kvm was requested but /dev/kvm cannot be opened.")
        return AccelChoice("kvm", "requested")
    if requested != "auto":
        raise InfraError(f"Unknown accelerator '{requested}': use auto, tcg or kvm.")
    if not _kvm_device_usable():
        return AccelChoice("tcg", "/dev/kvm not usable")
    decisions_file = cache_dir("host") / "accel.json"
    decisions = json.loads(decisions_file.read_text()) if decisions_file.exists() else {}
    key = _host_key()
    if key in decisions:
        return AccelChoice(decisions[key]["accel"], decisions[key]["reason"] + " (cached)")
    ok = _kvm_boots(bzimage, MACHINE.kvm_probe_s)
    choice = (
        AccelChoice("kvm", "a guest booted under KVM")
        if ok
        else AccelChoice(
            "tcg",
            f"/dev/kvm exists but a guest printed nothing within {MACHINE.kvm_probe_s}s "
            f"under KVM; using TCG",
        )
    )
    log.info(f"accelerator: {choice.accel} ({choice.reason})")
    decisions[key] = asdict(choice)
    tmp = decisions_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decisions, indent=2))
    tmp.replace(decisions_file)
    return choice


def _kvm_boots(bzimage: Path, seconds: float) -> bool:
    cmd = [
        qemu_binary(),
        "-accel",
        "kvm",
        "-cpu",
        MACHINE.cpu_kvm,
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(bzimage),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    proc = children.popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    seen = threading.Event()

    def reader():
        for line in proc.stdout:
            if b"Linux version" in line:
                seen.set()
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    seen.wait(seconds)
    proc.kill()
    proc.wait()
    return seen.is_set()


# -- the machine -------------------------------------------------------------------------------


class VM:
    """One QEMU guest. Use as a context manager; `start()` returns once SSH answers."""

    def __init__(
        self,
        kernel,
        image,
        spec: MachineSpec = MachineSpec(),
        workdir: Path | None = None,
        name: str = "vm",
    ):
        self.kernel, self.image, self.spec, self.name = kernel, image, spec, name
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"uph-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.workdir / "console.log"
        self._socket_dir: Path | None = None
        self.qmp_socket = self.workdir / "qmp.sock"
        self.watch = ConsoleWatch()
        self.port = 0
        self.accel: AccelChoice | None = None
        self.machine = ""  # the machine type, chosen in start()
        self.record: GuestRecord | None = None
        self.command: list[str] = []
        self.boot_seconds = 0.0
        self.marker_seconds = 0.0  # QEMU start -> ready marker on the console
        self._started = 0.0
        self.last_output = time.monotonic()
        self._child: pexpect.spawn | None = None
        self._log_handle: BinaryIO | None = None  # the console log, open while QEMU runs
        self._drain: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._ssh: SSHSession | None = None
        self._first_answer: Result | None = None  # SELF_CHECK's, from _wait_ready
        self.closed = False  # shut down on purpose (not a crash)

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> VM:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- launch -------------------------------------------------------------------------------
    @property
    def machine_type(self) -> MachineType:
        """The definition of the machine type chosen in start()."""
        return MACHINE.machines[self.machine]

    def _cmdline(self) -> str:
        args = [f"console={MACHINE.console}", *MACHINE.cmdline]
        args += self.machine_type.cmdline
        if self.machine_type.tsc_from_host and (khz := tsc.host_tsc_khz()):
            args.append(f"tsc_early_khz={khz}")
            hz = _config_number(getattr(self.kernel, "config", None), "CONFIG_HZ")
            if hz:
                args.append(f"lpj={tsc.loops_per_jiffy(khz, hz)}")
        if self.spec.oops_panic:
            args.append("oops=panic")
        args += list(self.spec.extra_cmdline)
        return " ".join(args)

    def _firmware_args(self) -> list[str]:
        bios = self.machine_type.bios
        return ["-bios", bios] if bios and Path(bios).is_file() else []

    def _qemu_command(self) -> list[str]:
        if len(str(self.qmp_socket)) >= UNIX_PATH_MAX:  # a deep workdir (pytest --basetemp)
            self._socket_dir = short_socket_dir()
            self.qmp_socket = self._socket_dir / "qmp.sock"
        assert self.accel is not None  # chosen in start()
        accel = self.accel.accel
        if accel == "tcg":
            accel_arg, cpu = f"tcg,thread={self.spec.tcg_threads}", MACHINE.cpu_tcg
        else:
            accel_arg, cpu = "kvm", MACHINE.cpu_kvm
        net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        return [
            qemu_binary(),
            "-machine",
            self.machine_type.qemu_machine,
            "-accel",
            accel_arg,
            "-cpu",
            cpu,
            "-smp",
            str(self.spec.smp),
            "-m",
            str(self.spec.memory_mb or MACHINE.memory_mb),
            *self._firmware_args(),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
            str(kernel_image(self.kernel, self.machine_type, self.spec.pvh)),
            "-initrd",
            str(self.image.initramfs),
            "-append",
            self._cmdline(),
            "-netdev",
            net,
            "-device",
            f"{self.machine_type.nic},netdev=n0",
            "-qmp",
            f"unix:{qemu_option_value(self.qmp_socket)},server=on,wait=off",
        ]

    def start(self, timeout: float | None = None) -> VM:
        timeout = timeout or MACHINE.boot_timeout_s
        self.accel = choose_accel(self.spec.accel, self.kernel.bzimage)
        self.machine = choose_machine(self.spec.machine, getattr(self.kernel, "config", None))
        started = time.monotonic()
        try:
            for _attempt in range(5):
                self.port = free_port()
                self.command = self._qemu_command()
                self._spawn()
                try:
                    self._wait_ready(started + timeout)
                    break
                except _PortClash:
                    self._kill()
                    continue
            else:
                raise InfraError(
                    f"Could not bind a host port for SSH after 5 attempts: "
                    f"{shlex.join(self.command)}"
                )
            self.boot_seconds = time.monotonic() - started
            self._self_check()
        except BaseException:
            self.shutdown()  # no QEMU survives a failed start, whatever failed
            raise
        return self

    def _spawn(self) -> None:
        self._ready.clear()
        self._started = time.monotonic()
        self.watch = ConsoleWatch()
        self._log_handle = open(self.console_log, "ab")
        command = self.command
        self._child = children.SPAWNER.call(
            lambda: pexpect.spawn(
                command[0], command[1:], echo=False, timeout=None, preexec_fn=children.set_pdeathsig
            )
        )
        _LIVE.add(self)
        self._drain = threading.Thread(
            target=self._drain_console, daemon=True, name=f"console-{self.name}"
        )
        self._drain.start()

    def _drain_console(self) -> None:
        child, marker, log = self._child, self.image.ready_marker, self._log_handle
        assert child is not None and log is not None
        pending = ""
        while True:
            try:
                data = child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError, ValueError):
                break
            self.last_output = time.monotonic()
            text = data.decode(errors="replace")
            with self._lock:  # console_note() writes both too
                log.write(data)
                log.flush()
                self.watch.feed(text)
            pending = (pending + text)[-4096:]
            if marker in pending and not self._ready.is_set():
                self.marker_seconds = time.monotonic() - self._started
                self._ready.set()
        with self._lock:
            log.close()

    def _wait_ready(self, deadline: float) -> None:
        while not self._ready.is_set():
            if not self.alive():
                self._raise_boot_failure("QEMU exited before the guest was ready")
            if self.watch.findings:
                self._raise_boot_failure("the kernel crashed while booting")
            if time.monotonic() > deadline:
                self._raise_boot_failure("no ready marker within the boot timeout")
            self._ready.wait(0.1)
        self._ssh = SSHSession(
            "127.0.0.1", self.port, self.image.client_key, self.image.host_key_line
        )
        # the first command answered is the self-check's: no round trip of its own
        self._first_answer = self._ssh.wait_ready(deadline, SELF_CHECK, alive=self.alive)

    def _raise_boot_failure(self, why: str) -> None:
        text = self.console_text()
        if "Could not set up host forwarding rule" in text:
            raise _PortClash()
        findings = self.watch.findings
        tail = "\n".join(text.splitlines()[-30:])
        self.shutdown()
        crash = f" Kernel crash: {findings[0].title}." if findings else ""
        raise BootError(
            f"Guest '{self.name}' did not boot: {why}.{crash} Kernel: "
            f"{self.kernel.label}. Console log: {self.console_log}. QEMU command: "
            f"{shlex.join(self.command)}\nLast console lines:\n{tail}"
        )

    def _self_check(self) -> None:
        assert self._first_answer is not None
        nproc_text, release = (self._first_answer.stdout.split() + ["0", ""])[:2]
        seen = int(nproc_text)
        assert self.accel is not None
        self.record = GuestRecord(
            self.accel.accel,
            self.spec.tcg_threads if self.accel.accel == "tcg" else "",
            self.spec.smp,
            seen,
            self.kernel.identity,
            release,
            self.machine,
        )
        if seen != self.spec.smp:
            self.shutdown()
            raise BootError(
                f"The guest sees {seen} CPU(s) but {self.spec.smp} were requested. The kernel "
                f"({self.kernel.label}) probably lacks CONFIG_SMP, CONFIG_ACPI or "
                f"CONFIG_X86_MPPARSE, or has a smaller CONFIG_NR_CPUS."
            )

    # -- use ----------------------------------------------------------------------------------
    @property
    def ssh(self) -> SSHSession:
        if self._ssh is None:
            raise InfraError(f"VM '{self.name}' is not running.")
        return self._ssh

    def alive(self) -> bool:
        return self._child is not None and self._child.isalive()

    def console_text(self) -> str:
        with self._lock:
            return self.watch.text

    def console_note(self, text: str) -> None:
        """A line of the harness's own, `uprobe-harness: TEXT`, added on the host to the
        console log and watch, on a line of its own: a marker that costs no round trip to
        the guest, for a moment when the guest's console is quiet (e.g. between tests)."""
        with self._lock:
            fed = self.watch.fed
            if self._log_handle is None or self._log_handle.closed:
                return
            at_line_start = fed == 0 or self.watch.since(fed - 1) == "\n"
            line = ("" if at_line_start else "\n") + f"uprobe-harness: {text}\n"
            self._log_handle.write(line.encode())
            self._log_handle.flush()
            self.watch.feed(line)

    def console_offset(self) -> int:
        """Where the console stands now: an offset for console_since()."""
        with self._lock:
            return self.watch.fed

    def console_since(self, offset: int, end: int | None = None) -> str:
        with self._lock:
            return self.watch.since(offset, end)

    def responsive(self, silence_s: float | None = None) -> bool:
        """Alive and either printing on the console recently or answering SSH."""
        if not self.alive():
            return False
        try:
            return self.ssh.run("true", timeout=10).ok
        except Exception:
            silence = silence_s if silence_s is not None else MACHINE.unresponsive_s
            return time.monotonic() - self.last_output < silence

    # -- teardown -----------------------------------------------------------------------------
    def shutdown(self, soft_timeout: float = 5.0) -> None:
        """Soft (QMP quit), then hard (SIGKILL). Safe to call more than once."""
        self.closed = True
        if self._ssh is not None:
            self._ssh.close()
        if self.alive():
            self._qmp_quit()
            deadline = time.monotonic() + soft_timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._kill()
        if self._own_workdir and not self.watch.findings:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._socket_dir is not None:
            release_socket_dir(self._socket_dir)

    def _qmp_quit(self) -> None:
        if self.qmp_socket.exists():
            problem = qmp_quit(self.qmp_socket, QMP_QUIT_TIMEOUT)
            if problem:
                log.warning(f"{self.name}: QMP quit failed ({problem}); killing QEMU")

    def _kill(self) -> None:
        child = self._child
        if child is not None:
            if child.isalive():
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                child.close(force=True)
            except Exception:
                pass
        if self._drain is not None:
            self._drain.join(timeout=5)
        _LIVE.discard(self)

    def __hash__(self) -> int:
        return id(self)


class _PortClash(Exception):
    pass


@atexit.register
def _kill_all() -> None:
    for vm in list(_LIVE):
        vm._kill()
