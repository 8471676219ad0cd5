"""ETSI GS QKD 014 V1.1.1 northbound API: status, enc_keys, dec_keys (GET and POST)."""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.http import BadInput, caller, error, int_value, json_body
from qkdtwin.key_manager.manager import KeyManager

bp = Blueprint("etsi014", __name__, url_prefix="/api/v1/keys")

# Vendor extensions (ETSI 014 §6.2 allows named extensions); anything else mandatory is refused.
SUPPORTED_EXTENSIONS = {"qkdtwin_priority"}


def _km() -> KeyManager:
    return current_app.config["KM"]


def _handle(fn, *args: Any) -> Response:
    try:
        return fn(*args)
    except BadInput as exc:
        return error(400, exc.message, exc.details)
    except KmError as exc:
        return error(exc.http, exc.message, exc.details)


def _int_field(value: Any, name: str) -> int:
    """``number`` / ``size``: a JSON integer, or ASCII digits in a query string."""
    return int_value(value, name)


def _check_sae_id(sae: str, what: str) -> None:
    if not sae or len(sae) > 128 or not sae.isprintable():
        raise BadInput(f"{what} is not a valid SAE ID")


def _extensions(body: dict[str, Any], key: str) -> dict[str, Any]:
    ext = body.get(key)
    if ext is None:
        return {}
    if not isinstance(ext, list) or not all(isinstance(e, dict) for e in ext):
        raise BadInput(f"{key} must be an array of objects")
    out: dict[str, Any] = {}
    for e in ext:
        out.update(e)
    return out


def _priority(mandatory: dict[str, Any], optional: dict[str, Any]) -> int | None:
    unsupported = [k for k in mandatory if k not in SUPPORTED_EXTENSIONS]
    if unsupported:
        raise BadInput("not all extension_mandatory parameters are supported",
                       [{"extension_mandatory_unsupported": unsupported}])
    for src, strict in ((mandatory, True), (optional, False)):
        if "qkdtwin_priority" in src:
            p = src["qkdtwin_priority"]
            if isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 9:
                return p
            if strict:
                raise BadInput("not all extension_mandatory request options could be met",
                               [{"qkdtwin_priority": "must be an integer 0-9"}])
    return None


def _container(keys: list) -> Response:
    """ETSI 014 key container (built directly: this is the hot path)."""
    body = json.dumps({"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.key).decode()}
                                for k in keys]}, separators=(",", ":"))
    return Response(body, mimetype="application/json")


@bp.get("/<path:slave>/status")
def status(slave: str) -> Response:
    def run() -> Response:
        _check_sae_id(slave, "slave_SAE_ID")
        return jsonify(_km().etsi014.status(caller(), slave))
    return _handle(run)


@bp.route("/<path:slave>/enc_keys", methods=["GET", "POST"])
def enc_keys(slave: str) -> Response:
    def run() -> Response:
        km = _km()
        ident = caller()
        _check_sae_id(slave, "slave_SAE_ID")
        lim = km.cfg.limits
        if request.method == "GET":
            extra = set(request.args) - {"number", "size"}
            if extra:
                raise BadInput(f"unsupported query parameter(s): {', '.join(sorted(extra))}")
            body: dict[str, Any] = dict(request.args)
        else:
            body = json_body()
        number = _int_field(body.get("number", 1), "number")
        # no size: the session's key_size (the KM's, or less if the user's SLA caps it)
        size = None if body.get("size") is None else _int_field(body["size"], "size")
        if not 1 <= number <= lim.max_keys_per_request:
            raise BadInput(f"number must be between 1 and {lim.max_keys_per_request}")
        if size is not None and size % 8:
            raise BadInput("size shall be a multiple of 8")
        if size is not None and not lim.min_key_size <= size <= lim.max_key_size:
            raise BadInput(f"size must be between {lim.min_key_size} and {lim.max_key_size}")
        extra_slaves = body.get("additional_slave_SAE_IDs")
        if extra_slaves not in (None, []):
            if not isinstance(extra_slaves, list):
                raise BadInput("additional_slave_SAE_IDs must be an array of strings")
            raise BadInput("additional_slave_SAE_IDs are not supported by this KME"
                           " (max_SAE_ID_count is 0)")
        mandatory = _extensions(body, "extension_mandatory")
        optional = _extensions(body, "extension_optional")
        prio = _priority(mandatory, optional)
        if ident.cn == slave:
            raise BadInput("the master SAE cannot be its own slave")
        keys = km.etsi014.enc_keys(ident, slave, number, size, prio)
        return _container(keys)
    return _handle(run)


@bp.route("/<path:master>/dec_keys", methods=["GET", "POST"])
def dec_keys(master: str) -> Response:
    def run() -> Response:
        km = _km()
        ident = caller()
        _check_sae_id(master, "master_SAE_ID")
        if request.method == "GET":
            extra = set(request.args) - {"key_ID"}
            if extra:
                raise BadInput(f"unsupported query parameter(s): {', '.join(sorted(extra))}")
            ids = request.args.getlist("key_ID")
            if len(ids) != 1:
                raise BadInput("GET dec_keys takes exactly one key_ID query parameter")
        else:
            body = json_body(allow_empty=False)
            raw = body.get("key_IDs")
            if not isinstance(raw, list) or not raw:
                raise BadInput("key_IDs must be a non-empty array of {key_ID}")
            ids = []
            for item in raw:
                if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str):
                    raise BadInput("each key_IDs entry must be an object with a string key_ID")
                ids.append(item["key_ID"])
        if len(ids) > km.cfg.limits.max_keys_per_request:
            raise BadInput(f"at most {km.cfg.limits.max_keys_per_request} key IDs per request")
        if len(set(ids)) != len(ids):
            raise BadInput("a key_ID is named more than once")
        if any(not i or len(i) > 128 for i in ids):
            raise BadInput("one or more keys specified are not found on KME")
        keys = km.etsi014.dec_keys(ident, master, ids)
        return _container(keys)
    return _handle(run)
