"""The one TOML loader: its messages name the file, the entry and the key."""

import pytest

from harness import data


class _Entry(data.Spec):
    kind: str
    tags: list[str] = []


class _File(data.Spec):
    sources: dict[str, _Entry] = {}
    entry: list[_Entry] = []


def _error(text: str | bytes) -> str:
    with pytest.raises(data.DataError) as caught:
        data.load("f.toml", _File, text)
    return str(caught.value)


def test_a_table_key_msgspec_does_not_name_is_found():
    text = '[sources.a]\nkind = "x"\n[sources."debian:7.3"]\nkind = 3\n'
    assert _error(text) == 'f.toml: [sources."debian:7.3"]: kind: expected `str`, got `int`'
    text = '[sources.a]\nkind = "x"\n[sources.b]\nkind = "y"\nkinds = 1\n'
    assert _error(text) == "f.toml: [sources.b]: unknown key 'kinds'; known keys: kind, tags"


def test_an_item_of_an_array_of_values_is_numbered():
    text = '[[entry]]\nkind = "x"\n[[entry]]\nkind = "y"\ntags = ["a", 2]\n'
    assert _error(text) == "f.toml: [[entry]] 2: tags: item 2: expected `str`, got `int`"


def test_text_may_be_given_as_bytes():
    assert data.load("f.toml", _File, b'[[entry]]\nkind = "x"\n').entry[0].kind == "x"
    assert "f.toml: not valid TOML" in _error(b'kind = "\xff"\n')
