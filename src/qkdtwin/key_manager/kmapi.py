"""KM-to-KM API (modelled on ETSI GS QKD 020): relay of end-to-end keys (``ext_keys``),
link-key synchronisation (``link_keys``) and ETSI 004 chunk demand towards the source.
Callers are peer KMs, identified by their node certificate (OU=node, CN=node name)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.http import BadInput, caller, error, json_body
from qkdtwin.key_manager.manager import KeyManager
from qkdtwin.key_manager.relay import RelayError

bp = Blueprint("kmapi", __name__, url_prefix="/kmapi")


def _km() -> KeyManager:
    return current_app.config["KM"]


def _peer() -> str:
    ident = caller()
    if ident.ou != "node":
        raise KmError("forbidden", "only key managers (node certificates) may call /kmapi")
    return ident.cn


def _handle(fn) -> Response:
    try:
        return fn()
    except BadInput as exc:
        return error(400, exc.message, exc.details)
    except RelayError as exc:
        return error(exc.status, exc.message)
    except KmError as exc:
        return error(exc.http, exc.message, exc.details)


@bp.get("/versions")
def versions() -> Response:
    return jsonify({"versions": [{"version": "v1", "extension": "qkdtwin"}]})


@bp.post("/v1/ext_keys")
def ext_keys() -> Response:
    return _handle(lambda: jsonify(_km().relay_in.ext_keys(_peer(), json_body(allow_empty=False))))


@bp.post("/v1/link_keys")
def link_keys() -> Response:
    return _handle(lambda: jsonify(_km().relay_in.link_keys(_peer(), json_body(allow_empty=False))))


@bp.post("/v1/demand")
def demand() -> Response:
    def run() -> Response:
        peer = _peer()
        body = json_body(allow_empty=False)
        sid, idx = body.get("session_id"), body.get("index")
        if not isinstance(sid, str) or len(sid) > 128 or isinstance(idx, bool) \
                or not isinstance(idx, int) or not 0 <= idx <= 2**40:
            raise BadInput("demand needs session_id (string) and index (integer >= 0)")
        _km().relay_in.demand(peer, sid, idx)
        return jsonify({"ok": True})
    return _handle(run)
