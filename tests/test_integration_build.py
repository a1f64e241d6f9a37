"""Integration: real kernel builds of the default source (slow on a cold cache; the cache
keeps later runs fast on the same machine)."""

import json
import subprocess
import sys
import time

import pytest

from harness.build import kernel
from harness.errors import ConfigError, PatchError
from harness.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def harness_cli(*args, timeout=3600):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def default_kernel():
    return kernel.build(kernel.BuildRequest())


def test_default_build_has_artefacts_and_metadata(default_kernel):
    assert default_kernel.bzimage.stat().st_size > 500_000
    meta = json.loads(default_kernel.metadata.read_text())
    assert meta["series"] == "uprobes-6.1-fixes" and meta["patches"]
    assert "--series uprobes-6.1-fixes" in meta["reproducer"]
    config = default_kernel.config.read_text()
    for needed in ("CONFIG_UPROBE_EVENTS=y", "CONFIG_SMP=y", "CONFIG_X86_MPPARSE=y"):
        assert needed in config
    # left out for build time and boot time: microvm runs with acpi=off and has no PCI
    for left_out in ("CONFIG_ACPI", "CONFIG_PCI", "CONFIG_IPV6", "CONFIG_LEGACY_PTYS"):
        assert f"# {left_out} is not set" in config, left_out
    assert "System.map" in str(default_kernel.system_map)


def test_same_inputs_hit_the_cache_quickly(default_kernel):
    started = time.monotonic()
    result = harness_cli("build", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cached"] is True and data["identity"] == default_kernel.identity
    assert time.monotonic() - started < 10  # the figure itself is in the benchmark


def test_patch_that_does_not_apply_is_reported_and_discarded(default_kernel, tmp_path):
    bad = tmp_path / "broken-series"
    bad.mkdir()
    (bad / "0001-broken.patch").write_text(
        "--- a/kernel/trace/trace_uprobe.c\n+++ b/kernel/trace/trace_uprobe.c\n"
        "@@ -1,2 +1,2 @@\n-this line is not in the file\n+neither is this one\n context\n"
    )
    (bad / "series").write_text("0001-broken.patch\n")
    with pytest.raises(PatchError) as caught:
        kernel.build(kernel.BuildRequest(series=str(bad)))
    message = str(caught.value)
    assert "broken-series" in message and "0001-broken.patch" in message
    assert "kernel/trace/trace_uprobe.c" in message
    # the next build of the same source starts from a pristine tree and hits the cache
    again = kernel.build(kernel.BuildRequest())
    assert again.identity == default_kernel.identity and again.cached
    from harness.build import sources

    tree = sources.cache_dir("sources") / "debian-6.1"
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True
    ).stdout
    assert status == ""


def test_impossible_config_option_is_named(tmp_path):
    fragment = tmp_path / "impossible.config"
    fragment.write_text("CONFIG_DEBUG_INFO_BTF=y\nCONFIG_NO_SUCH_OPTION_AT_ALL=y\n")
    with pytest.raises(ConfigError) as caught:
        kernel.build(kernel.BuildRequest(fragments=(str(fragment),)))
    message = str(caught.value)
    assert "CONFIG_DEBUG_INFO_BTF=y (requested at" in message and "depends on" in message
    assert "CONFIG_NO_SUCH_OPTION_AT_ALL" in message and "no such symbol" in message


def test_cli_reports_bad_series_in_one_paragraph():
    result = harness_cli("build", "--series", "no-such-series")
    assert result.returncode == 1
    assert "Patch series 'no-such-series' was not found" in result.stderr
    assert "Traceback" not in result.stderr
