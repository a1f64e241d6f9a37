import pytest

from harness.build import kconfig
from harness.errors import ConfigError


def fragment(tmp_path, text, name="frag.config"):
    path = tmp_path / name
    path.write_text(text)
    return kconfig.parse_fragment(path)


def test_parse_values_and_unset(tmp_path):
    f = fragment(tmp_path, '# comment\nCONFIG_A=y\nCONFIG_S="x y"\n# CONFIG_B is not set\n\n')
    assert [(o.symbol, o.value) for o in f.options] == [
        ("CONFIG_A", "y"),
        ("CONFIG_S", '"x y"'),
        ("CONFIG_B", "n"),
    ]
    assert f.options[2].origin.endswith("frag.config:4")


def test_malformed_line_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"frag.config:2: 'UPROBES=y' is not"):
        fragment(tmp_path, "CONFIG_A=y\nUPROBES=y\n")


def test_missing_fragment_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        kconfig.parse_fragment(tmp_path / "nope.config")


def test_relative_fragment_path_is_made_absolute(tmp_path, monkeypatch):
    """merge_config.sh runs in the kernel source tree: a path relative to the user's
    directory must not reach it relative."""
    (tmp_path / "extra.config").write_text("CONFIG_A=y\n")
    monkeypatch.chdir(tmp_path)
    parsed = kconfig.parse_fragment("extra.config")
    assert parsed.path.is_absolute() and parsed.path == tmp_path / "extra.config"


def test_base_fragment_has_what_the_harness_needs():
    symbols = {o.symbol: o.value for o in kconfig.parse_fragment(kconfig.BASE_FRAGMENT).options}
    for needed in (
        "CONFIG_UPROBES",
        "CONFIG_UPROBE_EVENTS",
        "CONFIG_SMP",
        "CONFIG_X86_MPPARSE",
        "CONFIG_VIRTIO_NET",
        "CONFIG_VIRTIO_MMIO",
        "CONFIG_MAGIC_SYSRQ",
    ):
        assert symbols.get(needed) == "y", needed
    # the guest runs on microvm with acpi=off: what only a PC needs stays out of the build
    for left_out in ("CONFIG_ACPI", "CONFIG_PCI", "CONFIG_LEGACY_PTYS"):
        assert symbols.get(left_out) == "n", left_out


def test_missing_options_last_request_wins(tmp_path):
    a = fragment(tmp_path, "CONFIG_A=y\nCONFIG_B=y\n", "a.config")
    b = fragment(tmp_path, "# CONFIG_B is not set\nCONFIG_C=m\n", "b.config")
    missing = kconfig.missing_options([a, b], {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "y"})
    assert sorted(o.symbol for o in missing) == ["CONFIG_B", "CONFIG_C"]


def test_describe_missing_names_dependency_and_unknown_symbol(git_tree, tmp_path):
    f = fragment(tmp_path, "CONFIG_FOO=y\nCONFIG_NOPE=y\n")
    text = kconfig.describe_missing(git_tree, list(f.options), {})
    assert "CONFIG_FOO=y (requested at" in text and "depends on: BAR && !BAZ" in text
    assert "CONFIG_NOPE" in text and "no such symbol" in text


def test_dependencies_include_the_enclosing_if_blocks(git_tree):
    (git_tree / "Kconfig").write_text(
        "if OUTER\nif MENU\nconfig FOO\n\tdepends on BAR\nendif\nendif\nif OTHER\nendif\n"
    )
    assert kconfig.kconfig_dependencies(git_tree, "CONFIG_FOO") == ["OUTER", "MENU", "BAR"]


def test_fragments_digest_tracks_content(tmp_path):
    a = fragment(tmp_path, "CONFIG_A=y\n", "a.config")
    d1 = kconfig.fragments_digest([a])
    (tmp_path / "a.config").write_text("CONFIG_A=n\n")
    assert kconfig.fragments_digest([kconfig.parse_fragment(tmp_path / "a.config")]) != d1
