"""The dashboard's Flask application: the page, its JSON API and the demonstration controls.

    GET  /                          the page (static/index.html; all assets served locally)
    GET  /api/state                 nodes, links (state, SKR, QBER, stored key), sessions
    GET  /api/events?after=SEQ      events newer than SEQ (the page polls it)
    POST /api/links/<id>/eve        {"fraction": 0.5}  (0 switches the eavesdropper off)
    POST /api/links/<id>/cut        set the link's interfaces down at both ends
    POST /api/links/<id>/restore    set them up again
    GET  /healthz

Every request is checked by :mod:`qkdtwin.dashboard.guard` (Host; Origin and the per-run
token on the controls).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from qkdtwin.dashboard import guard
from qkdtwin.dashboard.state import LiveState
from qkdtwin.errors import UserError

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("qkdtwin.dashboard")


def create_app(state: LiveState, actions: Any = None, bus: Any = None, *,
               token: str | None = None, allowed_hosts: Iterable[str] = ()) -> Flask:
    """``actions``: a :class:`qkdtwin.labops.operations.LabOperator` (None: controls off);
    ``bus``: the dashboard's :class:`qkdtwin.bus.Bus`, to publish its operator actions;
    ``token``: the controls' per-run token (a new random one by default, in
    ``app.config["QKDTWIN_TOKEN"]``); ``allowed_hosts``: names beside loopback's."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["JSON_SORT_KEYS"] = False
    guard.install(app, token or guard.new_token(), allowed_hosts)
    _error_handlers(app)
    _read_routes(app, state, controls=actions is not None)
    _control_routes(app, state, actions, bus)
    return app


def _fail(code: int, message: str) -> Response:
    r = jsonify({"error": message})
    r.status_code = code
    return r


def _error_handlers(app: Flask) -> None:
    """Every error is JSON ``{"error": ...}``; an unexpected one is logged."""
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _fail(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Response:
        log.exception("dashboard request failed")
        return _fail(500, f"internal error: {type(exc).__name__}")


def _read_routes(app: Flask, state: LiveState, *, controls: bool) -> None:
    """The page, /healthz and the state and events the page polls."""
    @app.get("/")
    def index() -> Response:
        r = send_from_directory(STATIC, "index.html")
        r.headers["Cache-Control"] = "no-store"
        return r

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True, "broker": state.connected, "messages": state.messages})

    @app.get("/api/state")
    def api_state() -> Response:
        snap = state.snapshot()
        snap["controls"] = controls
        return jsonify(snap)

    @app.get("/api/events")
    def api_events() -> Response:
        try:
            after = int(request.args.get("after", "0"))
        except ValueError:
            return _fail(400, "after must be an integer")
        return jsonify({"events": state.events_after(after), "seq": state.seq})


def _control_routes(app: Flask, state: LiveState, actions: Any, bus: Any) -> None:
    """The demonstration controls on a link (eavesdropper, cut, restore); each action, and
    its failure, goes into the event stream."""
    def record(kind: str, **fields: Any) -> None:
        if bus is not None and bus.connected:
            bus.event(kind, **fields)  # comes back through the bus into the stream
        else:
            state.note(kind, **fields)

    def _action(link: str, fn, what: str, **fields: Any) -> Response:
        if actions is None:
            return _fail(503, "demonstration controls are off (no deployed lab)")
        if link not in state.links:
            return _fail(404, f"no QKD link {link}")
        try:
            out = fn()
        except UserError as exc:
            record(f"operator_{what}_failed", link=link, error=str(exc), **fields)
            return _fail(502, str(exc))
        record(f"operator_{what}", link=link, **fields)
        return jsonify({"ok": True, "result": out})

    @app.post("/api/links/<link>/eve")
    def api_eve(link: str) -> Response:
        body = request.get_json(silent=True)
        f = body.get("fraction") if isinstance(body, dict) else None
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            return _fail(400, "give {\"fraction\": F} with F in [0, 1]")
        return _action(link, lambda: actions.eve(link, float(f)), "eve", fraction=float(f))

    def set_link(link: str, up: bool) -> Any:
        out = actions.set_link(link, up=up)
        state.set_cut(link, not up)
        return out

    @app.post("/api/links/<link>/cut")
    def api_cut(link: str) -> Response:
        return _action(link, lambda: set_link(link, False), "link_cut")

    @app.post("/api/links/<link>/restore")
    def api_restore(link: str) -> Response:
        return _action(link, lambda: set_link(link, True), "link_restore")
