"""testcases/targets/targets.toml: the probed programs' recipes."""

import pytest

from harness import data
from harness.errors import HarnessError
from harness.probing import targets


def test_every_program_source_of_the_directory_is_in_a_recipe():
    recipes = targets.recipes()
    used = {source for recipe in recipes.values() for source in recipe.sources}
    on_disk = {p.name for p in targets.TARGETS_DIR.iterdir() if p.suffix in (".c", ".S", ".h")}
    # insn_driver.c is the instruction cases' driver (harness/probing/insn.py builds it)
    assert on_disk - used == {"insn_driver.c"}
    assert recipes["stack32"].flags == ["-pthread", "-m32"]


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(HarnessError, match="unknown target 'nope'; known: .*hits"):
        targets.compile_target("nope")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[target.a]\nsources = ["a.c", "gone.c"]\n', "no such source file: gone.c"),
        ('[target.a]\nsources = ["a.c"]\nflag = ["-O3"]\n', "unknown key 'flag'"),
        ('[target.a]\nflags = ["-O3"]\n', "missing key 'sources'"),
    ],
)
def test_bad_recipe_files_are_named_errors(tmp_path, text, message):
    (tmp_path / "a.c").write_text("int main(void) { return 0; }\n")
    path = tmp_path / "targets.toml"
    path.write_text(text)
    with pytest.raises(data.DataError, match=message) as raised:
        targets.recipes(path)
    assert str(path) in str(raised.value)
