"""Regenerate patches/upstream/ from patches/uprobes-7.3-fixes: one `git format-patch
--cover-letter` series against Debian's 7.3-rc source, To/Cc from the tree's own
scripts/get_maintainer.pl, `scripts/checkpatch.pl --strict` on every patch (checkpatch.txt),
and with --build-each a harness build after every patch (the series is bisectable).

    .venv/bin/python patches/upstream/regenerate.py [--build-each]

The cover letter's body is patches/upstream/cover-letter.txt (subject on its first line).
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-each", action="store_true",
                        help="build the kernel after every patch (incremental, a few s each)")
    args = parser.parse_args()
    patches = series.load_series(str(SERIES)).patches
    pristine = sources.prepare(sources.parse_spec(KERNEL))
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "linux"
        run(["git", "clone", "-q", "--shared", str(pristine.tree), str(tree)], Path(tmp))
        base = run(["git", "rev-parse", "HEAD"], tree).strip()
        for patch in patches:
            run(["git", *sources.GIT_IDENTITY, "am", "-q", str(SERIES / patch.name)], tree)
        maintainers = run(["perl", "scripts/get_maintainer.pl", "--no-git",
                           "--no-git-fallback", "--no-rolestats",
                           *[str(SERIES / p.name) for p in patches]], tree).splitlines()
        lists = [m for m in maintainers if "@vger." in m or m.startswith("x86@")]
        people = [m for m in maintainers if m not in lists]
        out = Path(tmp) / "out"
        cover = (HERE / "cover-letter.txt").read_text().split("\n", 1)
        run(["git", *sources.GIT_IDENTITY, "format-patch", "-q", "--cover-letter",
             "--zero-commit", "--no-signature", "--thread=shallow", "-o", str(out),
             *[f"--to={p}" for p in people],
             *[f"--cc={m}" for m in lists], f"{base}..HEAD"], tree)
        letter = next(out.glob("0000-cover-letter.patch"))
        text = letter.read_text()
        text = text.replace("*** SUBJECT HERE ***", cover[0].strip())
        text = text.replace("*** BLURB HERE ***", cover[1].strip())
        letter.write_text(text)
        report = []
        for path in sorted(out.glob("*.patch")):
            if path.name.startswith("0000-"):
                continue
            check = subprocess.run(["perl", "scripts/checkpatch.pl", "--strict", str(path)],
                                   cwd=tree, capture_output=True, text=True).stdout
            findings = [line for line in check.splitlines()
                        if line.startswith(("WARNING", "ERROR", "CHECK", "total:"))]
            report.append(f"{path.name}\n" + "\n".join(f"  {f}" for f in findings))
        for old in HERE.glob("*.patch"):
            old.unlink()
        for path in sorted(out.glob("*.patch")):
            shutil.copy(path, HERE / path.name)
        (HERE / "checkpatch.txt").write_text(
            "scripts/checkpatch.pl --strict, run in Debian's 7.3-rc tree (no git history)\n\n"
            + "\n".join(report) + "\n")
        print("\n".join(report))
    if args.build_each:
        builds = []
        with tempfile.TemporaryDirectory() as tmp:
            for count in range(1, len(patches) + 1):
                part = Path(tmp) / f"first-{count}"
                part.mkdir()
                for patch in patches[:count]:
                    shutil.copy(SERIES / patch.name, part / patch.name)
                (part / "series").write_text("".join(f"{p.name}\n"
                                                     for p in patches[:count]))
                started = time.monotonic()
                built = kernel.build(kernel.BuildRequest(kernel=KERNEL, series=str(part)))
                how = ("cached: built earlier from the same patches" if built.cached else
                       f"built in {time.monotonic() - started:.0f} s")
                builds.append(f"after {patches[count - 1].name}: {built.release}, {how}, "
                              f"artefact {built.identity[:12]}")
                print(builds[-1])
        with (HERE / "checkpatch.txt").open("a") as handle:
            handle.write("\nBisectability (python -m harness build after every patch):\n"
                         + "\n".join(f"  {b}" for b in builds) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
