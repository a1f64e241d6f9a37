"""Which harness made a result: the package version and the git commit of the checkout."""

from __future__ import annotations

import hashlib
import subprocess

from harness import __version__
from harness.paths import REPO_ROOT


def harness_version() -> str:
    """Package version + git commit of the harness, + a digest of local changes if dirty."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return __version__
    diff = git("diff", "HEAD", "--", "harness", "testcases", "conftest.py")
    dirty = f"-dirty.{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    return f"{__version__}+g{commit}{dirty}"
