"""Load an HTML report in headless Chromium (Debian's `chromium`): the DOM after its
scripts ran, the JavaScript console errors, and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError

_CONSOLE = re.compile(r':CONSOLE[^\]]*\] "(.*)", source: (\S*)')
_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-extensions",
    "--enable-logging=stderr",
    "--v=0",
]


@dataclass(frozen=True)
class PageLoad:
    dom: str
    console_errors: list[str]
    screenshot: Path | None


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise InfraError(
        "headless Chromium is not installed: apt-get install -y chromium (./run installs it)."
    )


def load(
    page: Path,
    screenshot: Path | None = None,
    width: int = 1400,
    height: int = 1600,
    timeout: float = 120,
) -> PageLoad:
    binary, url = chromium(), Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="uph-chromium-") as profile:
        base = [binary, *_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000"]
        dumped = subprocess.run(
            base + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout
        )
        if dumped.returncode != 0 or "<html" not in dumped.stdout:
            raise InfraError(
                f"chromium could not load {page} (exit {dumped.returncode}):\n"
                f"{dumped.stderr[-2000:]}"
            )
        errors = [
            f"{m[1]} ({m[2]})"
            for m in _CONSOLE.finditer(dumped.stderr)
            if re.search(r"error|uncaught|failed", m[1], re.IGNORECASE)
        ]
        shot = None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                base + [f"--screenshot={screenshot}", f"--window-size={width},{height}", url],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            shot = screenshot if screenshot.is_file() else None
    return PageLoad(dumped.stdout, errors, shot)
