"""Where the harness keeps its caches, keys and build outputs (never in the repo)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
PATCHES_DIR = REPO_ROOT / "patches"
IMAGES_DIR = REPO_ROOT / "images"
TARGETS_DIR = REPO_ROOT / "testcases" / "targets"


def cache_root() -> Path:
    """$UPROBE_HARNESS_CACHE, else $XDG_CACHE_HOME/uprobe-harness, else ~/.cache/uprobe-harness."""
    explicit = os.environ.get("UPROBE_HARNESS_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "uprobe-harness"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
