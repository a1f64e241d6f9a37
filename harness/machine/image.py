"""The guest image: an uncompressed newc cpio initramfs, built from a recipe, cached by hash.

Uncompressed because under TCG the kernel spent 0.25-0.5 s of every boot inflating the gzip
form (3 MB, 6 MB unpacked) and 0.15-0.2 s unpacking the plain one (benchmarks/bench_boot.py).

Contents: busybox (static) with a /bin symlink per applet, dropbear with the shared libraries
``ldd`` finds for it, a minimal /etc, the SSH keys from :mod:`harness.machine.keys`, optional kernel
modules, and /init rendered from ``templates/init.sh.j2``. /sbin, /usr/bin and /usr/sbin are
symlinks to /bin, so whatever PATH dropbear hands a session finds every applet.

The archive is written here (no ``cpio`` tool, no root): every entry is owned by 0:0, has a
fixed mtime and the entries are sorted, so the same inputs give the same bytes. The cache key
hashes every input (recipe, template, this file, each binary, library, module and extra file,
the public halves of both keys); a cache hit only reads and hashes those inputs. A build is
written to a temporary directory and renamed into ``cache_dir("images")/<hash>``, so a
half-written image is never seen.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jinja2

from harness import data
from harness.errors import HarnessError, InfraError
from harness.machine.keys import Keys, ensure_keys
from harness.paths import IMAGES_DIR, TEMPLATES_DIR, cache_dir

log = logging.getLogger(__name__)

READY_MARKER = "UPROBE-HARNESS-READY"
FAILED_MARKER = "UPROBE-HARNESS-INIT-FAILED"  # /init prints "<this>: reason" instead of ready
INIT_TEMPLATE = "init.sh.j2"
INITRAMFS_NAME = "initramfs.cpio"
METADATA_NAME = "metadata.json"
HOST_KEY_IN_GUEST = "/etc/dropbear/dropbear_ed25519_host_key"

# QEMU user networking (slirp) defaults.
GUEST_IFACE = "eth0"
GUEST_CIDR = "10.0.2.15/24"
GATEWAY = "10.0.2.2"
NAMESERVER = "10.0.2.3"

# Guest directories that are symlinks to others; paths under them are stored canonically.
ALIASES = {"sbin": "bin", "usr/bin": "bin", "usr/sbin": "bin", "usr/lib": "lib", "var/run": "run"}
DIRS = {  # directory -> mode
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "etc/dropbear": 0o700,
    "lib": 0o755,
    "lib/modules": 0o755,
    "mnt": 0o755,
    "proc": 0o555,
    "root": 0o700,
    "root/.ssh": 0o700,
    "run": 0o755,
    "sys": 0o555,
    "tmp": 0o1777,
    "usr": 0o755,
    "var": 0o755,
    "var/log": 0o755,
}
MODULE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+\.ko$")
HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Image:
    initramfs: Path  # .cpio (uncompressed)
    identity: str  # content hash of every input
    client_key: Path  # private key file for paramiko
    host_key_line: str  # "ssh-ed25519 AAAA..." of the guest's host key, for pinning
    ready_marker: str  # console line printed once sshd listens


# --------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class BinarySpec:
    package: str  # Debian package that ships `path`, named when it is missing
    path: Path  # on the host
    dest: str  # in the guest, canonical (no leading slash)
    applets: bool = False


@dataclass(frozen=True)
class FileSpec:
    dest: str  # canonical guest path
    data: bytes
    mode: int


@dataclass(frozen=True)
class Recipe:
    name: str
    source: Path
    text: bytes
    hostname: str
    ssh_port: int
    binaries: tuple[BinarySpec, ...]
    files: tuple[FileSpec, ...]


def recipe_path(recipe: str) -> Path:
    """A recipe name ("default" -> images/default.toml) or a path to a .toml file."""
    if recipe.endswith(".toml") or os.sep in recipe:
        return Path(recipe)
    return IMAGES_DIR / f"{recipe}.toml"


class _BinaryEntry(data.Spec):
    package: str
    path: str
    dest: str | None = None  # default: /bin/<name of path>
    applets: bool = False


class _FileEntry(data.Spec):
    dest: str
    text: str | None = None  # exactly one of text and src
    src: str | None = None  # relative to the recipe
    mode: int = 0o644


class _RecipeFile(data.Spec):
    hostname: str = "uph-guest"
    ssh_port: int = 22
    binary: list[_BinaryEntry] = []
    file: list[_FileEntry] = []


def load_recipe(recipe: str = "default") -> Recipe:
    path = recipe_path(recipe)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(
            f"Image recipe {recipe!r} not found: expected {path}. Recipes live in "
            f"{IMAGES_DIR} as NAME.toml."
        ) from None
    raw = data.parse(path, text)
    spec = data.convert(raw, _RecipeFile, path)
    if not HOSTNAME.match(spec.hostname):
        raise data.error(path, "top level", f"hostname {spec.hostname!r} is not a valid host name")
    if not 0 < spec.ssh_port < 65536:
        raise data.error(path, "top level", f"ssh_port {spec.ssh_port!r} is not a TCP port")

    binaries = []
    for binary in spec.binary:
        host = Path(binary.path)
        dest = canonical(f"/bin/{host.name}" if binary.dest is None else binary.dest)
        binaries.append(BinarySpec(binary.package, host, dest, binary.applets))

    files = []
    for number, entry in enumerate(spec.file):
        where = data.entry_name(raw, f"$.file[{number}]") + f" (dest = {entry.dest!r})"
        if entry.text is not None and entry.src is None:
            content = entry.text.lstrip("\n").encode()
        elif entry.src is not None and entry.text is None:
            src = path.parent / entry.src
            try:
                content = src.read_bytes()
            except OSError as exc:
                raise data.error(path, where, f"cannot read {src}: {exc}") from None
        else:
            raise data.error(path, where, "give exactly one of 'text' or 'src'")
        if not 0 <= entry.mode <= 0o7777:
            raise data.error(path, where, f"mode {entry.mode!r} is not a permission mode")
        files.append(FileSpec(canonical(entry.dest), content, entry.mode))

    return Recipe(
        name=path.stem,
        source=path,
        text=text,
        hostname=spec.hostname,
        ssh_port=spec.ssh_port,
        binaries=tuple(binaries),
        files=tuple(files),
    )


def canonical(guest_path: str) -> str:
    """Guest path without leading slash, with /sbin, /usr/bin... resolved to their targets."""
    parts = PurePosixPath("/", guest_path).parts[1:]
    if not parts or ".." in parts:
        raise HarnessError(f"Bad guest path {guest_path!r}")
    rel = "/".join(parts)
    for alias, target in ALIASES.items():
        if rel == alias or rel.startswith(alias + "/"):
            return target + rel[len(alias) :]
    return rel


# ------------------------------------------------------------------------------- archive


@dataclass(frozen=True)
class Entry:
    path: str  # no leading slash
    mode: int  # including the S_IF* type bits
    data: bytes = b""  # file content, or symlink target
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Tree:
    """The image's file system, as archive entries keyed by path."""

    entries: dict[str, Entry] = field(default_factory=dict)
    implicit: set[str] = field(default_factory=set)  # parents made by default, mode 0755

    def add(self, entry: Entry) -> None:
        old = self.entries.get(entry.path)
        if entry.path in self.implicit and stat.S_ISDIR(entry.mode):
            self.implicit.discard(entry.path)  # an explicit directory overrides a default one
        elif old is not None and old != entry:
            raise HarnessError(f"Image path /{entry.path} is provided twice, differently")
        parent = str(PurePosixPath(entry.path).parent)
        if parent != "." and parent not in self.entries:
            self.add_dir(parent)
            self.implicit.add(parent)
        self.entries[entry.path] = entry

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.add(Entry(path, stat.S_IFDIR | mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path, stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path, stat.S_IFLNK | 0o777, target.encode()))

    def add_chardev(self, path: str, major: int, minor: int, mode: int) -> None:
        self.add(Entry(path, stat.S_IFCHR | mode, rdev=(major, minor)))

    def cpio(self) -> bytes:
        """The tree as a newc ("070701") cpio archive: sorted, owned by 0:0, mtime 0."""
        out = bytearray()
        ordered = sorted(self.entries.values(), key=lambda e: PurePosixPath(e.path).parts)
        for ino, entry in enumerate(ordered, start=1):
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            _cpio_member(out, entry.path, ino, entry.mode, nlink, entry.data, entry.rdev)
        _cpio_member(out, "TRAILER!!!", 0, 0, 1, b"", (0, 0))
        return bytes(out)


def _pad4(out: bytearray) -> None:
    out += b"\0" * (-len(out) % 4)


def _cpio_member(
    out: bytearray, name: str, ino: int, mode: int, nlink: int, data: bytes, rdev: tuple[int, int]
) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    out += b"070701" + "".join(f"{value:08X}" for value in fields).encode()
    out += encoded
    _pad4(out)
    out += data
    _pad4(out)


def read_cpio(archive: bytes) -> dict[str, Entry]:
    """Parse a newc archive back into entries: for tests and debugging."""
    entries: dict[str, Entry] = {}
    pos = 0
    while True:
        header = archive[pos : pos + 110]
        if header[:6] != b"070701":
            raise ValueError(f"no newc header at offset {pos}")
        values = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = values[1], values[6], values[9], values[10], values[11]
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = archive[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = Entry(name, mode, data, (rmaj, rmin))


# -------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Everything an image is made from, loaded once: hashed for the key, then laid out."""

    recipe: Recipe
    keys: Keys
    host_key_data: bytes
    template: str
    binaries: tuple[tuple[BinarySpec, bytes], ...]
    libraries: tuple[tuple[str, bytes], ...]  # canonical guest path, content
    modules: tuple[tuple[str, bytes], ...]  # file name in /lib/modules, content

    def identity(self) -> str:
        digest = hashlib.sha256()

        def put(label: str, data: bytes | str) -> None:
            raw = data.encode() if isinstance(data, str) else data
            digest.update(f"{label}\0{len(raw)}\0".encode())
            digest.update(raw)

        put("builder", Path(__file__).read_bytes())
        put("recipe", self.recipe.text)
        put("template", self.template)
        for spec, content in self.binaries:
            put(f"binary {spec.dest} applets={spec.applets}", content)
        for dest, content in self.libraries:
            put(f"library {dest}", content)
        for file in self.recipe.files:
            put(f"file {file.dest} {file.mode:o}", file.data)
        for name, content in self.modules:
            put(f"module {name}", content)
        put("client public key", self.keys.client_public_line)
        put("host public key", self.keys.host_public_line)
        return digest.hexdigest()[:32]


def _missing_package(spec: BinarySpec) -> InfraError:
    return InfraError(
        f"{spec.path} was not found on this host, so the guest image cannot be built: the "
        f"recipe takes it from the Debian package {spec.package}. Install it with "
        f"'sudo apt-get install {spec.package}' (as root: 'apt-get update && apt-get install "
        f"-y {spec.package}'), then run again."
    )


def shared_libraries(binary: Path) -> list[Path]:
    """Host paths of the shared libraries (and loader) `ldd` reports; [] for static binaries."""
    proc = subprocess.run(
        ["ldd", str(binary)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    text = proc.stdout + proc.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if proc.returncode != 0:
        raise InfraError(f"'ldd {binary}' failed with exit status {proc.returncode}:\n{text}")
    found = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise InfraError(
                f"{binary} needs a shared library this host lacks ({line}); reinstall the "
                "package that provides the binary."
            )
        if "=>" in line:
            target = line.split("=>", 1)[1].split("(")[0].strip()
        else:
            target = line.split("(")[0].strip()
        if target.startswith("/"):  # linux-vdso.so.1 has no file
            found.append(Path(target))
    return found


def _load_module(path: Path) -> tuple[str, bytes]:
    """Decompress a .ko / .ko.xz / .ko.gz / .ko.zst file; busybox insmod gets a plain .ko."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"Cannot read kernel module {path}: {exc}") from None
    name = path.name
    if name.endswith(".xz"):
        raw, name = lzma.decompress(raw), name[:-3]
    elif name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    elif name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise InfraError(
                f"Kernel module {path} is zstd-compressed and the zstd tool is missing; "
                "install it with 'sudo apt-get install zstd'."
            )
        raw = subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout
        name = name[:-4]
    if not MODULE_NAME.match(name) or raw[:4] != b"\x7fELF":
        raise HarnessError(f"{path} is not a kernel module (.ko, optionally .xz/.gz/.zst)")
    return name, raw


def load_inputs(recipe: str = "default", modules: Sequence[Path] = ()) -> Inputs:
    spec = load_recipe(recipe)
    keys = ensure_keys()
    binaries = []
    libraries: dict[str, bytes] = {}
    for binary in spec.binaries:
        try:
            content = binary.path.read_bytes()
        except FileNotFoundError:
            raise _missing_package(binary) from None
        binaries.append((binary, content))
        for lib in shared_libraries(binary.path):
            libraries.setdefault(canonical(str(lib)), lib.read_bytes())  # follows symlinks
    loaded_modules = [_load_module(Path(m)) for m in modules]
    names = [name for name, _ in loaded_modules]
    if len(set(names)) != len(names):
        raise HarnessError(f"Kernel modules with the same name given twice: {names}")
    return Inputs(
        recipe=spec,
        keys=keys,
        host_key_data=keys.host_key.read_bytes(),
        template=(TEMPLATES_DIR / INIT_TEMPLATE).read_text(),
        binaries=tuple(binaries),
        libraries=tuple(sorted(libraries.items())),
        modules=tuple(loaded_modules),
    )


# ---------------------------------------------------------------------------------- build


def render_init(
    hostname: str = "uph-guest",
    modules: Sequence[str] = (),
    ssh_port: int = 22,
    template: str | None = None,
) -> str:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    text = template if template is not None else (TEMPLATES_DIR / INIT_TEMPLATE).read_text()
    return env.from_string(text).render(
        hostname=hostname,
        modules=list(modules),
        ssh_port=ssh_port,
        iface=GUEST_IFACE,
        guest_cidr=GUEST_CIDR,
        gateway=GATEWAY,
        host_key=HOST_KEY_IN_GUEST,
        ready_marker=READY_MARKER,
        failed_marker=FAILED_MARKER,
    )


def _applets(busybox: Path) -> list[str]:
    proc = subprocess.run(
        [str(busybox), "--list"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise InfraError(f"'{busybox} --list' failed:\n{proc.stdout}{proc.stderr}")
    return sorted({a for a in proc.stdout.split() if "/" not in a and a not in (".", "..")})


def make_tree(inputs: Inputs) -> Tree:
    recipe = inputs.recipe
    tree = Tree()
    for path, mode in DIRS.items():
        tree.add_dir(path, mode)
    for alias, target in ALIASES.items():
        relative = os.path.relpath(target, os.path.dirname(alias) or ".")
        tree.add_symlink(alias, relative)
    # /dev is a devtmpfs at run time; these two only matter before it is mounted (the kernel
    # opens /dev/console for /init's stdio if the built-in initramfs lacks it).
    tree.add_chardev("dev/console", 5, 1, 0o600)
    tree.add_chardev("dev/null", 1, 3, 0o666)

    real = {spec.dest for spec, _ in inputs.binaries}
    for spec, content in inputs.binaries:
        tree.add_file(spec.dest, content, 0o755)
        if spec.applets:
            directory = str(PurePosixPath(spec.dest).parent)
            for applet in _applets(spec.path):
                path = f"{directory}/{applet}"
                if path not in real:
                    tree.add_symlink(path, PurePosixPath(spec.dest).name)
    for dest, content in inputs.libraries:
        tree.add_file(dest, content, 0o755)
    for name, content in inputs.modules:
        tree.add_file(f"lib/modules/{name}", content, 0o644)

    hostname = recipe.hostname
    tree.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    tree.add_file("etc/group", b"root:x:0:\ntty:x:5:\n")
    tree.add_file("etc/shells", b"/bin/sh\n/bin/ash\n")
    tree.add_file(
        "etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
    )
    tree.add_file("etc/hostname", f"{hostname}\n".encode())
    tree.add_file("etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n".encode())
    tree.add_file("etc/resolv.conf", f"nameserver {NAMESERVER}\n".encode())
    tree.add_file(
        "root/.ssh/authorized_keys", (inputs.keys.client_public_line + "\n").encode(), 0o600
    )
    tree.add_file(canonical(HOST_KEY_IN_GUEST), inputs.host_key_data, 0o600)
    for file in recipe.files:
        tree.add_file(file.dest, file.data, file.mode)
    init = render_init(
        hostname, [name for name, _ in inputs.modules], recipe.ssh_port, inputs.template
    )
    tree.add_file("init", init.encode(), 0o755)
    return tree


def _image(directory: Path, identity: str, keys: Keys) -> Image:
    # the archive holds the guest's SSH host private key: only its owner reads it (also
    # for images cached before this was so)
    os.chmod(directory, 0o700)
    os.chmod(directory / INITRAMFS_NAME, 0o600)
    return Image(
        initramfs=directory / INITRAMFS_NAME,
        identity=identity,
        client_key=keys.client_key,
        host_key_line=keys.host_public_line,
        ready_marker=READY_MARKER,
    )


def build_image(recipe: str = "default", modules: Sequence[Path] = ()) -> Image:
    """Build (or find in the cache) the initramfs for `recipe` plus optional kernel modules.

    `modules` are .ko files (optionally .xz/.gz/.zst) that /init insmods in the given order
    before it sets up networking, e.g. virtio_net for a distribution kernel.
    """
    inputs = load_inputs(recipe, modules)
    identity = inputs.identity()
    images = cache_dir("images")
    final = images / identity
    if (final / METADATA_NAME).is_file():
        log.debug("image cache hit %s", final)
        return _image(final, identity, inputs.keys)

    started = time.monotonic()
    tree = make_tree(inputs)
    archive = tree.cpio()
    tmp = Path(tempfile.mkdtemp(prefix=f".{identity}.", dir=images))
    try:
        (tmp / INITRAMFS_NAME).write_bytes(archive)
        metadata = {
            "identity": identity,
            "recipe": str(inputs.recipe.source),
            "hostname": inputs.recipe.hostname,
            "ssh_port": inputs.recipe.ssh_port,
            "modules": [name for name, _ in inputs.modules],
            "host_key_line": inputs.keys.host_public_line,
            "client_key": str(inputs.keys.client_key),
            "ready_marker": READY_MARKER,
            "size": len(archive),
            "entries": len(tree.entries),
            "build_seconds": round(time.monotonic() - started, 3),
            "inputs": {
                **{str(spec.path): _sha(content) for spec, content in inputs.binaries},
                **{f"/{dest}": _sha(content) for dest, content in inputs.libraries},
                **{f"module {name}": _sha(content) for name, content in inputs.modules},
            },
        }
        (tmp / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
        os.chmod(tmp / INITRAMFS_NAME, 0o600)
        os.chmod(tmp, 0o700)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / METADATA_NAME).is_file():  # not a concurrent build of the same
                raise
            log.debug("image %s was built concurrently; using that one", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built image %s (%d bytes) in %.2fs", final, len(archive), time.monotonic() - started)
    return _image(final, identity, inputs.keys)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
