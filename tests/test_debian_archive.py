"""The suite fetcher against a real, local Debian-style archive (file: URI): a .deb holding
usr/src/linux-source-9.9.tar.xz, Packages, a Release file clear-signed with a key made here.
apt-get does the real work (index download, signature check, .deb hash check)."""

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness.build import debian_archive, sources
from harness.errors import SourceError

PACKAGE = "linux-source-9.9"


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args],
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout


def _make_key(home: Path, name: str) -> Path:
    home.mkdir(mode=0o700)
    _gpg(
        home,
        "--passphrase",
        "",
        "--quick-gen-key",
        f"{name} <{name}@example.invalid>",
        "ed25519",
        "sign",
        "never",
    )
    keyring = home / "key.gpg"
    keyring.write_bytes(_gpg(home, "--export"))
    return keyring


def _tarball_bytes(version: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:xz") as tar:
        data = f"VERSION = 9\nPATCHLEVEL = 9\n# {version}\n".encode()
        info = tarfile.TarInfo(f"{PACKAGE}/Makefile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _make_deb(work: Path, version: str) -> Path:
    root = work / f"deb-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "src").mkdir(parents=True)
    (root / "usr" / "src" / f"{PACKAGE}.tar.xz").write_bytes(_tarball_bytes(version))
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: t <t@example.invalid>\nDescription: test kernel source\n"
    )
    deb = work / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "-Zxz", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


def _publish(repo: Path, suite: str, debs: list[Path], signer: Path) -> None:
    """Write dists/<suite>/{InRelease,main/binary-amd64/Packages} for the .debs."""
    pool = repo / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        target = pool / deb.name
        target.write_bytes(deb.read_bytes())
        control = subprocess.run(
            ["dpkg-deb", "-f", str(target)], capture_output=True, text=True, check=True
        ).stdout.strip()
        data = target.read_bytes()
        stanzas.append(
            f"{control}\nFilename: pool/{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    dist = repo / "dists" / suite
    packages = dist / "main" / "binary-amd64" / "Packages"
    packages.parent.mkdir(parents=True, exist_ok=True)
    packages.write_text("\n".join(stanzas))
    body = packages.read_bytes()
    release = (
        f"Origin: Test\nLabel: Test\nSuite: {suite}\nCodename: {suite}\n"
        f"Date: Sun, 29 Nov 2026 00:00:00 UTC\nArchitectures: amd64 all\n"
        f"Components: main\nSHA256:\n {hashlib.sha256(body).hexdigest()} {len(body)} "
        f"main/binary-amd64/Packages\n"
    )
    (dist / "Release").write_text(release)
    (dist / "InRelease").write_bytes(
        _gpg(signer, "--clearsign", "--output", "-", stdin=release.encode())
    )


@pytest.fixture
def archive(tmp_path, isolated_cache):
    """(repo dir, trusted keyring, signing homedir of a key that is not trusted)."""
    if os.geteuid() != 0:
        pytest.fail("the archive tests run apt-get with the harness's private state as root")
    trusted_home = tmp_path / "gpg-trusted"
    keyring = _make_key(trusted_home, "trusted")
    rogue_home = tmp_path / "gpg-rogue"
    _make_key(rogue_home, "rogue")
    repo = tmp_path / "repo"
    _publish(repo, "testsuite", [_make_deb(tmp_path, "9.9~rc1-1")], trusted_home)
    yield repo, keyring, trusted_home, rogue_home
    for home in (trusted_home, rogue_home):  # gpg starts an agent per homedir
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True
        )


def _pkg(repo: Path, keyring: Path, suite: str = "testsuite", package: str = PACKAGE):
    return debian_archive.SuitePackage(package, suite, keyring, f"file:{repo}")


def test_fetch_downloads_verifies_and_caches(archive, isolated_cache):
    repo, keyring, *_ = archive
    fetched = debian_archive.fetch(_pkg(repo, keyring))
    assert fetched.version == "9.9~rc1-1"
    assert fetched.tarball.parent == isolated_cache / "debian"
    with tarfile.open(fetched.tarball) as tar:
        assert f"{PACKAGE}/Makefile" in tar.getnames()
    # no staging directory or partial file left beside it
    assert sorted(p.name for p in fetched.tarball.parent.iterdir()) == sorted(
        [fetched.tarball.name, fetched.tarball.name + ".version"]
    )
    # a second fetch within the refresh interval does not touch the archive
    (repo / "dists").rename(repo / "gone")
    assert debian_archive.fetch(_pkg(repo, keyring)) == fetched


def test_a_new_version_in_the_suite_is_fetched(archive, tmp_path, monkeypatch):
    repo, keyring, trusted_home, _ = archive
    first = debian_archive.fetch(_pkg(repo, keyring))
    _publish(repo, "testsuite", [_make_deb(tmp_path, "9.9~rc2-1")], trusted_home)
    monkeypatch.setattr(debian_archive, "LISTS_MAX_AGE_S", -1)
    second = debian_archive.fetch(_pkg(repo, keyring))
    assert (first.version, second.version) == ("9.9~rc1-1", "9.9~rc2-1")
    assert second.tarball != first.tarball and b"rc2" in _makefile(second.tarball)


def _makefile(tarball: Path) -> bytes:
    with tarfile.open(tarball) as tar:
        return tar.extractfile(f"{PACKAGE}/Makefile").read()


def test_unknown_suite_is_one_clear_error(archive):
    repo, keyring, *_ = archive
    with pytest.raises(SourceError) as error:
        debian_archive.fetch(_pkg(repo, keyring, suite="nosuchsuite"))
    message = str(error.value)
    assert "has no suite 'nosuchsuite'" in message and PACKAGE in message
    assert "\n" not in message


def test_missing_package_is_one_clear_error(archive):
    repo, keyring, *_ = archive
    with pytest.raises(SourceError, match="has no package linux-source-0.1"):
        debian_archive.fetch(_pkg(repo, keyring, package="linux-source-0.1"))


def test_bad_signature_stops_before_any_download(archive, isolated_cache):
    repo, keyring, _, rogue_home = archive
    _publish(repo, "testsuite", [], rogue_home)  # re-signed by a key the keyring lacks
    with pytest.raises(SourceError) as error:
        debian_archive.fetch(_pkg(repo, keyring))
    assert "signature of suite 'testsuite' could not be verified" in str(error.value)
    assert str(keyring) in str(error.value)
    assert not list((isolated_cache / "debian").glob("*.tar.xz"))


def test_missing_keyring_is_named(archive, tmp_path):
    repo, _, *_ = archive
    missing = tmp_path / "no-such-keyring.gpg"
    with pytest.raises(SourceError, match=f"keyring {missing}.*is missing"):
        debian_archive.fetch(_pkg(repo, missing))


def test_interrupted_extraction_is_never_reused(archive, isolated_cache, monkeypatch):
    repo, keyring, *_ = archive
    real = debian_archive._tarball_from_deb

    def interrupted(deb, into, package):
        path = real(deb, into, package)
        path.write_bytes(path.read_bytes()[:100])  # half written...
        raise KeyboardInterrupt  # ...and the harness is stopped

    monkeypatch.setattr(debian_archive, "_tarball_from_deb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        debian_archive.fetch(_pkg(repo, keyring))
    store = isolated_cache / "debian"
    assert list(store.iterdir()) == []  # no tarball, no staging dir
    monkeypatch.setattr(debian_archive, "_tarball_from_deb", real)
    fetched = debian_archive.fetch(_pkg(repo, keyring))
    assert b"rc1" in _makefile(fetched.tarball)


def test_the_system_apt_configuration_is_untouched(archive, isolated_cache):
    repo, keyring, *_ = archive
    watched = [
        Path("/etc/apt/sources.list"),
        *Path("/etc/apt/sources.list.d").glob("*"),
        *Path("/var/lib/apt/lists").glob("*"),
    ]
    before = {p: p.stat().st_mtime_ns for p in watched if p.exists()}
    debian_archive.fetch(_pkg(repo, keyring))
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before
    assert not list(Path("/var/lib/apt/lists").glob("*testsuite*"))


def test_kernel_spec_with_a_suite_extracts_into_a_pristine_tree(
    archive, isolated_cache, monkeypatch
):
    repo, keyring, *_ = archive
    monkeypatch.setitem(
        sources.KNOWN.sources,
        "debian:9.9",
        sources.SourceEntry(
            kind="debian",
            package=PACKAGE,
            suite="testsuite",
            keyring=str(keyring),
            archive=f"file:{repo}",
        ),
    )
    source = sources.prepare(sources.parse_spec("debian:9.9"))
    assert source.label == "debian:9.9 (9.9~rc1-1)"
    assert (source.tree / "Makefile").read_text().startswith("VERSION = 9")
    assert source.identity.startswith(f"{PACKAGE}=9.9~rc1-1:")
    assert sources.git(source.tree, "status", "--porcelain") == ""
