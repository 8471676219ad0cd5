"""Layer 2 of lab validation: containerlab's JSON schema (`schemas/clab.schema.json`).

Its `\\p{..}` patterns need the `regex` package, so the `pattern` keyword is re-implemented
with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import jsonschema
import regex


def _regex_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterable[Any]:
    """JSON schema `pattern` with the `regex` module (understands `\\p{L}` and `\\p{N}`)."""
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_VALIDATOR: Any = None


def _schema_validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        text = resources.files("qkdtwin").joinpath("schemas", "clab.schema.json").read_text()
        schema = json.loads(text)
        base = jsonschema.validators.validator_for(schema)
        cls = jsonschema.validators.extend(base, {"pattern": _regex_pattern})
        _VALIDATOR = cls(schema)
    return _VALIDATOR


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def schema_problems(data: Any) -> list[str]:
    """containerlab schema errors, one line each, located as `schema: <path>: <message>`."""
    problems = []
    for err in sorted(_schema_validator().iter_errors(data), key=lambda e: list(e.path)):
        # For anyOf/oneOf (links, nodes) report the most relevant sub-error.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        problems.append(f"schema: {_json_path(best.absolute_path)}: {best.message}")
    return problems
