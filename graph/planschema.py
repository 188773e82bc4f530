"""The types a plan file's record fields must have, checked before a record is built, so a hand
edit (`"step": "1"`, `"blocks": ["0", "2"]`, a 5,000-digit number) is refused naming the field,
not met later as a TypeError deep in the graph code."""

from __future__ import annotations

import json
import math
from typing import Any

#: Integers in a plan are steps, units, blocks and generations: anything past this is a typo.
MAX_INT = 2 ** 63


class TooLong(str):
    """A JSON integer literal too long to be a plan's number (kept as text to name it)."""


def parse_int(text: str) -> int | TooLong:
    """`json.loads(parse_int=...)`: integers as ints, except absurdly long ones (Python refuses to
    convert more than 4,300 digits, with an error that names nothing)."""
    return TooLong(text) if len(text.lstrip("-")) > 19 else int(text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_INT


def _matches(value: Any, annotation: str) -> bool:
    annotation = annotation.strip()
    if annotation == "None":
        return value is None
    if annotation == "int":
        return _is_int(value)
    if annotation == "float":
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if annotation == "str":
        return isinstance(value, str) and not isinstance(value, TooLong)
    if annotation == "bool":
        return isinstance(value, bool)
    if not isinstance(value, (list, tuple)):
        return False
    if annotation == "tuple":  # a store key: JSON scalars
        return all(v is None or _is_int(v) or _matches(v, "str") or _matches(v, "float") for v in value)
    if annotation.startswith("tuple[") and annotation.endswith("]"):
        parts = [p.strip() for p in annotation[len("tuple["):-1].split(",")]
        if parts[-1] == "...":
            return all(_matches(v, parts[0]) for v in value)
        return len(value) == len(parts) and all(_matches(v, p) for v, p in zip(value, parts))
    return True  # a custom kind's field of another type: its record's own checks decide


def check_field(value: Any, annotation: Any, where: str) -> None:
    """Raise ValueError naming `where` unless `value` has the type `annotation` (a string such as
    "int | None" or "tuple[int, int]") describes."""
    if not isinstance(annotation, str):
        return
    if any(_matches(value, alt) for alt in annotation.split("|")):
        return
    shown = json.dumps(value)[:60] if not isinstance(value, TooLong) else f"a {len(value)}-digit number"
    raise ValueError(f"{where}: expected {annotation.replace('tuple', 'a list')}, got {shown}")
