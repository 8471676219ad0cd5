"""Request and answer helpers shared by the Key Manager's blueprints (etsi014, etsi004,
kmapi): the JSON error body, the JSON request body, the caller's certificate identity."""

from __future__ import annotations

import json
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


def json_body(allow_empty: bool = True) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty and allowed)."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadInput("request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("request body must be a JSON object")
    return data


def caller() -> Identity:
    """The identity the application's ``before_request`` took from the client certificate."""
    ident = g.get("identity")
    if ident is None:
        raise KmError("unauthorized", "a client certificate issued by the lab CA is required")
    return ident
