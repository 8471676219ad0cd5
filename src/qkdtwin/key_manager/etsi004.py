"""ETSI GS QKD 004 V2.1.1 primitives over HTTPS/JSON: open_connect, get_key, close.

Every body carries the integer ``status`` (0–8 as in V2.1.1) and a ``message``. Non-ETSI
codes, documented in docs/api.md: 9 = refused by the session's token bucket, 10 = request
refused (bad input, not authorised, unknown stream or index already delivered; the HTTP
status is then 4xx).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.http import BadInput, caller, error, int_value, json_body
from qkdtwin.key_manager.manager import KeyManager

bp = Blueprint("etsi004", __name__, url_prefix="/api/v1/qkd004")

QOS_INT_FIELDS = ("key_chunk_size", "max_bps", "min_bps", "jitter", "priority", "timeout", "ttl")
# Upper bounds of the QoS integers (finding L4: a huge timeout raised OverflowError): a day in
# ms for timeout and jitter, a year in s for ttl, 10 Gbit/s for the rates; the chunk size
# and the priority have their own checks below.
QOS_MAX = {"max_bps": 10**10, "min_bps": 10**10, "jitter": 86_400_000,
           "timeout": 86_400_000, "ttl": 31_536_000, "priority": 9, "key_chunk_size": 2**20}
MAX_INDEX = 2**40


def _km() -> KeyManager:
    return current_app.config["KM"]


def _handle(fn) -> Response:
    try:
        return fn()
    except BadInput as exc:
        return error(400, exc.message, exc.details, status=10)
    except KmError as exc:
        if exc.http < 500 or exc.status004 == 10:
            return error(exc.http, exc.message, exc.details,
                         status=exc.status004 if exc.status004 is not None else 10)
        return jsonify({"status": exc.status004 if exc.status004 is not None else 4,
                        "message": exc.message, **exc.extra})


def _str(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > 128 or not v.isprintable():
        raise BadInput(f"{key} must be a non-empty string of at most 128 printable characters")
    return v


def _stream_id(body: dict[str, Any], required: bool) -> str | None:
    v = _str(body, "key_stream_id", required)
    if v is None:
        return None
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise BadInput("key_stream_id must be a UUID") from None


def _qos(raw: Any, km: KeyManager) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput("qos must be an object")
    out: dict[str, Any] = {}
    for k in QOS_INT_FIELDS:
        if k in raw and raw[k] is not None:
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"qos.{k} must be a non-negative integer")
            out[k] = int_value(v, f"qos.{k}", 0, QOS_MAX[k])
    if "metadata_mimetype" in raw:
        mime = raw["metadata_mimetype"]
        if not isinstance(mime, str) or len(mime) > 255 or not mime.isprintable():
            raise BadInput("qos.metadata_mimetype must be a string of at most 255 printable"
                           " characters")
        out["metadata_mimetype"] = raw["metadata_mimetype"]
    lim = km.cfg.limits
    chunk = out.get("key_chunk_size", km.cfg.key_size // 8)
    if not lim.min_key_size // 8 <= chunk <= lim.max_key_size // 8:
        raise BadInput(f"qos.key_chunk_size must be between {lim.min_key_size // 8} and"
                       f" {lim.max_key_size // 8} bytes")
    if out.get("priority", 0) > 9:
        raise BadInput("qos.priority must be 0-9")
    return out


@bp.post("/open_connect")
def open_connect() -> Response:
    def run() -> Response:
        km = _km()
        ident = caller()
        body = json_body(allow_empty=False)
        source = _str(body, "source")
        destination = _str(body, "destination")
        if source == destination:
            raise BadInput("source and destination must differ")
        qos = _qos(body.get("qos"), km)
        sid = _stream_id(body, required=False)
        res = km.etsi004.open_connect(ident, source, destination, qos, sid)
        out_qos = dict(res.session.qos.get("counter_qos") or qos) if res.status == 7 else {
            **qos, "key_chunk_size": res.session.key_size // 8}
        return jsonify({"status": res.status, "key_stream_id": res.session.session_id,
                        "qos": out_qos, "message": res.message})
    return _handle(run)


@bp.post("/get_key")
def get_key() -> Response:
    def run() -> Response:
        km = _km()
        ident = caller()
        body = json_body(allow_empty=False)
        sid = _stream_id(body, required=True)
        index = body.get("index")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise BadInput("index must be a non-negative integer")
            index = int_value(index, "index", 0, MAX_INDEX)
        meta = body.get("metadata")
        meta_size = None
        if meta is not None:
            if not isinstance(meta, dict):
                raise BadInput("metadata must be an object")
            if "size" in meta:
                if isinstance(meta["size"], bool) or not isinstance(meta["size"], int):
                    raise BadInput("metadata.size must be an integer")
                meta_size = int_value(meta["size"], "metadata.size", 0, 2**31 - 1)
        out = km.etsi004.get_key(ident, sid, index, meta_size)
        out["key_stream_id"] = sid
        return jsonify(out)
    return _handle(run)


@bp.post("/close")
def close() -> Response:
    def run() -> Response:
        km = _km()
        ident = caller()
        body = json_body(allow_empty=False)
        sid = _stream_id(body, required=True)
        out = km.etsi004.close(ident, sid)
        out["key_stream_id"] = sid
        return jsonify(out)
    return _handle(run)
