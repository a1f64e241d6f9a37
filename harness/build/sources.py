"""Kernel sources: Debian's packaged tarballs, local git trees, or a prebuilt bzImage.

Every buildable source ends up as a git work tree in the cache, reset to a pristine commit
before each build. The user's own checkout is only ever read (`git rev-parse`): the cache
clone borrows its objects through `--shared`, so HEAD, index and branches stay untouched.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import data
from harness.build import debian_archive
from harness.errors import SourceError
from harness.paths import CONFIGS_DIR, cache_dir


class SourceEntry(data.Spec):
    """A named kernel source (harness/configs/kernels.toml [sources."NAME"])."""

    kind: str  # "debian"
    package: str  # the Debian source package
    tarball: str = ""  # installed with the system's apt: its tarball path
    suite: str = ""  # or fetched from this suite of Debian's archive
    keyring: str = str(debian_archive.DEFAULT_KEYRING)
    archive: str = ""  # "": the Debian archive the system's apt uses
    default_series: str = ""
    source_fragments: list[str] = []


class SourceDefaults(data.Spec):
    kernel: str  # the source used when the user names none


class KnownSources(data.Spec):
    sources: dict[str, SourceEntry]
    defaults: SourceDefaults


def load_known(path: Path = CONFIGS_DIR / "kernels.toml") -> KnownSources:
    raw = data.parse(path)
    known = data.convert(raw, KnownSources, path)
    for name, entry in known.sources.items():
        where = data.entry_name(raw, "$.sources" + data.key_step(name))
        if entry.kind != "debian":
            raise data.error(path, where, f'kind = {entry.kind!r}: the only kind is "debian"')
        if bool(entry.tarball) == bool(entry.suite):
            raise data.error(
                path,
                where,
                "give exactly one of 'tarball' (installed with the "
                "system's apt) or 'suite' (fetched from Debian)",
            )
    if known.defaults.kernel not in known.sources:
        raise data.error(
            path, "[defaults]", f"kernel = {known.defaults.kernel!r} is not one of the [sources]"
        )
    return known


KNOWN = load_known()  # harness/configs/kernels.toml
GIT_IDENTITY = [
    "-c",
    "user.name=uprobe-harness",
    "-c",
    "user.email=uprobe-harness@localhost",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    # a tree a build wrote to must not run code through git
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
]


@dataclass(frozen=True)
class KernelSpec:
    """What the user asked for, parsed."""

    text: str  # as given: "debian:6.1", "/src/linux@v6.12", "/boot/vmlinuz"
    kind: str  # "debian" | "git" | "prebuilt"
    path: Path | None = None  # git tree or bzImage
    rev: str = "HEAD"  # git commit-ish

    @property
    def default_series(self) -> str:
        entry = KNOWN.sources.get(self.text)
        return entry.default_series if entry else ""

    @property
    def source_fragments(self) -> tuple[Path, ...]:
        """Fragments this source always gets after the base one (kernels.toml
        `source_fragments`, names under harness/configs/fragments/): options that exist
        only in some kernels, such as 7.3's CONFIG_SYSCALL_USER_DISPATCH."""
        entry = KNOWN.sources.get(self.text)
        return tuple(
            CONFIGS_DIR / "fragments" / name for name in (entry.source_fragments if entry else ())
        )


@dataclass(frozen=True)
class Source:
    """A pristine source checked out in the cache's work tree."""

    spec: KernelSpec
    tree: Path  # the cache work tree (git)
    commit: str  # pristine commit in that tree
    identity: str  # stable identity of the pristine source
    label: str  # human name: "debian:6.1 (6.1.192-2)"
    family: str  # work trees of one family share a build directory


def parse_spec(text: str | None) -> KernelSpec:
    text = text or KNOWN.defaults.kernel
    if text in KNOWN.sources:
        return KernelSpec(text, KNOWN.sources[text].kind)
    if text.startswith("debian:"):
        raise SourceError(
            f"Unknown Debian kernel source '{text}'. Known: {', '.join(KNOWN.sources)} "
            f"(harness/configs/kernels.toml)."
        )
    path_text, _, rev = text.partition("@")
    path = Path(path_text).expanduser().resolve()
    if path.is_dir():
        if not (path / ".git").exists():
            raise SourceError(
                f"Kernel tree {path} is not a git repository; the harness builds "
                f"git trees at a commit-ish (PATH@REV) so builds are reproducible."
            )
        return KernelSpec(text, "git", path, rev or "HEAD")
    if path.is_file():
        if rev:
            raise SourceError(f"'{text}': a prebuilt kernel image takes no @revision.")
        return KernelSpec(text, "prebuilt", path)
    raise SourceError(
        f"Kernel '{text}' is neither a known source ({', '.join(KNOWN.sources)}), nor a git "
        f"tree (PATH[@REV]), nor a kernel image file."
    )


def pinned_spec(text: str | None) -> str:
    """The same kernel as `text`, spelled so that another process in another directory, a
    moment later, resolves it to the same build: a git tree's absolute path at the commit
    its revision names now, a kernel image's absolute path; Debian sources unchanged."""
    spec = parse_spec(text)
    if spec.kind == "git":
        assert spec.path is not None
        return f"{spec.path}@{_resolve_commit(spec.path, spec.rev)}"
    if spec.kind == "prebuilt":
        return str(spec.path)
    return spec.text


@contextmanager
def locked(name: str):
    """An exclusive lock on one cache object, across processes (pytest-xdist workers)."""
    lock_path = cache_dir("locks") / f"{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git(tree: Path, *args: str, check: bool = True, capture: bool = True) -> str:
    result = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=tree, capture_output=capture, text=True
    )
    if check and result.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {tree}: {result.stderr.strip()}")
    return result.stdout.strip() if capture else ""


def debian_tarball(spec: KernelSpec, progress=None) -> tuple[Path, str, str]:
    """(tarball, package version, identity) of a Debian source: installed with the system's
    apt when the entry names a tarball path, fetched from its suite otherwise."""
    entry = KNOWN.sources[spec.text]
    if entry.suite:
        fetched = debian_archive.fetch(
            debian_archive.SuitePackage(
                entry.package, entry.suite, Path(entry.keyring), entry.archive
            ),
            progress,
        )
        tarball, version = fetched.tarball, fetched.version
    else:
        tarball = Path(entry.tarball)
        if not tarball.is_file():
            install_debian_source(entry.package)
        version = (
            subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", entry.package], capture_output=True, text=True
            ).stdout.strip()
            or "unknown"
        )
    return tarball, version, f"{entry.package}={version}:{tarball.stat().st_size}"


def install_debian_source(package: str) -> None:
    if os.geteuid() != 0:
        raise SourceError(
            f"Debian package {package} is not installed and the harness is not "
            f"root. Run: sudo apt-get install -y {package}"
        )
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if result.returncode != 0:
            raise SourceError(
                f"Could not install Debian package {package} ({' '.join(cmd)}): "
                f"{result.stderr.strip()[-500:]}"
            )


def prepare(spec: KernelSpec, progress=None) -> Source:
    """Make the cache work tree for spec pristine at the wanted commit. Call under lock."""
    if spec.kind == "debian":
        return _prepare_debian(spec, progress)
    if spec.kind == "git":
        return _prepare_git(spec)
    raise SourceError(f"'{spec.text}' is a prebuilt image: there is no source to prepare.")


def _prepare_debian(spec: KernelSpec, progress) -> Source:
    tarball, version, identity = debian_tarball(spec, progress)
    name = "debian-" + spec.text.split(":", 1)[1]
    tree = cache_dir("sources") / name
    stamp = tree / ".git" / "uprobe-harness-identity"
    if not (stamp.is_file() and stamp.read_text() == identity):
        _extract_debian(tarball, tree, identity, progress)
    commit = git(tree, "rev-parse", "HEAD")
    _reset(tree, commit)
    return Source(spec, tree, commit, identity, f"{spec.text} ({version})", name)


def _extract_debian(tarball: Path, tree: Path, identity: str, progress) -> None:
    """Extract once into a temp dir, commit everything as the pristine tree, rename in."""
    if progress:
        progress(f"extracting {tarball.name} (once per Debian source version)")
    staging = Path(tempfile.mkdtemp(prefix=tree.name + ".", dir=tree.parent))
    try:
        subprocess.run(
            ["tar", "-xf", str(tarball), "-C", str(staging), "--strip-components=1"], check=True
        )
        if progress:
            progress("recording the pristine tree in git")
        git(staging, "init", "-q")
        git(staging, "add", "-A", "-f", ".")
        git(staging, "commit", "-q", "-m", f"pristine {identity}", "--date=1970-01-01T00:00:00Z")
        (staging / ".git" / "uprobe-harness-identity").write_text(identity)
        if tree.exists():
            shutil.rmtree(tree)
        staging.rename(tree)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _resolve_commit(path: Path, rev: str) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=path,
        capture_output=True,
        text=True,
    )
    commit = result.stdout.strip()
    if commit:
        return commit
    if "dubious ownership" in result.stderr:
        raise SourceError(
            f"git refuses to read {path}: it is owned by another user than the "
            f"one running the harness (git's safe.directory check). Run the "
            f"harness as the tree's owner, or mark the tree safe: git config "
            f"--global --add safe.directory {path}"
        )
    raise SourceError(f"'{rev}' is not a commit in {path}.")


def _prepare_git(spec: KernelSpec) -> Source:
    user_repo = spec.path
    assert user_repo is not None, spec
    commit = _resolve_commit(user_repo, spec.rev)
    name = "git-" + hashlib.sha256(str(user_repo).encode()).hexdigest()[:12]
    tree = cache_dir("sources") / name
    if not (tree / ".git").exists():
        subprocess.run(
            ["git", "clone", "-q", "--shared", "--no-checkout", str(user_repo), str(tree)],
            check=True,
            capture_output=True,
        )
    _reset(tree, commit)
    describe = subprocess.run(
        ["git", "describe", "--always", "--tags", commit],
        cwd=user_repo,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Source(
        spec, tree, commit, f"git:{commit}", f"{user_repo}@{describe or commit[:12]}", name
    )


def _reset(tree: Path, commit: str) -> None:
    """Back to pristine: discards any patch applied by an earlier (maybe failed or killed)
    run. Files git rewrites get a fresh mtime, unchanged files keep theirs (incremental make).
    Called under the tree's lock, so a git lock file found here was left by a killed run."""
    _remove_stale_git_locks(tree)
    git(tree, "checkout", "-q", "-f", "--detach", commit)
    git(tree, "reset", "-q", "--hard", commit)
    git(tree, "clean", "-q", "-f", "-d", "-x")


def _remove_stale_git_locks(tree: Path) -> None:
    git_dir = tree / ".git"
    if not git_dir.is_dir():
        return
    for lock in [*git_dir.glob("*.lock"), *git_dir.glob("refs/**/*.lock")]:
        lock.unlink(missing_ok=True)
