"""The sandbox every kernel build step runs in: a patch series, a config fragment and a
kernel tree are code from elsewhere (Makefiles, Kconfig scripts, `INITRAMFS_SOURCE`), and the
harness runs as root. bubblewrap (Debian's `bubblewrap`) gives each step:

- the host read-only, with the home directories (keys, the harness's own cache) hidden;
- write access to the paths the step needs only (the source tree, the build directory,
  ccache's directory); a tree's .git stays read-only;
- the source tree and the build directory at two fixed places (`SEEN_TREE`, `SEEN_BUILD`),
  whichever tree it is: identical files then compile with identical command lines, so
  ccache shares objects between trees (Debian's 6.1, a git tree holding the same code, a
  bisect history on top of it) instead of recompiling everything for each tree's path;
- no capabilities (root without them cannot remount what is read-only, or read files it
  does not own such as /etc/shadow);
- a private /tmp, no network (a new network namespace with only loopback), its own pid,
  IPC and UTS namespaces, a new session (no terminal injection), and death with the harness.

UPROBE_HARNESS_SANDBOX=off runs the steps unwrapped (a host without user namespaces); the
trust model in the README says what that gives up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import InfraError

HIDDEN = ("/root", "/home")  # tmpfs over these; the writable paths are bound back
# where every build step sees its tree and build directory (inside the sandbox's own /tmp)
SEEN_TREE = Path("/tmp/uprobe-harness/tree")
SEEN_BUILD = Path("/tmp/uprobe-harness/build")


def enabled() -> bool:
    return os.environ.get("UPROBE_HARNESS_SANDBOX", "on").lower() not in ("off", "0", "no")


@lru_cache(maxsize=1)
def ccache_dir() -> Path | None:
    if not shutil.which("ccache"):
        return None
    found = subprocess.run(
        ["ccache", "-k", "cache_dir"], capture_output=True, text=True
    ).stdout.strip()
    return Path(found) if found else None


def wrap(
    cmd: list[str],
    writable: Sequence[Path],
    readable: Sequence[Path] = (),
    cwd: Path | None = None,
    seen_at: Mapping[Path, Path] | None = None,
) -> list[str]:
    """`cmd` as a sandboxed command line (or unchanged when the sandbox is off). `readable`
    are paths under the hidden home directories that the step must still read (config
    fragments of a checkout there, a git tree's own repository for its shared objects).
    `seen_at` binds writable paths (and `cwd`) somewhere else than at their own path."""
    seen_at = seen_at or {}
    if not enabled():
        return list(cmd)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise InfraError(
            "The kernel build runs in a bubblewrap sandbox, and `bwrap` is not "
            "installed: apt-get install -y bubblewrap (or set "
            "UPROBE_HARNESS_SANDBOX=off to build unsandboxed; see the README's "
            "trust model)."
        )
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for hidden in HIDDEN:
        if Path(hidden).is_dir():
            args += ["--tmpfs", hidden]
    for path in readable:
        if Path(path).exists():
            args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(path), str(seen_at.get(path, path))]
    for path in writable:  # a tree's .git: git runs there later, unsandboxed
        if (Path(path) / ".git").exists():
            args += ["--ro-bind", str(Path(path) / ".git"), str(seen_at.get(path, path) / ".git")]
    cache = ccache_dir()
    if cache is not None:  # its configured place, whatever hides the user's ccache.conf
        args += ["--setenv", "CCACHE_DIR", str(cache)]
    args += [
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
    ]
    if cwd is not None:
        args += ["--chdir", str(seen_at.get(cwd, cwd))]
    return [*args, "--", *cmd]


@dataclass(frozen=True)
class BuildView:
    """A kernel tree and its build directory, and where the build steps see them: at
    `SEEN_TREE`/`SEEN_BUILD` in the sandbox, at their own paths without it. Make's `O=`,
    merge_config's `-O` and every path given to a step are the seen ones."""

    tree: Path
    build_dir: Path
    seen_tree: Path
    seen_build_dir: Path

    def wrap(self, cmd: list[str], readable: Sequence[Path] = ()) -> list[str]:
        """`cmd` run in the tree (as seen), sandboxed when the sandbox is on."""
        return wrap(
            cmd,
            build_paths(self.tree, self.build_dir),
            readable,
            cwd=self.tree,
            seen_at={self.tree: self.seen_tree, self.build_dir: self.seen_build_dir},
        )


def build_view(tree: Path, build_dir: Path) -> BuildView:
    if enabled():
        return BuildView(Path(tree), Path(build_dir), SEEN_TREE, SEEN_BUILD)
    return BuildView(Path(tree), Path(build_dir), Path(tree), Path(build_dir))


def build_paths(source_tree: Path, build_dir: Path) -> list[Path]:
    """What a kernel build step may write."""
    paths = [Path(source_tree), Path(build_dir)]
    cache = ccache_dir()
    if cache is not None:
        paths.append(cache)
    return paths
