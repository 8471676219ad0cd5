"""Flask application factory of the Key Manager: ETSI 014, ETSI 004, KM-to-KM and the
operational routes (/healthz, /metrics) and the OpenAPI documents (/api/v1/openapi/…) on
one HTTPS server.

Operational routes (finding L5): ``/healthz`` answers everyone (liveness probes carry no
certificate) but tells only ``{"ok": ...}`` unless the caller presents a node or operator
certificate (OU ``node`` / ``operator``): link pools, sessions and alarms are for the lab's
own elements. ``/metrics`` needs such a certificate (403 otherwise).

Every non-2xx answer is JSON with a ``message`` (ETSI 014 error shape, ETSI 004 adds
``status``); no request ever gets a traceback.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from qkdtwin.key_manager import identity
from qkdtwin.key_manager.etsi004 import bp as etsi004
from qkdtwin.key_manager.etsi014 import bp as etsi014
from qkdtwin.key_manager.http import error
from qkdtwin.key_manager.kmapi import bp as kmapi
from qkdtwin.key_manager.manager import KeyManager
from qkdtwin.key_manager.openapi import bp as openapi

log = logging.getLogger("qkdtwin.key_manager.http")
KMAPI_MAX_BODY = 16 << 20
OPERATIONAL_OUS = ("node", "operator")  # who may read health details and metrics


def _lab_element() -> bool:
    ident = g.get("identity")
    return ident is not None and ident.ou in OPERATIONAL_OUS


def create_app(km: KeyManager) -> Flask:
    app = Flask("qkdtwin.key_manager")
    app.config["MAX_CONTENT_LENGTH"] = km.cfg.limits.max_body_bytes
    app.config["KM"] = km
    app.json.sort_keys = False
    app.register_blueprint(etsi014)
    app.register_blueprint(etsi004)
    app.register_blueprint(kmapi)
    app.register_blueprint(openapi)
    metrics = km.metrics

    @app.before_request
    def _who() -> None:
        g.t0 = time.perf_counter()
        g.identity = identity.from_environ(request.environ)
        if request.path.startswith("/kmapi/"):  # peer KMs send batches of keys
            request.max_content_length = KMAPI_MAX_BODY

    @app.after_request
    def _count(resp: Response) -> Response:
        km.store.durable()  # what this answer tells of (keys handed out, stored) is on disk
        ep = request.endpoint or "unknown"
        metrics.requests.labels(endpoint=ep, code=str(resp.status_code)).inc()
        metrics.latency.labels(endpoint=ep).observe(time.perf_counter() - g.get("t0", 0.0))
        return resp

    @app.get("/healthz")
    def healthz() -> Response:
        state = km.health()
        resp = jsonify(state if _lab_element() else {"ok": state["ok"]})
        resp.status_code = 200 if state["ok"] else 503
        return resp

    @app.get("/metrics")
    def prom() -> Response:
        if not _lab_element():
            return error(403, "/metrics needs a node or operator client certificate")
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        # read (and drop) a moderately large body so that the client gets to read this answer
        # instead of a connection reset; beyond 8 MiB the connection is simply closed
        length = request.content_length or 0
        if length <= 8 << 20:
            stream = request.environ.get("wsgi.input")
            left = length
            while stream is not None and left > 0:
                chunk = stream.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        return error(413, f"request body larger than {km.cfg.limits.max_body_bytes} bytes")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        resp = error(exc.code or 400, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on 405 (RFC 9110)
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error of the key manager; see its log")

    return app
