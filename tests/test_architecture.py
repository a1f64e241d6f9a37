"""The layering written in pyproject.toml ([tool.importlinter]) holds, and the checker can
see a broken layer; mypy is clean on the package and the benchmarks. (The README's Layout
tree is checked in test_readme.)"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        assert found, f"{name} is not installed (it is in the dev extras: pip install -e .[dev])"
        return found
    return str(path)


def test_the_layer_contracts_hold():
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """jobs import build (main builds the kernel): a contract forbidding it must break."""
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_package = harness\n\n"
        "[importlinter:contract:jobs-without-build]\n"
        "name = jobs never import build\ntype = forbidden\n"
        "source_modules = harness.jobs\nforbidden_modules = harness.build\n"
    )
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "jobs never import build BROKEN" in result.stdout
    assert "harness.jobs.main -> harness.build" in result.stdout


def test_mypy_is_clean():
    result = subprocess.run(
        [_tool("mypy"), "--no-incremental", "-p", "harness"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-6000:]


def test_mypy_is_clean_on_the_benchmarks():
    result = subprocess.run(
        [_tool("mypy"), "--no-incremental", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-6000:]
