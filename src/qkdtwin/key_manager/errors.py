"""The one error type of the Key Manager's services: a refused request, which the HTTP layer
(etsi014, etsi004, kmapi) turns into the right status code / ETSI 004 ``status``."""

from __future__ import annotations

from typing import Any


class KmError(Exception):
    """A refused request. ``kind`` picks the HTTP status / ETSI 004 code in the API layer."""

    HTTP = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404,
            "conflict": 409, "gone": 410, "refused": 400, "unavailable": 503, "rate": 503,
            "insufficient": 503}

    def __init__(self, kind: str, message: str, details: list[dict[str, Any]] | None = None,
                 status004: int | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or []
        self.status004 = status004
        self.extra = extra or {}

    @property
    def http(self) -> int:
        return self.HTTP[self.kind]
