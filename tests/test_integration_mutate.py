"""End to end: every known-bad mutant (patches/known-bad/) is built incrementally from the
default build and caught by the scenario families it declares (`harness mutate`)."""

import json
import subprocess
import sys

import pytest

from harness.jobs import mutate
from harness.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def test_every_mutant_is_caught_by_its_declared_families(tmp_path):
    results = tmp_path / "mutate"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "mutate",
            "--scope",
            "declared",
            "--results",
            str(results),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = json.loads((results / "mutate.json").read_text())
    names = {m["name"] for m in data["mutants"]}
    assert names == {m.name for m in mutate.load_mutants()}
    for entry in data["mutants"]:
        assert entry["ok"] and not entry["missed"], entry
        for family in entry["breaks"]:
            assert entry["families"][family]["caught"], (entry["name"], family)
    assert "CAUGHT*" in run.stdout
