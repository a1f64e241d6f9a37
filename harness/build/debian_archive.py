"""Debian kernel source packages from any suite, through a private apt configuration.

`linux-source-7.3` lives in experimental, `linux-source-7.2` in sid: suites the system's apt
does not (and must not) know. The harness keeps its own apt state under the cache
(`apt/<suite>/`: a one-line sources list, its lists, its package cache, an empty status file)
and points apt-get at it with `-o Dir::...` options. The archive is the one the system's apt
already uses for Debian (read from `apt-get indextargets`), and the signature of the suite's
InRelease is checked against the system's `debian-archive-keyring`; the system's sources,
lists and preferences are never read or written.

The package's tarball (`/usr/src/linux-source-X.tar.xz` inside the .deb) is kept as
`debian/<package>_<version>.tar.xz` in the cache. It is written under a temporary name and
renamed in, so an interrupted download or extraction is never reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import SourceError
from harness.paths import cache_dir

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE_S = 6 * 3600  # the suite's index is refreshed when older than this


@dataclass(frozen=True)
class SuitePackage:
    """A Debian source-tarball package from a suite the system does not carry."""

    package: str  # linux-source-7.3
    suite: str  # experimental
    keyring: Path = DEFAULT_KEYRING
    archive: str = ""  # empty: the Debian archive the system's apt uses


@dataclass(frozen=True)
class FetchedTarball:
    tarball: Path
    version: str  # the package version: 7.3~rc7-1~exp1


def system_archive() -> str:
    """The URI of the Debian archive the system's apt is configured with."""
    result = subprocess.run(
        ["apt-get", "indextargets", "Origin: Debian", "Label: Debian"],
        capture_output=True,
        text=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("Repo-URI:"):
            return line.split(":", 1)[1].strip()
    raise SourceError(
        "Cannot tell which Debian archive to fetch kernel sources from: the system's apt "
        "configuration names no repository with Origin 'Debian' and Label 'Debian' "
        "(apt-get indextargets). Run 'apt-get update' once, or set 'archive' for the source "
        "in harness/configs/kernels.toml."
    )


class PrivateApt:
    """apt-get and apt-cache running on the harness's own state for one suite."""

    def __init__(self, pkg: SuitePackage, root: Path | None = None):
        self.pkg = pkg
        self.root = root or cache_dir("apt", pkg.suite)
        self.lists = self.root / "lists"

    def options(self) -> list[str]:
        root = self.root
        return [
            "-o",
            f"Dir::Etc::sourcelist={root / 'sources.list'}",
            "-o",
            f"Dir::Etc::sourceparts={root / 'sources.list.d'}",
            "-o",
            f"Dir::Etc::preferences={root / 'preferences'}",
            "-o",
            f"Dir::Etc::preferencesparts={root / 'preferences.d'}",
            "-o",
            f"Dir::State::Lists={self.lists}",
            "-o",
            f"Dir::State::status={root / 'status'}",
            "-o",
            f"Dir::Cache={root / 'cache'}",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Acquire::Retries=2",
            # apt's download sandbox user (_apt) cannot enter root's cache directory
            *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
        ]

    def write_config(self, archive: str) -> None:
        if not self.pkg.keyring.is_file():
            raise SourceError(
                f"The keyring {self.pkg.keyring}, which signs Debian's archive, is missing: "
                f"without it the signature of suite '{self.pkg.suite}' cannot be checked and "
                f"{self.pkg.package} is not fetched. Install it: apt-get install -y "
                f"debian-archive-keyring."
            )
        for sub in ("sources.list.d", "preferences.d", "cache", "lists/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        line = f"deb [signed-by={self.pkg.keyring}] {archive} {self.pkg.suite} main\n"
        sources = self.root / "sources.list"
        if not sources.is_file() or sources.read_text() != line:
            sources.write_text(line)
            for old in self.lists.glob("*_dists_*"):  # index of another archive or keyring
                old.unlink()

    def lists_age(self) -> float:
        """Seconds since the last successful update (apt dates the lists by the server)."""
        stamp = self.root / "updated"
        return time.time() - stamp.stat().st_mtime if stamp.is_file() else float("inf")

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool, *self.options(), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )

    def update(self) -> None:
        result = self.run("apt-get", "update", "-q")
        output = result.stdout + result.stderr
        problem = _update_problem(output) if result.returncode == 0 else None
        if result.returncode != 0 or problem:
            raise SourceError(self._describe_update_failure(problem or _last_errors(output)))
        (self.root / "updated").touch()

    def _describe_update_failure(self, detail: str) -> str:
        pkg = self.pkg
        lowered = detail.lower()
        if any(
            s in lowered
            for s in ("no_pubkey", "signature", "not signed", "badsig", "expkeysig", "gpg error")
        ):
            what = f"the signature of suite '{pkg.suite}' could not be verified with {pkg.keyring}"
        elif "release file" in lowered or "404" in lowered:
            what = f"Debian's archive has no suite '{pkg.suite}'"
        else:
            what = f"apt-get update of suite '{pkg.suite}' failed"
        return (
            f"Cannot fetch {pkg.package}: {what}. Nothing was downloaded or extracted. "
            f"The harness's private apt configuration is {self.root} (the system's apt "
            f"sources are not used or changed). apt said: {detail}"
        )

    def candidate(self) -> str:
        result = self.run("apt-cache", "show", "--no-all-versions", self.pkg.package)
        for line in result.stdout.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        raise SourceError(
            f"Debian suite '{self.pkg.suite}' has no package {self.pkg.package} (looked up "
            f"with the private apt configuration in {self.root}). Check the package and suite "
            f"names in harness/configs/kernels.toml."
        )

    def download(self, version: str, into: Path) -> Path:
        result = self.run("apt-get", "download", "-q", f"{self.pkg.package}={version}", cwd=into)
        debs = sorted(into.glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise SourceError(
                f"Downloading {self.pkg.package} {version} from suite '{self.pkg.suite}' "
                f"failed; nothing was kept. apt said: {_last_errors(result.stdout + result.stderr)}"
            )
        return debs[0]


def fetch(pkg: SuitePackage, progress=None, apt: PrivateApt | None = None) -> FetchedTarball:
    """The package's source tarball in the cache, downloading it when there is none (or when
    the suite now carries a newer version)."""
    apt = apt or PrivateApt(pkg)
    store = cache_dir("debian")
    cached = _cached(store, pkg.package)
    if cached and apt.lists_age() < LISTS_MAX_AGE_S:
        return cached
    apt.write_config(pkg.archive or system_archive())
    if progress:
        progress(f"refreshing the index of Debian suite '{pkg.suite}'")
    try:
        apt.update()
    except SourceError:
        if cached is None:
            raise
        if progress:
            progress(
                f"the index of '{pkg.suite}' could not be refreshed; using the cached "
                f"{pkg.package} {cached.version}"
            )
        return cached
    version = apt.candidate()
    target = store / f"{pkg.package}_{_safe(version)}.tar.xz"
    if target.is_file():
        return FetchedTarball(target, version)
    if progress:
        progress(f"downloading {pkg.package} {version} from suite '{pkg.suite}'")
    work = Path(tempfile.mkdtemp(prefix=f".{pkg.package}.", dir=store))
    try:
        deb = apt.download(version, work)
        tarball = _tarball_from_deb(deb, work / "x", pkg.package)
        (target.parent / (target.name + ".version")).write_text(version)
        os.replace(tarball, target)  # atomic: a half-written tarball never has this name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FetchedTarball(target, version)


def _tarball_from_deb(deb: Path, into: Path, package: str) -> Path:
    into.mkdir()
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    found = sorted((into / "usr" / "src").glob("linux-source-*.tar.*"))
    if result.returncode != 0 or not found:
        raise SourceError(
            f"{deb.name} (package {package}) holds no usr/src/linux-source-*.tar.* tarball "
            f"or could not be unpacked: {result.stderr.strip()[-300:] or 'no tarball'}"
        )
    return found[0]


def _cached(store: Path, package: str) -> FetchedTarball | None:
    """The newest complete tarball of package in the store (by modification time)."""
    tarballs = sorted(store.glob(f"{package}_*.tar.xz"), key=lambda p: p.stat().st_mtime)
    for tarball in reversed(tarballs):
        version_file = tarball.parent / (tarball.name + ".version")
        if version_file.is_file():
            return FetchedTarball(tarball, version_file.read_text().strip())
    return None


def _safe(version: str) -> str:
    return version.replace(":", "%3a").replace("/", "_")


def _update_problem(output: str) -> str | None:
    """apt-get update exits 0 on some failures (a suite that is not signed may only warn)."""
    for line in output.splitlines():
        if line.startswith(("W:", "E:")) and any(
            s in line
            for s in (
                "GPG error",
                "NO_PUBKEY",
                "not signed",
                "Failed to fetch",
                "does not have a Release file",
            )
        ):
            return line
    return None


def _last_errors(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(("E:", "W:", "Err"))]
    return " ".join(lines[-4:])[-700:] or output.strip()[-400:] or "(no output)"
