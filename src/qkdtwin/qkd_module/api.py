"""The module's HTTP server on loopback: ETSI GS QKD 014 towards its KM (the KM is the SAE),
`/healthz`, Prometheus `/metrics`, and `/control/eve` (operator switch of the eavesdropper).

SAE IDs: the KM of this node is the calling SAE; the path names the other SAE, which is the
peer node's KM (enc_keys at the a end names the slave = peer, dec_keys at the b end names
the master = peer). The a end offers enc_keys, the b end dec_keys; both offer status.

Access: every ETSI 014 and `/control/` request carries `Authorization: Bearer <token>`, the
token in the module's token file (`api_token_file`, default `<data_dir>/qkd-<link>.api-token`,
created 0600 by the module at its first start; the KM's `module_token_file` names it). So a
process on the node that cannot read that file can neither take keys nor switch Eve (the
loopback port alone is no protection: every process of the node's namespace reaches it).
`/healthz` and `/metrics` stay open on loopback: counters and link state, no key material.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qkdtwin.qkd_module.engine import Alice, Bob, Engine

log = logging.getLogger("qkdtwin.qkd_module.api")
MAX_BODY = 1 << 20


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _int(v: Any, name: str) -> int:
    if isinstance(v, list):  # query strings
        v = v[0] if len(v) == 1 else v
    try:
        if isinstance(v, bool) or isinstance(v, float | list | dict):
            raise ValueError
        return int(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer, got {v!r}") from None


def load_token(path: Path) -> str:
    """The API token in `path`, created (0600, random 256 bits) when the file is missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) < 16:
            raise OSError(f"API token file {path} holds no token") from None
        return token
    with os.fdopen(fd, "w") as f:
        token = secrets.token_urlsafe(32)
        f.write(token + "\n")
    return token


OPEN_PATHS = ("/healthz", "/metrics")


class ModuleApi:
    def __init__(self, engine: Engine, health: Callable[[], dict[str, Any]]) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.health = health
        self._server: ThreadingHTTPServer | None = None
        self._token = b""

    def authorize(self, path: str, header: str | None) -> None:
        """401 unless the request carries the token (the open paths excepted)."""
        if urlsplit(path).path in OPEN_PATHS:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token):
            raise ApiError(401, "this request needs the module's API token (Authorization: "
                                "Bearer, from the module's api_token_file)")

    # -- ETSI 014 ------------------------------------------------------------------------

    def _check_sae(self, sae: str) -> None:
        if sae != self.cfg.peer:
            raise ApiError(400, f"unknown SAE ID {sae!r}: this module serves link "
                                f"{self.cfg.link} towards SAE {self.cfg.peer!r}")

    def status(self, sae: str) -> dict[str, Any]:
        self._check_sae(sae)
        c = self.cfg
        master, slave = (c.node, c.peer) if c.is_alice else (c.peer, c.node)
        return {"source_KME_ID": c.node, "target_KME_ID": c.peer, "master_SAE_ID": master,
                "slave_SAE_ID": slave, "key_size": c.key_size,
                "stored_key_count": self.engine.store.key_count(c.key_size // 8),
                "max_key_count": c.max_stored_bits // c.key_size,
                "max_key_per_request": c.max_key_per_request, "max_key_size": c.max_key_size,
                "min_key_size": c.min_key_size, "max_SAE_ID_count": 0,
                "status_extension": {"link": c.link, "side": c.side,
                                     "link_status": self.engine.status}}

    def enc_keys(self, sae: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_sae(sae)
        c = self.cfg
        if not isinstance(self.engine, Alice):
            raise ApiError(400, f"enc_keys is offered by the a end of link {c.link} (module "
                                f"at {c.peer}); this end answers dec_keys")
        if body.get("extension_mandatory"):
            raise ApiError(400, "not all extension_mandatory parameters are supported")
        if body.get("additional_slave_SAE_IDs"):
            raise ApiError(400, "additional_slave_SAE_IDs are not supported (max_SAE_ID_count 0)")
        number = _int(body.get("number", 1), "number")
        size = _int(body.get("size", c.key_size), "size")
        if not 1 <= number <= c.max_key_per_request:
            raise ApiError(400, f"number must be in [1, {c.max_key_per_request}]")
        if size % 8:
            raise ApiError(400, "size shall be a multiple of 8")
        if not c.min_key_size <= size <= c.max_key_size:
            raise ApiError(400, f"size must be in [{c.min_key_size}, {c.max_key_size}] bits")
        got = self.engine.enc_keys(number, size)
        if isinstance(got, str):
            raise ApiError(503, got)
        self.engine.stats.m_keys.inc(len(got))
        return {"keys": [{"key_ID": k, "key": base64.b64encode(v).decode()} for k, v in got]}

    def dec_keys(self, sae: str, ids: list[str]) -> dict[str, Any]:
        self._check_sae(sae)
        c = self.cfg
        if not isinstance(self.engine, Bob):
            raise ApiError(400, f"dec_keys is offered by the b end of link {c.link} (module "
                                f"at {c.peer}); this end answers enc_keys")
        if not ids:
            raise ApiError(400, "key_IDs must name at least one key")
        if len(ids) > c.max_key_per_request:
            raise ApiError(400, f"at most {c.max_key_per_request} key_IDs per request")
        got = self.engine.dec_keys(ids)
        if got is None:
            raise ApiError(400, "one or more keys specified are not found on KME")
        self.engine.stats.m_keys.inc(len(got))
        return {"keys": [{"key_ID": k, "key": base64.b64encode(got[k]).decode()} for k in ids]}

    # -- control -------------------------------------------------------------------------

    def eve(self, body: dict[str, Any] | None) -> dict[str, Any]:
        if body is not None:
            if not isinstance(self.engine, Alice):
                raise ApiError(400, f"the eavesdropper acts on the channel at the a end of "
                                    f"{self.cfg.link} (node {self.cfg.peer})")
            f = body.get("fraction")
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
                raise ApiError(400, f"fraction must be a number in [0, 1], got {f!r}")
            self.engine.set_eve_fraction(float(f))
        return {"link": self.cfg.link, "eve_fraction": self.engine.eve_fraction}

    # -- routing -------------------------------------------------------------------------

    def route(self, method: str, raw_path: str, body: dict[str, Any] | None
              ) -> tuple[int, bytes, str]:
        url = urlsplit(raw_path)
        path = url.path
        query = parse_qs(url.query)
        if method == "GET" and path == "/healthz":
            h = self.health()
            return (200 if h.get("ok") else 503), json.dumps(h).encode(), "application/json"
        if method == "GET" and path == "/metrics":
            return 200, generate_latest(self.engine.stats.registry), CONTENT_TYPE_LATEST
        if path == "/control/eve":
            out = self.eve(body if method == "POST" else None)
            return 200, json.dumps(out).encode(), "application/json"
        parts = path.strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "keys"]:
            sae, op = unquote(parts[3]), parts[4]
            if op == "status" and method == "GET":
                out = self.status(sae)
            elif op == "enc_keys":
                req = body if method == "POST" else {k: v for k, v in query.items()
                                                     if k in ("number", "size")}
                out = self.enc_keys(sae, req or {})
            elif op == "dec_keys":
                if method == "POST":
                    raw = (body or {}).get("key_IDs")
                    if not isinstance(raw, list) or not all(
                            isinstance(k, dict) and isinstance(k.get("key_ID"), str)
                            for k in raw):
                        raise ApiError(400, "key_IDs must be a list of {\"key_ID\": ...}")
                    ids = [k["key_ID"] for k in raw]
                else:
                    ids = query.get("key_ID", [])
                    if len(ids) != 1:
                        raise ApiError(400, "GET dec_keys takes exactly one key_ID")
                out = self.dec_keys(sae, ids)
            else:
                raise ApiError(404, f"no {method} {op} in ETSI GS QKD 014")
            return 200, json.dumps(out).encode(), "application/json"
        raise ApiError(404, f"not found: {path}")

    # -- server --------------------------------------------------------------------------

    def start(self) -> ModuleApi:
        outer = self
        self.cfg.token_path.parent.mkdir(parents=True, exist_ok=True)
        self._token = load_token(self.cfg.token_path).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _do(self, method: str) -> None:
                try:
                    body = None
                    outer.authorize(self.path, self.headers.get("Authorization"))
                    if method == "POST":
                        n = int(self.headers.get("Content-Length") or 0)
                        if n > MAX_BODY:
                            raise ApiError(413, "request body too large")
                        raw = self.rfile.read(n) if n else b""
                        try:
                            body = json.loads(raw) if raw.strip() else {}
                        except ValueError:
                            raise ApiError(400, "body is not valid JSON") from None
                        if not isinstance(body, dict):
                            raise ApiError(400, "body must be a JSON object")
                    code, data, ctype = outer.route(method, self.path, body)
                except ApiError as exc:
                    code, ctype = exc.code, "application/json"
                    self.close_connection = exc.code == 401  # its body was not read
                    data = json.dumps({"message": str(exc)}).encode()
                except Exception:
                    log.exception("request %s %s failed", method, self.path)
                    code, ctype = 500, "application/json"
                    data = b'{"message": "internal error"}'
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._do("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._do("POST")

            def log_message(self, *a: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.cfg.host, self.cfg.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="api").start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
