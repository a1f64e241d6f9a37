"""Build the kernel under test: source + series + config fragments -> cached artefacts.

The artefact is identified by a content hash of (pristine source identity, series contents,
config fragments, compiler version). Same inputs again: no make. A different series reuses
the build directory of the same source family and fragments, so make rebuilds only what
the patches touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import children
from harness.build import kconfig, sandbox, sources
from harness.build import series as series_mod
from harness.errors import BuildError, PatchError
from harness.paths import cache_dir
from harness.progress import Progress

ARTEFACTS = {  # name in cache -> path in the build directory
    "bzImage": "arch/x86/boot/bzImage",
    "config": ".config",
    "System.map": "System.map",
    "vmlinux": "vmlinux",
}
REPRODUCIBLE_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "@0",
    "KBUILD_BUILD_VERSION": "1",
    "KBUILD_BUILD_USER": "uprobe-harness",
    "KBUILD_BUILD_HOST": "uprobe-harness",
}
_COMPILE_LINE = re.compile(rb"^\s+(CC|AS|LD|AR|HOSTCC|HOSTLD|OBJCOPY|GEN|UPD|CPP|VDSO\w*)\s")


@dataclass(frozen=True)
class BuildRequest:
    kernel: str = ""  # spec text; "" = default
    series: str | None = None  # None = the source's default series
    fragments: tuple[str, ...] = ()  # user fragments, merged after the base one
    jobs: int = 0  # 0 = nproc


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel and what produced it."""

    bzimage: Path
    identity: str  # content hash of the inputs (or of the image)
    spec: str
    label: str
    series: str = ""
    config: Path | None = None
    system_map: Path | None = None
    vmlinux: Path | None = None
    release: str = ""
    metadata: Path | None = None
    cached: bool = False
    durations: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def compiler_version(cc: str = "gcc") -> str:
    result = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.returncode == 0 else f"{cc}: missing"


def _make_args(build_dir: Path, jobs: int) -> list[str]:
    args = [f"O={build_dir}", "ARCH=x86_64", f"-j{jobs or os.cpu_count() or 1}"]
    if shutil.which("ccache"):
        args.append("CC=ccache gcc")
    return args


def reproducer(request: BuildRequest, series_name: str) -> str:
    cmd = [
        "python",
        "-m",
        "harness",
        "build",
        "--kernel",
        request.kernel or "debian:6.1",
        "--series",
        series_name or "none",
    ]
    for fragment in request.fragments:
        cmd += ["--config-fragment", fragment]
    return shlex.join(cmd)


def source_lock_name(spec: sources.KernelSpec) -> str:
    """One lock per cache tree: a git tree by its resolved path (the cache tree's own key),
    however it was spelled (./linux, /abs/linux/, a symlink to it)."""
    where = str(spec.path) if spec.path is not None else spec.text.split("@")[0]
    return "source-" + hashlib.sha256(where.encode()).hexdigest()[:12]


def build(request: BuildRequest, progress: Progress | None = None) -> Kernel:
    progress = progress or Progress.auto()
    spec = sources.parse_spec(request.kernel)
    if spec.kind == "prebuilt":
        return prebuilt(spec)

    series = series_mod.load_series(
        spec.default_series if request.series is None else request.series
    )
    fragments = [kconfig.parse_fragment(kconfig.BASE_FRAGMENT)]
    fragments += [kconfig.parse_fragment(f) for f in spec.source_fragments]
    fragments += [kconfig.parse_fragment(Path(f)) for f in request.fragments]
    compiler = compiler_version()
    with sources.locked(source_lock_name(spec)):
        started = time.monotonic()
        source = sources.prepare(spec, progress.note)
        prepared = time.monotonic()
        key = _artefact_key(source.identity, series, fragments, compiler)
        store = cache_dir("kernels") / key
        if (store / "metadata.json").is_file():
            # the key is content-addressed: the same patches under another series name
            # hit this entry, but the kernel is reported under the name asked for now
            _rename_series(store / "metadata.json", series.name, reproducer(request, series.name))
            return dataclasses.replace(_load(store, cached=True), series=series.name)

        config_id = kconfig.fragments_digest(fragments)[:16]
        build_dir = cache_dir("builds", f"{source.family}-{config_id}")
        log_path = cache_dir("logs") / f"build-{key[:16]}.log"
        with open(log_path, "wb") as log:
            try:
                series_mod.apply_series(series, source.tree, source.label)
            except PatchError:
                sources._reset(source.tree, source.commit)
                raise
            patched = time.monotonic()
            view = sandbox.build_view(source.tree, build_dir)
            make_args = _make_args(view.seen_build_dir, request.jobs)
            _configure(source, series, fragments, view, make_args, log, progress)
            configured = time.monotonic()
            _run_make(source, make_args, log, log_path, progress, view)
            built = time.monotonic()
        release = (build_dir / "include/config/kernel.release").read_text().strip()
        durations = {
            "prepare_s": round(prepared - started, 2),
            "patch_s": round(patched - prepared, 2),
            "config_s": round(configured - patched, 2),
            "make_s": round(built - configured, 2),
        }
        metadata = {
            "spec": spec.text,
            "label": source.label,
            "source_identity": source.identity,
            "source_commit": source.commit,
            "series": series.name,
            "series_digest": series.digest,
            "patches": [p.name for p in series.patches],
            "fragments": [str(f.path) for f in fragments],
            "fragments_digest": kconfig.fragments_digest(fragments),
            "compiler": compiler,
            "make_args": make_args,
            "release": release,
            "build_dir": str(build_dir),
            "log": str(log_path),
            "durations": durations,
            "reproducer": reproducer(request, series.name),
            "identity": key,
            "objects_built": progress.count,
        }
        _store(store, build_dir, metadata)
        return _load(store, cached=False)


# What the configuration is made from, as a path in the tree: Kconfig files, Makefiles,
# config fragments such as tiny.config, and scripts/ (Kconfig's $(shell,...) calls run
# scripts/*.sh; scripts/kconfig/ is Kconfig itself). One rule for a tree's files and for the
# files a patch touches.
_KCONFIG_INPUT = re.compile(r"(?:^|/)(?:Kconfig[^/]*|Makefile[^/]*|[^/]*\.config)$|^scripts/")

# the paths a patch touches, from its diff headers (added, changed, deleted, renamed, copied)
_PATCH_PATH = re.compile(
    rb"^(?:\+\+\+ |--- |rename from |rename to |copy from |copy to )(\S+)", re.MULTILINE
)


def is_kconfig_input(path: str) -> bool:
    return bool(_KCONFIG_INPUT.search(path))


def patch_touches_kconfig_inputs(text: bytes) -> bool:
    """Whether a patch changes a configuration input; `a/` and `b/` prefixes are dropped."""
    for match in _PATCH_PATH.finditer(text):
        path = match.group(1).decode(errors="replace")
        if path == "/dev/null":
            continue
        if path.startswith(("a/", "b/")) and not match.group(0).startswith((b"rename", b"copy")):
            path = path[2:]
        if is_kconfig_input(path):
            return True
    return False


def _kconfig_inputs(source) -> str:
    """Digest of the files the configuration is made from in the source's pristine commit,
    by their git blob ids: two commits that differ only in C files (a developer's edit of
    uprobes.c) configure alike."""
    listing = sources.git(source.tree, "ls-tree", "-r", "--full-tree", source.commit)
    h = hashlib.sha256()
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        if is_kconfig_input(path):
            h.update(f"{meta}\t{path}\n".encode())
    return h.hexdigest()


def _configure(
    source, series, fragments, view: sandbox.BuildView, make_args, log, progress
) -> None:
    """Generate and verify .config, unless the build directory already holds the one these
    inputs give: the same Kconfig files, Makefiles and scripts in the pristine commit, the
    same fragments, and no patch touching Kconfig or Makefiles (a series that only changes C
    files cannot change the configuration)."""
    h = hashlib.sha256(f"{_kconfig_inputs(source)}\0{kconfig.fragments_digest(fragments)}".encode())
    for patch in series.patches:
        if patch_touches_kconfig_inputs(patch.text):
            h.update(patch.text)
    h.update(f"\0{view.seen_tree}\0{view.seen_build_dir}".encode())  # paths in its Makefiles
    build_dir = view.build_dir
    stamp_file = build_dir / ".uprobe-harness-config"
    stamp = h.hexdigest()
    if (build_dir / ".config").exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    progress.note(f"configuring {source.label} in {build_dir}")
    stamp_file.unlink(missing_ok=True)
    kconfig.make_config(view, fragments, make_args, log, readable=_readable(source))
    stamp_file.write_text(stamp)


def _artefact_key(source_identity: str, series, fragments, compiler: str) -> str:
    h = hashlib.sha256()
    for part in (
        source_identity,
        series.digest,
        kconfig.fragments_digest(fragments),
        compiler,
        json.dumps(REPRODUCIBLE_ENV, sort_keys=True),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _readable(source) -> list[Path]:
    """A git tree's cache clone shares the user's repository objects: the sandbox must let
    the build read them (git describe in setlocalversion)."""
    return [source.spec.path] if source.spec.kind == "git" and source.spec.path else []


def _run_make(
    source, make_args, log, log_path: Path, progress: Progress, view: sandbox.BuildView
) -> None:
    build_dir = view.build_dir
    cmd = ["make", *make_args, "bzImage"]
    log.write(("$ " + shlex.join(cmd) + "\n").encode())
    log.flush()
    expected = _previous_object_count(build_dir)
    progress.start("building", expected)
    env = {**os.environ, **REPRODUCIBLE_ENV}
    # dies with us (children); its own session, so that an interruption stops all its jobs
    boxed = view.wrap(cmd, _readable(source))
    proc = children.popen(
        boxed,
        cwd=source.tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    tail: list[bytes] = []
    try:
        with children.sigterm_interrupts():
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                del tail[:-40]
                if _COMPILE_LINE.match(line):
                    progress.advance(line.decode(errors="replace").strip())
            rc = proc.wait()
    except BaseException:
        children.stop(proc, timeout=0)
        raise
    finally:
        progress.stop()
    log.flush()
    if rc != 0:
        last = b"".join(tail).decode(errors="replace")
        raise BuildError(
            f"make failed for {source.label} (exit {rc}). Full log: {log_path}. Last lines:\n{last}"
        )
    (build_dir / ".uprobe-harness-objects").write_text(str(progress.count))


def _previous_object_count(build_dir: Path) -> int | None:
    marker = build_dir / ".uprobe-harness-objects"
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        return None


def _store(store: Path, build_dir: Path, metadata: dict) -> None:
    staging = Path(tempfile.mkdtemp(prefix=store.name + ".", dir=store.parent))
    try:
        for name, rel in ARTEFACTS.items():
            if (build_dir / rel).exists():
                shutil.copy2(build_dir / rel, staging / name)
        shutil.copy2(metadata["log"], staging / "build.log")
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        if store.exists():
            shutil.rmtree(store)
        staging.rename(store)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _rename_series(metadata: Path, name: str, command: str) -> None:
    """metadata.json of a cached artefact names the series (and the reproducer) of the last
    request that used it: a series built once from a temporary directory and then asked for
    as patches/NAME is NAME from then on. Written whole or not at all."""
    meta = json.loads(metadata.read_text())
    if meta.get("series") == name and meta.get("reproducer") == command:
        return
    meta["series"], meta["reproducer"] = name, command
    staging = metadata.with_name(metadata.name + f".{os.getpid()}")
    staging.write_text(json.dumps(meta, indent=2) + "\n")
    staging.replace(metadata)


def _load(store: Path, cached: bool) -> Kernel:
    meta = json.loads((store / "metadata.json").read_text())
    optional = {name: (store / name if (store / name).exists() else None) for name in ARTEFACTS}
    return Kernel(
        bzimage=store / "bzImage",
        identity=meta["identity"],
        spec=meta["spec"],
        label=meta["label"],
        series=meta["series"],
        config=optional["config"],
        system_map=optional["System.map"],
        vmlinux=optional["vmlinux"],
        release=meta["release"],
        metadata=store / "metadata.json",
        cached=cached,
        durations=meta["durations"],
    )


def prebuilt(spec: sources.KernelSpec) -> Kernel:
    image = spec.path
    assert image is not None, spec
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    config = None
    for candidate in (
        image.parent / ".config",
        image.with_name(image.name.replace("vmlinuz", "config")),
    ):
        if candidate != image and candidate.is_file():
            config = candidate
            break
    release = image.name.removeprefix("vmlinuz-") if image.name.startswith("vmlinuz-") else ""
    return Kernel(
        bzimage=image,
        identity=digest,
        spec=spec.text,
        label=str(image),
        config=config,
        release=release,
        cached=True,
    )


def main_json(kernel: Kernel) -> str:
    return json.dumps(kernel.to_json(), indent=2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m harness build")
