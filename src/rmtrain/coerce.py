"""Option values from YAML (or any mapping) read by the option's type, with the command line's
rules: YAML leaves `"no"` a truthy string and `1e-3` a string; here they are False and 0.001,
and a value that is not of the option's type is an error naming the key."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

TRUE = {"true", "yes", "y", "on", "1"}
FALSE = {"false", "no", "n", "off", "0"}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise ValueError("expected true or false (yes/no, 1/0)")


def _number(value: Any, kind: type) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise ValueError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
    if not isinstance(value, int | float):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _one(value: Any, kind: Any) -> Any:
    if kind is bool:
        return parse_bool(value)
    if kind in (int, float):
        return _number(value, kind)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected text, got {value!r}")
    if typing.get_origin(kind) is list:
        (inner,) = typing.get_args(kind) or (Any,)
        items = value if isinstance(value, list) else [value]
        return [_one(v, inner) for v in items]
    return value


def coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` (Optional and unions of one type with None included)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
            return None
        hint = args[0] if len(args) == 1 else Any
    if hint is Any:
        return value
    return _one(value, hint)


def coerce_all(values: dict[str, Any], cls: type) -> tuple[dict[str, Any], list[str]]:
    """Each value read as its option's type; the problems, each naming its key."""
    hints = typing.get_type_hints(cls)
    out, problems = {}, []
    for key, value in values.items():
        try:
            out[key] = coerce(value, hints.get(key, Any))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    return out, problems
