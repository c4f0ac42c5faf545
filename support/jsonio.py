"""Strict JSON reading: UTF-8 only, no NaN, no repeated keys, bounded nesting; errors name the place."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


class DatasetError(ValueError):
    """An instruction dataset that cannot be used as it is; the message names file, entry and field."""


MAX_JSON_NESTING = 64  # deeper JSON inside an entry is refused: no dataset needs it, and it would break writing


class _DuplicateKeys(dict):
    """A JSON object that repeated a key; validation reports it with the entry's index."""

    def __init__(self, pairs, duplicates: list[str]):
        super().__init__(pairs)
        self.duplicates = duplicates


def _object_with_duplicates_marked(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    return _DuplicateKeys(pairs, [key for key, _ in pairs if key in seen or seen.add(key)])


def check_json_value(entry: dict, where: str) -> None:
    """Text that UTF-8 can encode (no lone surrogates such as "\\ud800"), no repeated keys, bounded nesting."""
    if type(entry) is dict and all(type(value) is str for value in entry.values()):
        try:  # the usual flat entry: one encode checks all its text (Python never pairs surrogates)
            "".join([*entry, *entry.values()]).encode("utf-8")
            return
        except UnicodeEncodeError:
            pass  # the walk below finds the field
    stack = [(entry, where, where, 0)]  # (value, its place, the place of its top-level field, depth)
    while stack:
        value, place, field_place, depth = stack.pop()
        if depth > MAX_JSON_NESTING:
            raise DatasetError(f"{field_place}: nested more than {MAX_JSON_NESTING} levels deep")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DatasetError(
                    f"{place}: not valid Unicode text (a lone surrogate {value[exc.start]!r} at character {exc.start})"
                ) from None
        elif isinstance(value, dict):
            if isinstance(value, _DuplicateKeys):
                raise DatasetError(f"{place}: the key {value.duplicates[0]!r} appears more than once")
            for key, item in value.items():
                if isinstance(key, str):
                    stack.append((key, f"{place}: a key", field_place, depth + 1))
                item_place = f"{place} > {key!r}" if depth else f"{where}: field {key!r}"
                stack.append((item, item_place, field_place if depth else item_place, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{place} > [{i}]", field_place, depth + 1) for i, item in enumerate(value))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not standard JSON")


def parse_json_bytes(payload: bytes, source: str = "<data>"):
    """Parse UTF-8 JSON (a leading byte-order mark is fine); a DatasetError names `source` and the place.

    Repeated keys inside an object are marked and reported by validation, which knows the entry.
    """
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_with_duplicates_marked,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        start = text.lstrip()[:40]
        hint = " (it looks like a web page, not JSON)" if start.startswith("<") else ""
        raise DatasetError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}"
        ) from None
    except RecursionError:
        raise DatasetError(f"{source}: JSON nested too deeply to read") from None
    except ValueError as exc:  # NaN, 1e999, an integer with thousands of digits: say where
        raise DatasetError(f"{source}: {_where_unusable(text)}unusable JSON value: {str(exc).split(';')[0]}") from None


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]|NaN|-?Infinity|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')


def _unusable(token: str) -> bool:
    if token in ("NaN", "Infinity", "-Infinity"):
        return True
    if token[-1:].isdigit() and not any(c in token for c in ".eE"):
        return len(token.lstrip("-")) > 4300  # Python refuses to convert longer integers
    return token[:1] in "-0123456789" and not math.isfinite(float(token))


def _where_unusable(text: str) -> str:
    """ "entry N (line L, column C): " for the first NaN, infinity or oversized number, or "" if none is found."""
    depth, entry = 0, 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group(0)
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
        elif token == ",":
            entry += depth == 1
        elif token[0] != '"' and _unusable(token):
            line = text.count("\n", 0, match.start()) + 1
            column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
            return f"entry {entry} (line {line}, column {column}): "
    return ""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond a float's range (it would be read as infinity)")
    return value


def read_json_file(path: str | Path):
    """Parse a UTF-8 JSON file; a DatasetError names the file (and line and column for bad JSON)."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a file") from None
    return parse_json_bytes(payload, str(path))
