"""Request and answer helpers shared by the Key Manager's blueprints (etsi014, etsi004,
kmapi): the JSON error body, the JSON request body, the caller's certificate identity."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Response, g, jsonify, request

from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.identity import Identity


class BadInput(Exception):
    """A request the HTTP layer refuses before any service sees it (always 400)."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


def error(code: int, message: str, details: list[dict[str, Any]] | None = None,
          **extra: Any) -> Response:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    body.update({k: v for k, v in extra.items() if v is not None})
    resp = jsonify(body)
    resp.status_code = code
    return resp


MAX_JSON_DEPTH = 32        # nesting of arrays/objects in a request body
MAX_INT = 2**53 - 1        # the largest integer any field takes (JSON's exact integers)
PRESCAN_MAX_BYTES = 1 << 20  # application bodies (64 KiB) are prescanned for their depth


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def _depth_ok(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw``'s arrays and objects nest at most ``limit`` deep (brackets inside
    strings do not count); checked before parsing, so that no body can make the parser
    recurse (a RecursionError would otherwise be a 500)."""
    if raw.count(b"[") + raw.count(b"{") <= limit or len(raw) > PRESCAN_MAX_BYTES:
        return True  # beyond PRESCAN_MAX_BYTES (peer KMs' batches) the parser's own bound
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    depth = 0
    for c in brackets:
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_body(raw: bytes) -> Any:
    """``raw`` as JSON, or BadInput: nesting depth bounded (MAX_JSON_DEPTH), no NaN or
    Infinity, integers of at most 16 digits (the body size is bounded by the server)."""
    if not _depth_ok(raw):
        raise BadInput(f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_int=_bounded_int,
                          parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput(f"malformed JSON body: {str(exc)[:200]}") from None


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:20]} is out of range")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:
        raise ValueError(f"integer {text[:20]}... has more than 16 digits")
    return int(text)


def json_body(allow_empty: bool = True) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty and allowed)."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadInput("request body must be a JSON object")
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise BadInput("request body must be a JSON object")
    return data


def int_value(value: Any, name: str, lo: int = 0, hi: int = MAX_INT) -> int:
    """An integer field (JSON integer, or a string of ASCII digits from a query string)
    within [lo, hi]; BadInput otherwise. Booleans, floats, Unicode digits such as "²" or
    "٣", signs and spaces are refused."""
    if isinstance(value, str):
        v = value
        if not (v.isascii() and v.isdigit()) or len(v) > 16:
            raise BadInput(f"{name} must be an integer")
        value = int(v)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise BadInput(f"{name} must be between {lo} and {hi}")
    return value


def caller() -> Identity:
    """The identity the application's ``before_request`` took from the client certificate."""
    ident = g.get("identity")
    if ident is None:
        raise KmError("unauthorized", "a client certificate issued by the lab CA is required")
    return ident
