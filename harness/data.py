"""One loader for every TOML data file (configs, known bugs, matrices, recipes, cases).

A file is parsed with tomllib and converted into typed structs (msgspec) whose
fields are the only keys allowed. Every mistake gets the same message shape, naming the
file, the entry and the key:

    known_bugs.toml: [[bug]] 3 (test = 'test_x'): missing key 'reason'
    sweep.toml: [compat]: unknown key 'bytes'; known keys: onebyte_skip, prefixes

Checks that types cannot express (a pattern that must compile, names that must be unique)
are made by the loader of each file after conversion, raising `error(path, where, what)`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from harness.errors import HarnessError

T = TypeVar("T")


class DataError(HarnessError):
    """A data file that cannot be used: not TOML, or not what its schema says."""


class Spec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every data file's structs: unknown keys are errors."""


def parse(path: Path | str, text: str | bytes | None = None) -> dict[str, Any]:
    """The file's TOML as plain data (its own text may be given, e.g. from an archive)."""
    try:
        if text is None:
            text = Path(path).read_text()
        return tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def load(path: Path | str, schema: type[T], text: str | bytes | None = None) -> T:
    """Parse PATH and convert it into SCHEMA (a Spec, or a dict/list of them)."""
    return convert(parse(path, text), schema, path)


def convert(raw: Any, schema: type[T], path: Path | str) -> T:
    try:
        return msgspec.convert(raw, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise DataError(_explain(str(exc), raw, schema, path)) from None


def key_step(key: str) -> str:
    """A table key as a step of a location: '.name', or '["debian:6.1"]' when it needs quotes."""
    return f".{key}" if _BARE_KEY.fullmatch(key) else f"[{json.dumps(key)}]"


def error(path: Path | str, where: str, what: str) -> DataError:
    """A semantic mistake found after conversion, in the same shape as the others."""
    return DataError(f"{path}: {where}: {what}" if where else f"{path}: {what}")


def entry_name(raw: Any, location: str) -> str:
    """'$.bug[2].reason' -> "[[bug]] 3 (test = 'x')": where a reader finds it in the file.
    A key that needs quotes is written '["key"]' (see key_step)."""
    parts: list[str] = []
    node = raw
    for step in _steps(location):
        if isinstance(step, str):
            parts.append(step if _BARE_KEY.fullmatch(step) else json.dumps(step))
            node = node.get(step) if isinstance(node, dict) else None
        else:
            number = step
            label = f"[[{parts.pop()}]] {number + 1}" if parts else f"entry {number + 1}"
            node = node[number] if isinstance(node, list) and number < len(node) else None
            parts.append(label + _identity(node))
    if not parts:
        return "top level"
    tables = next((n for n, part in enumerate(parts) if part.startswith("[[")), len(parts))
    if tables:  # leading plain tables as their header: [avx.maps]
        parts[:tables] = [f"[{'.'.join(parts[:tables])}]"]
    return ".".join(parts)


def _identity(node: Any) -> str:
    if isinstance(node, dict):
        for key in ("name", "id", "key", "test", "title"):
            value = node.get(key)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str | int):
                return f" ({key} = {value!r})"
    return ""


_MSG = re.compile(r"^(?P<what>.*?)(?: - at `(?P<at>[^`]*)`)?$", re.S)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STEP = re.compile(r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def _steps(location: str) -> list[str | int]:
    """'$.a[2]["b:c"]' -> ['a', 2, 'b:c']."""
    return [
        int(index) if index else key or json.loads(quoted)
        for key, index, quoted in _STEP.findall(location.removeprefix("$"))
    ]


def _explain(message: str, raw: Any, schema: Any, path: Path | str) -> str:
    found = _MSG.match(message)
    assert found is not None
    what, at = found["what"], _name_keys(found["at"] or "$", raw, schema)
    if unknown := re.match(r"Object contains unknown field `(.+)`", what):
        known = _fields_at(schema, at)
        what = f"unknown key {unknown[1]!r}" + (
            f"; known keys: {', '.join(known)}" if known else ""
        )
    elif missing := re.match(r"Object missing required field `(.+)`", what):
        what = f"missing key {missing[1]!r}"
    else:
        leaf = re.search(r"\.([A-Za-z0-9_-]+)((?:\[\d+\])*)$", at)
        if leaf:  # a wrong value: name its key, point at its entry
            items = "".join(f": item {int(n) + 1}" for n in re.findall(r"\d+", leaf[2]))
            what = f"{leaf[1]}{items}: {what[0].lower()}{what[1:]}"
            at = at[: leaf.start()] or "$"
    return f"{path}: {entry_name(raw, at)}: {what}"


def _name_keys(location: str, raw: Any, schema: Any) -> str:
    """msgspec writes a table's key as '[...]' (dict[str, X]): find each such key, the first
    whose value fails on its own, and write it in (key_step)."""
    pieces = location.split("[...]")
    named = pieces[0]
    for number, piece in enumerate(pieces[1:], start=1):
        unnamed = "[...]".join(pieces[:number]) + "[...]"  # as msgspec writes the prefix
        steps = _steps(named)
        table = _node(raw, steps)
        culprit = next(
            (
                key
                for key in (table if isinstance(table, dict) else ())
                if _fails_under(_with_only(raw, steps, key), schema, unnamed)
            ),
            None,
        )
        if culprit is None:
            return named + "[...]" + "[...]".join(pieces[number:])
        named += key_step(culprit) + piece
    return named


def _node(raw: Any, steps: list[str | int]) -> Any:
    for step in steps:
        raw = raw[step]
    return raw


def _with_only(raw: Any, steps: list[str | int], key: str) -> Any:
    """A copy of RAW where the table at STEPS holds only KEY."""
    if not steps:
        return {key: raw[key]}
    step, rest = steps[0], steps[1:]
    if isinstance(raw, dict):
        return {**raw, step: _with_only(raw[step], rest, key)}
    return [
        _with_only(item, rest, key) if number == step else item for number, item in enumerate(raw)
    ]


def _fails_under(raw: Any, schema: Any, prefix: str) -> bool:
    try:
        msgspec.convert(raw, schema, strict=True)
    except msgspec.ValidationError as exc:
        found = _MSG.match(str(exc))
        return found is not None and (found["at"] or "").startswith(prefix)
    return False


def _fields_at(schema: Any, location: str) -> list[str]:
    """The keys the struct at LOCATION allows (for 'unknown key' messages)."""
    info: Any = msgspec.inspect.type_info(schema)
    for key in _steps(location):
        info = _unwrap(info)
        if isinstance(key, str):
            if isinstance(info, msgspec.inspect.StructType):
                info = next((f.type for f in info.fields if f.encode_name == key), None)
            elif isinstance(info, msgspec.inspect.DictType):
                info = info.value_type
            else:
                return []
        elif isinstance(
            info,
            msgspec.inspect.ListType | msgspec.inspect.TupleType | msgspec.inspect.VarTupleType,
        ):
            info = getattr(info, "item_type", None)
        if info is None:
            return []
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def _unwrap(info: Any) -> Any:
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        if len(structs) == 1:
            return structs[0]
    return info
