"""Regenerate patches/upstream/ from patches/uprobes-7.3-fixes, split by the maintainers who
take them (the subject's prefix): the x86 uprobes patches as one `git format-patch
--cover-letter` series in patches/upstream/, the tracing ones (`tracing/...`) as a series of
their own in patches/upstream/tracing/, the generic uprobes ones (`uprobes: ...`, in
kernel/events/) in patches/upstream/core/. Each is made against Debian's pristine 7.3-rc source
(each applies there alone), To/Cc from the tree's own scripts/get_maintainer.pl,
`scripts/checkpatch.pl --strict` on every patch (checkpatch.txt), and with --build-each a
harness build after every patch of the x86 series (it is bisectable).

    .venv/bin/python patches/upstream/regenerate.py [--build-each]

The x86 cover letter's body is patches/upstream/cover-letter.txt (subject on its first line).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from harness.build import kernel, series, sources  # noqa: E402

KERNEL = "debian:7.3"
SERIES = REPO / "patches" / "uprobes-7.3-fixes"


def run(cmd: list[str], cwd: Path, check: bool = True) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


# subject prefix -> the directory its series goes to (relative to patches/upstream), and
# whether it gets a cover letter; the first matching prefix wins, "" matches every patch
GROUPS = [("tracing/", "tracing", False), ("uprobes: ", "core", False), ("", ".", True)]


def group_of(patch_text: str) -> str:
    subject = next((line for line in patch_text.splitlines() if line.startswith("Subject:")), "")
    title = subject.split("]", 1)[-1].strip()
    return next(where for prefix, where, _cover in GROUPS if title.startswith(prefix))


def format_group(tree: Path, base: str, names: list[str], out: Path, cover: bool) -> list[str]:
    """Apply NAMES on BASE in TREE and format them into OUT; checkpatch's findings."""
    run(["git", "checkout", "-q", "--detach", base], tree)
    for name in names:
        run(["git", *sources.GIT_IDENTITY, "am", "-q", str(SERIES / name)], tree)
    maintainers = run(
        [
            "perl",
            "scripts/get_maintainer.pl",
            "--no-git",
            "--no-git-fallback",
            "--no-rolestats",
            *[str(SERIES / n) for n in names],
        ],
        tree,
    ).splitlines()
    lists = [m for m in maintainers if "@vger." in m or m.startswith("x86@")]
    people = [m for m in maintainers if m not in lists]
    run(
        [
            "git",
            *sources.GIT_IDENTITY,
            "format-patch",
            "-q",
            "--zero-commit",
            "--no-signature",
            "--thread=shallow",
            "-o",
            str(out),
            *(["--cover-letter"] if cover else []),
            *[f"--to={p}" for p in people],
            *[f"--cc={m}" for m in lists],
            f"{base}..HEAD",
        ],
        tree,
    )
    if cover:
        letter = next(out.glob("0000-cover-letter.patch"))
        subject, body = (HERE / "cover-letter.txt").read_text().split("\n", 1)
        text = letter.read_text().replace("*** SUBJECT HERE ***", subject.strip())
        letter.write_text(text.replace("*** BLURB HERE ***", body.strip()))
    report = []
    for path in sorted(out.glob("*.patch")):
        if path.name.startswith("0000-"):
            continue
        check = subprocess.run(
            ["perl", "scripts/checkpatch.pl", "--strict", str(path)],
            cwd=tree,
            capture_output=True,
            text=True,
        ).stdout
        findings = [
            line
            for line in check.splitlines()
            if line.startswith(("WARNING", "ERROR", "CHECK", "total:"))
        ]
        report.append(f"{path.name}\n" + "\n".join(f"  {f}" for f in findings))
    return report


def build_each(names: list[str]) -> list[str]:
    """A harness build of the first 1..N patches of NAMES: the series is bisectable."""
    builds = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in range(1, len(names) + 1):
            part = Path(tmp) / f"first-{count}"
            part.mkdir()
            for name in names[:count]:
                shutil.copy(SERIES / name, part / name)
            (part / "series").write_text("".join(f"{n}\n" for n in names[:count]))
            started = time.monotonic()
            built = kernel.build(kernel.BuildRequest(kernel=KERNEL, series=str(part)))
            how = (
                "cached: built earlier from the same patches"
                if built.cached
                else f"built in {time.monotonic() - started:.0f} s"
            )
            builds.append(
                f"after {names[count - 1]}: {built.release}, {how}, artefact {built.identity[:12]}"
            )
            print(builds[-1])
    return builds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--build-each",
        action="store_true",
        help="build the kernel after every x86 patch (incremental, a few s each)",
    )
    args = parser.parse_args()
    names = [p.name for p in series.load_series(str(SERIES)).patches]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of((SERIES / name).read_text()), []).append(name)
    spec = sources.parse_spec(KERNEL)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "linux"
        # the lock a build holds while it patches and resets the cache tree
        with sources.locked(kernel.source_lock_name(spec)):
            pristine = sources.prepare(spec)
            run(["git", "clone", "-q", "--no-checkout", str(pristine.tree), str(tree)], Path(tmp))
            base = pristine.commit
        for prefix, where, cover in GROUPS:
            if where not in groups:
                continue
            out = Path(tmp) / "out" / where
            report = format_group(tree, base, groups[where], out, cover)
            target = (HERE / where).resolve()
            target.mkdir(exist_ok=True)
            for old in target.glob("*.patch"):
                old.unlink()
            for path in sorted(out.glob("*.patch")):
                shutil.copy(path, target / path.name)
            (target / "checkpatch.txt").write_text(
                "scripts/checkpatch.pl --strict, run in Debian's 7.3-rc tree (no git history)\n\n"
                + "\n".join(report)
                + "\n"
            )
            print(f"{where}/ ({prefix or 'everything else'}):\n" + "\n".join(report))
    if args.build_each and "." in groups:
        builds = build_each(groups["."])
        with (HERE / "checkpatch.txt").open("a") as handle:
            handle.write(
                "\nBisectability (python -m harness build after every patch):\n"
                + "\n".join(f"  {b}" for b in builds)
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
