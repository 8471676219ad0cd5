"""Small value checks shared by the node, link and users rules (problem text included)."""

from __future__ import annotations

import math
from typing import Any


def typename(v: Any) -> str:
    """A YAML-ish name of a value's type, for messages ("mapping", "list", "nothing", ...)."""
    return {dict: "mapping", list: "list", str: "string", type(None): "nothing",
            bool: "boolean", int: "integer", float: "number"}.get(type(v), type(v).__name__)


def is_number(v: Any) -> bool:
    """A finite int or float (YAML booleans are ints in Python and do not count)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_count(where: str, key: str, value: Any, lo: int, hi: int | None) -> list[str]:
    """Problems of an integer field that must lie in [lo, hi] (no upper bound if hi is None)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return [f"{where}: {key}: must be an integer, got {typename(value)} {value!r}"]
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        return [f"{where}: {key}: {value} out of range {rng}"]
    return []
