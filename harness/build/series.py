"""Patch series: quilt `series` files and git-format-patch mboxes, parsed and applied.

A series is applied onto a pristine git work tree with `git apply`, one patch at a time.
If a patch does not apply, the caller resets the tree; nothing half-patched is kept.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import mailbox
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import PatchError
from harness.paths import PATCHES_DIR


@dataclass(frozen=True)
class Patch:
    name: str  # file name, or "mbox[N]: subject" for mbox members
    origin: str  # where it came from: "patches/x/series:3" or "x.mbox#2"
    text: bytes  # the patch as git apply reads it
    strip: int = 1


@dataclass(frozen=True)
class Series:
    name: str  # "uprobes-6.1-fixes", or the mbox file name; "" for none
    patches: tuple[Patch, ...]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for patch in self.patches:
            h.update(f"{patch.name}\0{patch.strip}\0".encode())
            h.update(hashlib.sha256(patch.text).digest())
        return h.hexdigest()

    def __bool__(self) -> bool:
        return bool(self.patches)


NO_SERIES = Series("", ())

_SERIES_OPTION = re.compile(r"^-p(\d+)$")


def load_series(spec: str | Path | None) -> Series:
    """Resolve a series spec: '' / 'none' (no patches), a name under patches/, a series
    directory, a `series` file, or an mbox file."""
    if spec is None or str(spec) in ("", "none"):
        return NO_SERIES
    path = Path(spec)
    if not path.exists() and (PATCHES_DIR / str(spec)).exists():
        path = PATCHES_DIR / str(spec)
    if path.is_dir():
        if (path / "series").is_file():
            return parse_quilt(path / "series")
        mboxes = sorted(path.glob("*.mbox"))
        if len(mboxes) == 1:
            return parse_mbox(mboxes[0])
        raise PatchError(
            f"Patch series directory {path} has no 'series' file (quilt layout) and not "
            f"exactly one *.mbox file, so the harness cannot tell which patches to apply in "
            f"which order. Add a 'series' file listing the patch files one per line."
        )
    if path.is_file():
        if path.name == "series":
            return parse_quilt(path)
        return parse_mbox(path)
    known = (
        sorted(p.name for p in PATCHES_DIR.iterdir() if p.is_dir()) if PATCHES_DIR.is_dir() else []
    )
    raise PatchError(
        f"Patch series '{spec}' was not found: it is neither a path nor a directory under "
        f"{PATCHES_DIR}. Known series: {', '.join(known) or 'none'}. Use --series none to "
        f"build without patches."
    )


def _series_root(directory: Path) -> Path:
    """Where a series' patch files may live: its own directory, or all of patches/ for a
    series kept there (a known-bad series reuses the default series' patch files)."""
    resolved = directory.resolve()
    patches = PATCHES_DIR.resolve()
    return patches if resolved.is_relative_to(patches) else resolved


def parse_quilt(series_file: Path) -> Series:
    """Parse a quilt series file: one patch per line, `#` comments, optional `-pN`."""
    directory = series_file.parent
    patches = []
    try:
        lines = series_file.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise PatchError(
            f"{series_file} is not a text file ({error}); a quilt series file "
            f"lists one patch file name per line."
        ) from None
    for line_no, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, options = words[0], words[1:]
        strip = 1
        for option in options:
            match = _SERIES_OPTION.match(option)
            if not match:
                raise PatchError(
                    f"{series_file}:{line_no}: unsupported option '{option}' for patch "
                    f"'{name}'. A quilt series line is 'PATCH [-pN]'."
                )
            strip = int(match.group(1))
        if "\0" in name:
            raise PatchError(f"{series_file}:{line_no}: a patch file name holds a NUL byte.")
        patch_path = directory / name
        root = _series_root(directory)
        if not patch_path.resolve().is_relative_to(root):
            raise PatchError(
                f"{series_file}:{line_no}: patch file '{name}' lies outside {root}: a series "
                f"names patches in its own directory (one under patches/ may also name "
                f"patches of another series there)."
            )
        if not patch_path.is_file():
            raise PatchError(
                f"{series_file}:{line_no}: patch file '{name}' is listed but does not exist "
                f"in {directory}."
            )
        text = patch_path.read_bytes()
        if b"\n+++ " not in text and not text.startswith(b"+++ "):
            raise PatchError(
                f"{series_file}:{line_no}: '{name}' contains no unified diff (no '+++' line)."
            )
        patches.append(Patch(name, f"{series_file}:{line_no}", text, strip))
    return Series(directory.name, tuple(patches))


def parse_mbox(mbox_file: Path) -> Series:
    """Split an mbox written by `git format-patch --stdout` or b4 into its patches."""
    box = mailbox.mbox(str(mbox_file), factory=None, create=False)
    patches = []
    for index, message in enumerate(box, start=1):
        parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        subject = " ".join(str(parsed.get("Subject", "")).split())
        body = _message_body(parsed)
        if b"\n+++ " not in body:
            if re.search(r"\[PATCH[^\]]*\b0+/\d+\]", subject):
                continue  # a cover letter
            raise PatchError(
                f"{mbox_file}: message {index} ('{subject}') contains no diff and is not a "
                f"cover letter."
            )
        patches.append(Patch(f"{index:04d}: {subject}", f"{mbox_file}#{index}", body, 1))
    if not patches:
        raise PatchError(f"{mbox_file}: no patches found (is it an mbox file?).")
    return Series(mbox_file.name, tuple(patches))


def _message_body(message: email.message.Message) -> bytes:
    if message.is_multipart():
        parts = [p for p in message.walk() if p.get_content_type() == "text/plain"]
        return b"\n".join(_payload(p) for p in parts)
    return _payload(message)


def _payload(message: email.message.Message) -> bytes:
    payload = message.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def apply_series(series: Series, tree: Path, source_label: str) -> None:
    """Apply every patch with `git apply`. Raise PatchError naming the series, the patch
    and the rejected file/hunk; the caller must reset the tree."""
    for patch in series.patches:
        result = subprocess.run(
            ["git", "apply", f"-p{patch.strip}", "--whitespace=nowarn", "-"],
            cwd=tree,
            input=patch.text,
            capture_output=True,
        )
        if result.returncode != 0:
            raise PatchError(
                _apply_failure_message(
                    series, patch, source_label, result.stderr.decode(errors="replace")
                )
            )


def _apply_failure_message(series: Series, patch: Patch, source_label: str, stderr: str) -> str:
    where = re.search(r"patch failed: (\S+):(\d+)", stderr)
    missing = re.search(r"error: (\S+): No such file or directory", stderr)
    if where:
        detail = f"the hunk at {where.group(1)}:{where.group(2)} was rejected"
    elif missing:
        detail = f"the file {missing.group(1)} does not exist in this source"
    else:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "git apply failed"
    return (
        f"Patch series '{series.name}': patch '{patch.name}' ({patch.origin}) does not apply "
        f"to {source_label}: {detail}. The source tree was reset to pristine and nothing was "
        f"built. git apply said: {' / '.join(stderr.strip().splitlines()[:4])}"
    )
