"""harness/configs/families.toml: the families, their modules and markers."""

import ast
import re

import pytest

from harness import data
from harness.paths import REPO_ROOT
from harness.results import families


def test_every_family_is_a_test_module_whose_tests_carry_its_marker():
    spec = families.load()
    assert "threads" in spec.family and "sweep" not in families.mutable()
    for name, family in spec.family.items():
        path = REPO_ROOT / "testcases" / f"{family.module}.py"
        source = path.read_text()
        # the module marks all its tests: pytestmark = pytest.mark.NAME (alone or in a list)
        marks = [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        ]
        assert marks and re.search(rf"pytest\.mark\.{name}\b", ast.unparse(marks[0])), (path, name)


def test_markers_are_the_families_and_the_others():
    markers = families.markers()
    assert set(families.load().family) | {"smp", "slow"} <= set(markers)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[family.a]\nmodule = "test_x"\nhelp = "a"\n'
            '[family.b]\nmodule = "test_x"\nhelp = "b"\n',
            "module 'test_x' is in two families",
        ),
        ('[family.a]\nmodule = "test_x"\n', "missing key 'help'"),
        ('[family.a]\nmodule = "test_x"\nhelp = "a"\nmutant = false\n', "unknown key 'mutant'"),
        (
            '[family.a]\nmodule = "test_x"\nhelp = "a"\n[marker]\na = "again"\n',
            "'a' is a family's marker already",
        ),
    ],
)
def test_bad_family_files_are_named_errors(tmp_path, text, message):
    path = tmp_path / "families.toml"
    path.write_text(text)
    with pytest.raises(data.DataError, match=message) as raised:
        families.load(path)
    assert str(path) in str(raised.value)
