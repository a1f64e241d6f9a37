"""SSH keys for talking to guests.

Two key pairs live in ``cache_dir("keys")`` (never in the repo), created on first use:

* the *client* key: Ed25519, private half in OpenSSH format (mode 0600) for paramiko, public
  half as an ``ssh-ed25519 AAAA... comment`` line that goes into the guest's authorized_keys;
* the guest's *host* key: Ed25519 in dropbear's own format (made by ``dropbearkey``), baked
  into the image; its public line is what the SSH client pins (paramiko ``RejectPolicy``).

Creation is safe when several processes (pytest-xdist workers) start at once: the slow path
holds an exclusive ``flock`` on ``keys/.lock`` and every file is written under a temporary
name and renamed into place, so a file that exists is complete.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import InfraError
from harness.paths import REPO_ROOT, cache_dir

CLIENT_KEY_NAME = "client_ed25519"
HOST_KEY_NAME = "host_ed25519.dropbear"
KEY_COMMENT = "uprobe-harness"
DROPBEARKEY = "dropbearkey"


@dataclass(frozen=True)
class Keys:
    client_key: Path  # OpenSSH private key, mode 0600, for paramiko
    client_public_line: str  # "ssh-ed25519 AAAA... uprobe-harness", for authorized_keys
    host_key: Path  # dropbear-format private host key, mode 0600, goes into the image
    host_public_line: str  # "ssh-ed25519 AAAA...", for pinning the guest

    def known_hosts_line(self, host: str, port: int = 22) -> str:
        """An OpenSSH known_hosts line for the guest as reached at host:port."""
        where = host if port == 22 else f"[{host}]:{port}"
        return f"{where} {self.host_public_line}"


def keys_dir() -> Path:
    path = cache_dir("keys")
    if path.resolve().is_relative_to(REPO_ROOT):
        raise InfraError(
            f"The key directory {path} is inside the repository {REPO_ROOT}; private keys must "
            "never be stored there. Point UPROBE_HARNESS_CACHE (or XDG_CACHE_HOME) at a "
            "directory outside the repository."
        )
    os.chmod(path, 0o700)
    return path


def ensure_keys() -> Keys:
    """Return the key set, generating whatever is missing (cheap when it all exists)."""
    directory = keys_dir()
    keys = _read_keys(directory)
    if keys is not None:
        return keys
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _create_missing(directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    keys = _read_keys(directory)
    if keys is None:  # pragma: no cover - _create_missing raises instead
        raise InfraError(f"SSH keys in {directory} are still incomplete after generation.")
    return keys


def _paths(directory: Path) -> tuple[Path, Path, Path, Path]:
    client = directory / CLIENT_KEY_NAME
    host = directory / HOST_KEY_NAME
    return client, client.with_name(client.name + ".pub"), host, host.with_name(host.name + ".pub")


def _read_keys(directory: Path) -> Keys | None:
    client, client_pub, host, host_pub = _paths(directory)
    if not all(p.is_file() for p in (client, client_pub, host, host_pub)):
        return None
    for private in (client, host):
        if private.stat().st_mode & 0o077:
            os.chmod(private, 0o600)
    return Keys(
        client_key=client,
        client_public_line=_check_line(client_pub),
        host_key=host,
        host_public_line=_check_line(host_pub),
    )


def _check_line(path: Path) -> str:
    line = path.read_text().strip()
    fields = line.split()
    if len(fields) < 2 or fields[0] != "ssh-ed25519":
        raise InfraError(
            f"The public key file {path} does not hold an 'ssh-ed25519 AAAA...' line. Delete "
            f"{path.parent} to have fresh keys generated (guest images are rebuilt to match)."
        )
    return line


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _create_missing(directory: Path) -> None:
    client, client_pub, host, host_pub = _paths(directory)

    if not client.is_file():
        client_pub.unlink(missing_ok=True)  # never pair a fresh private key with a stale line
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_atomically(client, pem, 0o600)
    if not client_pub.is_file():
        loaded = serialization.load_ssh_private_key(client.read_bytes(), password=None)
        public = loaded.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_atomically(client_pub, public + f" {KEY_COMMENT}\n".encode(), 0o644)

    if not host.is_file():
        host_pub.unlink(missing_ok=True)
        tmp = host.with_name(f".{host.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # dropbearkey refuses to overwrite
        _dropbearkey("-t", "ed25519", "-f", str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, host)
    if not host_pub.is_file():
        out = _dropbearkey("-y", "-f", str(host))
        lines = [ln for ln in out.splitlines() if ln.startswith("ssh-ed25519 ")]
        if not lines:
            raise InfraError(f"'dropbearkey -y -f {host}' printed no 'ssh-ed25519' line:\n{out}")
        line = " ".join(lines[0].split()[:2])  # drop dropbear's user@host comment
        _write_atomically(host_pub, (line + "\n").encode(), 0o644)


def _dropbearkey(*args: str) -> str:
    exe = shutil.which(DROPBEARKEY)
    if exe is None:
        raise InfraError(
            "dropbearkey was not found, so the guest's SSH host key cannot be generated. It "
            "comes with the Debian package dropbear-bin (which also provides the dropbear SSH "
            "server put into the guest image); install it with: "
            "sudo apt-get install dropbear-bin"
        )
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise InfraError(
            f"'{exe} {' '.join(args)}' failed with exit status {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc.stdout
