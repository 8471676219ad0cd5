"""The OpenAPI documents of the Key Manager's ETSI APIs (docs/openapi/) against the code:
every route of the ``etsi014`` and ``etsi004`` blueprints is an operation of its document with
the same methods and vice versa, every error answer is the JSON error with a ``message``, the
security scheme is mutual TLS, and the KM serves exactly the documents that docs/ holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from flask import Flask

from qkdtwin.key_manager.app import create_app
from qkdtwin.key_manager.config import parse_config
from qkdtwin.key_manager.etsi004 import bp as etsi004
from qkdtwin.key_manager.etsi014 import bp as etsi014
from qkdtwin.key_manager.manager import KeyManager
from qkdtwin.key_manager.openapi import DOCUMENTS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "openapi"
PACKAGED = ROOT / "src" / "qkdtwin" / "schemas" / "openapi"
BLUEPRINTS = {"etsi014": etsi014, "etsi004": etsi004}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _load(name: str) -> dict:
    return yaml.safe_load((DOCS / f"{name}.yaml").read_text())


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def _routes(name: str) -> dict[str, set[str]]:
    """{path with {} for each parameter: methods} of one blueprint's routes."""
    app = Flask("openapi-check")
    app.register_blueprint(BLUEPRINTS[name])
    out: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] != name:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", rule.rule)
        out.setdefault(path, set()).update(m.lower() for m in rule.methods
                                           if m not in ("HEAD", "OPTIONS"))
    return out


def _operations(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, item in doc["paths"].items():
        out[re.sub(r"\{[^}]+\}", "{}", path)] = {m for m in item if m in HTTP_METHODS}
    return out


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_has_every_route_and_no_other(name):
    doc = _load(name)
    assert doc["openapi"].startswith("3."), doc["openapi"]
    routes, ops = _routes(name), _operations(doc)
    assert routes, f"blueprint {name} has no routes"
    assert set(ops) - set(routes) == set(), f"in docs/openapi/{name}.yaml but not served"
    assert set(routes) - set(ops) == set(), f"served but missing in docs/openapi/{name}.yaml"
    for path, methods in routes.items():
        assert ops[path] == methods, f"{path}: served {methods}, documented {ops[path]}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_path_parameters_are_declared(name):
    doc = _load(name)
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method in set(item) & HTTP_METHODS:
            params = [_resolve(doc, p) for p in item[method].get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: {declared} != {names}"
            assert all(p["required"] for p in params if p["in"] == "path")


@pytest.mark.parametrize("name", DOCUMENTS)
def test_mutual_tls_and_errors_with_message(name):
    doc = _load(name)
    schemes = doc["components"]["securitySchemes"]
    assert doc["security"] == [{"mtls": []}] and schemes["mtls"]["type"] == "mutualTLS"
    for path, item in doc["paths"].items():
        for method in set(item) & HTTP_METHODS:
            op = item[method]
            assert op.get("operationId"), f"{method.upper()} {path} has no operationId"
            codes = set(op["responses"])
            assert "200" in codes and {"400", "401"} <= codes, (path, method, codes)
            for code, resp in op["responses"].items():
                resp = _resolve(doc, resp)
                schema = _resolve(doc, resp["content"]["application/json"]["schema"])
                if not code.startswith("2"):
                    assert "message" in schema["required"], (path, method, code)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_package_ships_the_documents_of_docs(name):
    assert (PACKAGED / f"{name}.yaml").read_bytes() == (DOCS / f"{name}.yaml").read_bytes(), (
        f"copy docs/openapi/{name}.yaml to src/qkdtwin/schemas/openapi/{name}.yaml")


def test_km_serves_the_documents_of_docs(tmp_path, test_ca):
    node = test_ca.issue("km9", ou="node")
    km = KeyManager(parse_config({
        "node": "km9", "listen": {"host": "127.0.0.1", "port": 0},
        "tls": {"ca": test_ca.ca, "cert": node.cert, "key": node.key},
        "data_dir": str(tmp_path / "km9")}))
    try:
        c = create_app(km).test_client()
        for name in DOCUMENTS:
            r = c.get(f"/api/v1/openapi/{name}")  # public: no client certificate needed
            assert r.status_code == 200 and r.mimetype == "application/yaml"
            assert r.data == (DOCS / f"{name}.yaml").read_bytes()
        r = c.get("/api/v1/openapi/nothing")
        assert r.status_code == 404 and "etsi014" in r.get_json()["message"]
    finally:
        km.store.close()


def test_a_method_the_document_does_not_list_gets_405_with_allow(tmp_path, test_ca):
    """RFC 9110: a 405 names the allowed methods (schemathesis's unsupported_method check
    found the KM's JSON 405 without ``Allow``)."""
    node = test_ca.issue("km9", ou="node")
    km = KeyManager(parse_config({
        "node": "km9", "listen": {"host": "127.0.0.1", "port": 0},
        "tls": {"ca": test_ca.ca, "cert": node.cert, "key": node.key},
        "data_dir": str(tmp_path / "km9")}))
    try:
        c = create_app(km).test_client()
        for method, path, allowed in (("TRACE", "/api/v1/keys/sae-b/status", {"GET"}),
                                      ("PUT", "/api/v1/keys/sae-b/enc_keys", {"GET", "POST"}),
                                      ("GET", "/api/v1/qkd004/get_key", {"POST"})):
            r = c.open(path, method=method)
            assert r.status_code == 405 and r.get_json()["message"], (method, path)
            assert "Allow" in r.headers, f"{method} {path}: 405 without Allow"
            assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}, r.headers
    finally:
        km.store.close()
