"""Guest image and key tests: fast, no QEMU. The cache points at a temporary directory."""

from __future__ import annotations

import base64
import io
import json
import lzma
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile

from harness import cli
from harness.errors import HarnessError, InfraError
from harness.machine import image as image_mod
from harness.machine import keys as keys_mod
from harness.machine.image import READY_MARKER, Entry, Tree, build_image, read_cpio, render_init
from harness.machine.keys import ensure_keys
from harness.paths import REPO_ROOT

BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
APPLETS = (
    "sh mount ip ifconfig route cat echo poweroff nproc sleep mkdir ls ps kill dmesg grep sed "
    "awk cut head tail tr wc sort uniq chmod rm cp mv date uname hostname sync seq timeout env "
    "id true false test [ printf xargs find stat dd od hexdump md5sum sha256sum tee insmod"
).split()

pytestmark = pytest.mark.skipif(
    not (BUSYBOX.is_file() and DROPBEAR.is_file() and shutil.which("dropbearkey")),
    reason="needs Debian packages busybox-static and dropbear-bin "
    "(apt-get install busybox-static dropbear-bin)",
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("UPROBE_HARNESS_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One image built in a module-wide cache: (Image, entries, cache root)."""
    root = tmp_path_factory.mktemp("image-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPROBE_HARNESS_CACHE", str(root))
        started = time.monotonic()
        img = build_image()
        elapsed = time.monotonic() - started
        print(f"\nimage build: {elapsed:.2f}s, {img.initramfs.stat().st_size} bytes")
        yield img, read_cpio(img.initramfs.read_bytes()), root


def _elf(entries: dict[str, Entry], path: str) -> ELFFile:
    return ELFFile(io.BytesIO(entries[path].data))


def _needed(elf: ELFFile) -> list[str]:
    return [
        tag.needed
        for seg in elf.iter_segments()
        if isinstance(seg, DynamicSegment)
        for tag in seg.iter_tags()
        if tag.entry.d_tag == "DT_NEEDED"
    ]


def test_image_contents(built):
    img, entries, root = built
    assert img.initramfs.name == "initramfs.cpio"
    assert img.initramfs.is_relative_to(root / "images" / img.identity)
    assert img.ready_marker == READY_MARKER == "UPROBE-HARNESS-READY"
    assert img.initramfs.read_bytes()[:6] == b"070701"  # uncompressed: no inflating at boot

    init = entries["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o777 == 0o755
    assert init.data.startswith(b"#!/bin/sh\n")
    assert stat.S_ISREG(entries["bin/busybox"].mode)
    assert entries["bin/busybox"].data == BUSYBOX.read_bytes()
    assert entries["bin/dropbear"].data == DROPBEAR.read_bytes()
    for applet in APPLETS:
        link = entries[f"bin/{applet}"]
        assert stat.S_ISLNK(link.mode) and link.data == b"busybox", applet
    for alias, target in (("sbin", b"bin"), ("usr/bin", b"../bin"), ("usr/sbin", b"../bin")):
        assert stat.S_ISLNK(entries[alias].mode) and entries[alias].data == target
    for directory in ("tmp", "proc", "sys", "dev", "run", "root", "etc/dropbear"):
        assert stat.S_ISDIR(entries[directory].mode), directory
    assert entries["tmp"].mode & 0o7777 == 0o1777
    assert b"root:x:0:0:root:/root:/bin/sh\n" in entries["etc/passwd"].data
    assert entries["etc/group"].data.startswith(b"root:x:0:")
    assert b"/bin/sh\n" in entries["etc/shells"].data


def test_dropbear_libraries_complete(built):
    _, entries, _ = built
    dropbear = _elf(entries, "bin/dropbear")
    interp = next(s for s in dropbear.iter_segments() if s["p_type"] == "PT_INTERP")
    assert interp.get_interp_name() == "/lib64/ld-linux-x86-64.so.2"
    assert stat.S_ISREG(entries["lib64/ld-linux-x86-64.so.2"].mode)
    libdir = "lib/x86_64-linux-gnu"
    todo, seen = ["bin/dropbear"], set()
    while todo:
        path = todo.pop()
        for name in _needed(_elf(entries, path)):
            if name.startswith("ld-linux"):
                continue
            lib = f"{libdir}/{name}"
            assert lib in entries, f"{path} needs {name}, missing from the image"
            if lib not in seen:
                seen.add(lib)
                todo.append(lib)
    assert f"{libdir}/libc.so.6" in seen


def test_keys_in_image_match(built):
    img, entries, root = built
    keys = ensure_keys()
    assert keys.client_key == img.client_key
    authorized = entries["root/.ssh/authorized_keys"]
    assert authorized.mode & 0o777 == 0o600
    assert authorized.data.decode().strip() == keys.client_public_line
    client = paramiko.Ed25519Key.from_private_key_file(str(img.client_key))
    assert keys.client_public_line.split()[:2] == [client.get_name(), client.get_base64()]

    kind, blob = img.host_key_line.split()
    assert kind == "ssh-ed25519"
    assert paramiko.Ed25519Key(data=base64.b64decode(blob)).get_name() == "ssh-ed25519"
    host_key = entries["etc/dropbear/dropbear_ed25519_host_key"]
    assert host_key.mode & 0o777 == 0o600
    extracted = root / "host_key_copy"
    extracted.write_bytes(host_key.data)
    out = subprocess.run(
        ["dropbearkey", "-y", "-f", str(extracted)], capture_output=True, text=True, check=True
    ).stdout
    assert img.host_key_line in out


def test_keys_private_and_outside_repo(built):
    img, _, _ = built
    keys = ensure_keys()
    for private in (keys.client_key, keys.host_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert not private.resolve().is_relative_to(REPO_ROOT)
    assert keys.known_hosts_line("127.0.0.1", 10022) == (f"[127.0.0.1]:10022 {img.host_key_line}")
    # the initramfs carries the guest's host private key: owner-only, directory too
    assert stat.S_IMODE(img.initramfs.stat().st_mode) == 0o600
    assert stat.S_IMODE(img.initramfs.parent.stat().st_mode) == 0o700


def test_keys_refuse_repo_location(tmp_path, monkeypatch):
    fake_repo = tmp_path / "repo"
    monkeypatch.setattr(keys_mod, "REPO_ROOT", fake_repo)
    monkeypatch.setenv("UPROBE_HARNESS_CACHE", str(fake_repo / "cache"))
    with pytest.raises(InfraError, match="inside the repository"):
        ensure_keys()


def test_keys_concurrent_creation(cache):
    code = (
        "from harness.machine.keys import ensure_keys; k = ensure_keys(); "
        "print(k.client_public_line, '|', k.host_public_line)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert len({out for out, _ in results}) == 1
    assert not list((cache / "keys").glob(".*.tmp"))


def test_deterministic_bytes(built):
    img, entries, root = built
    first = img.initramfs.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPROBE_HARNESS_CACHE", str(root))
        shutil.rmtree(img.initramfs.parent)
        again = build_image()
    assert again == img
    assert again.initramfs.read_bytes() == first

    # Insertion order does not matter either.
    forward, backward = Tree(), Tree()
    for entry in sorted(entries.values(), key=lambda e: e.path):
        forward.add(entry)
    for entry in sorted(entries.values(), key=lambda e: e.path, reverse=True):
        backward.add(entry)
    assert forward.cpio() == backward.cpio() == first


def test_cache_hit_is_fast(built):
    img, _, root = built
    stamp = img.initramfs.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPROBE_HARNESS_CACHE", str(root))
        started = time.monotonic()
        again = build_image()
        elapsed = time.monotonic() - started
    print(f"\ncache hit: {elapsed * 1000:.0f} ms")
    assert again == img
    assert again.initramfs.stat().st_mtime_ns == stamp
    assert elapsed < 0.5
    assert not [p for p in (root / "images").iterdir() if p.name.startswith(".")]


def test_gnu_cpio_agrees(built):
    img, entries, _ = built
    if shutil.which("cpio") is None:
        pytest.skip("GNU cpio not installed")
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"],
        input=img.initramfs.read_bytes(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert listing.split() == sorted(entries, key=lambda p: Path(p).parts)


@pytest.mark.parametrize("modules", [(), ("virtio_net.ko", "9p.ko")])
def test_init_is_valid_sh(tmp_path, modules):
    text = render_init("uph-guest", modules, 22)
    script = tmp_path / "init"
    script.write_text(text)
    for shell in (["busybox", "sh"], ["sh"]):
        proc = subprocess.run([*shell, "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (shell, proc.stderr)
    assert f'echo "{READY_MARKER}"' in text
    assert 'say "nproc=$(nproc)"' in text
    assert "dropbear -F -E -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key" in text
    assert "mount -t" in text and "missing FS" in text
    for fs in ("proc", "sysfs", "devtmpfs", "devpts", "tracefs", "debugfs"):
        assert f"mnt {fs} " in text
    assert "10.0.2.15/24" in text and "via 10.0.2.2" in text
    assert "/etc/rc.local" in text
    # comm recording off before any scenario (see init.sh.j2)
    assert "echo 0 > /sys/kernel/tracing/options/record-cmd" in text
    assert text.index("mnt tracefs") < text.index("options/record-cmd")
    positions = [text.index(f"insmod /lib/modules/{m}") for m in modules]
    assert positions == sorted(positions)
    if modules:
        assert positions[-1] < text.index("ip link set lo up")
    assert "{{" not in text and "{%" not in text


def test_modules_included_in_order(cache, tmp_path):
    fake = b"\x7fELF" + b"\0" * 60 + b"fake module"
    plain = tmp_path / "virtio_net.ko"
    plain.write_bytes(fake)
    packed = tmp_path / "failover.ko.xz"
    packed.write_bytes(lzma.compress(fake + b"2"))
    without = build_image()
    with_modules = build_image(modules=[packed, plain])
    assert with_modules.identity != without.identity
    entries = read_cpio(with_modules.initramfs.read_bytes())
    assert entries["lib/modules/virtio_net.ko"].data == fake
    assert entries["lib/modules/failover.ko"].data == fake + b"2"
    init = entries["init"].data.decode()
    assert init.index("insmod /lib/modules/failover.ko") < init.index(
        "insmod /lib/modules/virtio_net.ko"
    )

    bogus = tmp_path / "bogus.ko"
    bogus.write_bytes(b"not elf")
    with pytest.raises(HarnessError, match="not a kernel module"):
        build_image(modules=[bogus])


def test_missing_package_is_infra_error(cache, tmp_path):
    recipe = tmp_path / "broken.toml"
    recipe.write_text('[[binary]]\npackage = "busybox-static"\npath = "/nonexistent/busybox"\n')
    with pytest.raises(InfraError) as info:
        build_image(str(recipe))
    message = str(info.value)
    assert "busybox-static" in message and "apt-get install busybox-static" in message


@pytest.mark.parametrize(
    "text, complaint",
    [
        (
            '[[binary]]\npackage = "p"\npath = "/bin/x"\nrename = "y"\n',
            r"broken.toml: \[\[binary\]\] 1: unknown key 'rename'; known keys: package, path",
        ),
        (
            '[[file]]\ndest = "/etc/a"\ntext = "a"\n[[file]]\ndest = "/etc/b"\nmode = "755"\n',
            r"broken.toml: \[\[file\]\] 2: mode: expected `int`, got `str`",
        ),
        (
            '[[file]]\ndest = "/etc/a"\n',
            r"broken.toml: \[\[file\]\] 1 \(dest = '/etc/a'\): give "
            r"exactly one of 'text' or 'src'",
        ),
        ("ssh_port = 0\n", r"broken.toml: top level: ssh_port 0 is not a TCP port"),
        ('hostname = "a b"\n', r"broken.toml: top level: hostname 'a b' is not a valid host name"),
    ],
)
def test_recipe_errors_name_the_file_the_entry_and_the_key(tmp_path, text, complaint):
    recipe = tmp_path / "broken.toml"
    recipe.write_text(text)
    with pytest.raises(HarnessError, match=complaint):
        image_mod.load_recipe(str(recipe))


def test_missing_dropbearkey_is_infra_error(cache, monkeypatch):
    monkeypatch.setattr(keys_mod, "DROPBEARKEY", "no-such-dropbearkey")
    with pytest.raises(InfraError, match="apt-get install dropbear-bin"):
        ensure_keys()


def test_cli_json(built, capsys):
    img, _, root = built
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPROBE_HARNESS_CACHE", str(root))
        assert cli.main(["image", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["initramfs"] == str(img.initramfs)
    assert info["host_key_line"] == img.host_key_line
    assert info["size"] == img.initramfs.stat().st_size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _extract(entries: dict[str, Entry], dest: Path) -> None:
    for path in sorted(entries, key=lambda p: Path(p).parts):
        entry, target = entries[path], dest / path
        if stat.S_ISDIR(entry.mode):
            target.mkdir()
        elif stat.S_ISLNK(entry.mode):
            target.symlink_to(entry.data.decode())
        elif stat.S_ISREG(entry.mode):
            target.write_bytes(entry.data)
        else:
            continue  # device nodes
        if not stat.S_ISLNK(entry.mode):
            os.chmod(target, stat.S_IMODE(entry.mode))


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chroot") is None, reason="needs root and chroot"
)
def test_ssh_login_in_chroot(built, tmp_path):
    """The image's own dropbear, libraries, passwd and keys accept the harness's SSH client."""
    img, entries, _ = built
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    _extract(entries, rootfs)
    port = _free_port()
    server = subprocess.Popen(
        [
            "chroot",
            str(rootfs),
            "/bin/dropbear",
            "-F",
            "-E",
            "-s",
            "-p",
            f"127.0.0.1:{port}",
            "-r",
            "/etc/dropbear/dropbear_ed25519_host_key",
            "-P",
            "/run/dropbear.pid",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = paramiko.SSHClient()
    try:
        kind, blob = img.host_key_line.split()
        client.get_host_keys().add(
            f"[127.0.0.1]:{port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob))
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        deadline = time.monotonic() + 10
        while True:
            try:
                client.connect(
                    "127.0.0.1",
                    port,
                    username="root",
                    key_filename=str(img.client_key),
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=5,
                )
                break
            except (paramiko.ssh_exception.NoValidConnectionsError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        _, out, err = client.exec_command(
            "echo $PATH; which ip nproc insmod sha256sum; id -u; echo $HOME"
        )
        lines = out.read().decode().split()
        assert out.channel.recv_exit_status() == 0, err.read()
        names = ["ip", "nproc", "insmod", "sha256sum"]
        dirs = ("/bin", "/sbin", "/usr/bin", "/usr/sbin")
        assert [os.path.basename(p) for p in lines[1:5]] == names
        assert all(os.path.dirname(p) in dirs for p in lines[1:5]), lines
        assert lines[5:] == ["0", "/root"]
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()
