"""The OpenAPI documents of the Key Manager's ETSI APIs, served by the KM itself:
``GET /api/v1/openapi/etsi014`` and ``GET /api/v1/openapi/etsi004`` (YAML, OpenAPI 3.1).

The documents are kept in docs/openapi/ and shipped with the package (qkdtwin/schemas/
openapi/); tests/unit/test_openapi.py checks that both copies are the same and that they
describe exactly the routes of the ``etsi014`` and ``etsi004`` blueprints. They are public
(no client certificate needed): they describe the interface, nothing of the lab.
"""

from __future__ import annotations

import functools
from importlib import resources

from flask import Blueprint, Response

from qkdtwin.key_manager.http import error

bp = Blueprint("openapi", __name__, url_prefix="/api/v1/openapi")

DOCUMENTS = ("etsi014", "etsi004")


@functools.cache
def document(name: str) -> bytes:
    """The YAML text of one of DOCUMENTS."""
    ref = resources.files("qkdtwin").joinpath("schemas", "openapi", f"{name}.yaml")
    return ref.read_bytes()


@bp.get("/<name>")
def openapi(name: str) -> Response:
    if name not in DOCUMENTS:
        return error(404, f"no OpenAPI document {name!r}; there are {', '.join(DOCUMENTS)}")
    return Response(document(name), mimetype="application/yaml")
