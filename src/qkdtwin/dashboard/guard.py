"""Who may use the dashboard's controls: the operator who started it, from its own page.

The dashboard runs as root and its controls run ``ip link`` and switch eavesdroppers, so a
web page the operator happens to visit must not be able to drive them (cross-site request),
nor read the lab's state by pointing its own name at 127.0.0.1 (DNS rebinding):

- **Host**: every request must name the dashboard by a loopback name or one it was started
  with (``--allow-host``); a rebound name is refused.
- **Origin**: a control request (POST) that comes from a page must come from the
  dashboard's own origin (``Origin``, and ``Sec-Fetch-Site`` where the browser sends it).
- **Token**: a control request must carry the per-run token (``X-Qkdtwin-Token``) printed
  in the URL when the dashboard started; the page takes it from that URL. A custom header
  also means no cross-site page can send one without a CORS preflight, which is never
  granted. Reading the state needs no token: anyone who reaches the page may watch.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable

from flask import Flask, Response, jsonify, request

TOKEN_HEADER = "X-Qkdtwin-Token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def new_token() -> str:
    return secrets.token_urlsafe(24)


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8050" -> "::1")."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def install(app: Flask, token: str, allowed_hosts: Iterable[str] = ()) -> None:
    """Check every request of ``app`` as the module docstring says."""
    names = LOOPBACK_NAMES | {h.strip().lower().strip("[]") for h in allowed_hosts if h}
    app.config["QKDTWIN_TOKEN"] = token

    def refuse(message: str) -> Response:
        r = jsonify({"error": message})
        r.status_code = 403
        return r

    @app.before_request
    def check() -> Response | None:
        name = host_name(request.host or "")
        if name not in names:
            return refuse(f"Host {request.host!r} is not a name of this dashboard (a "
                          "rebound DNS name?); start it with --allow-host NAME to serve it "
                          "under that name")
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return refuse(f"cross-site request from {origin} refused")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return refuse(f"cross-site request ({site}) refused")
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return refuse("this action needs the dashboard's token: open the URL the "
                          "dashboard printed when it started (…/?token=…)")
        return None
