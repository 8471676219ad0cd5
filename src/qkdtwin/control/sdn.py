"""SDN Controller: ETSI GS QKD 015 subset over RESTCONF-style JSON with mutual TLS.

Base ``/restconf/data/etsi-qkd-sdn-node:qkd_node``:

* ``GET  <base>``                                   every node with its links
* ``GET  <base>/<qkdn_id>``                         one node
* ``PUT  <base>/<qkdn_id>``                         a KM agent registers its node + PHYS links
* ``DELETE <base>/<qkdn_id>``                       node leaves (its links go down)
* ``PUT  <base>/<qkdn_id>/qkd_links/qkd_link/<id>`` one link (admission: VIRT links)
* ``DELETE <base>/<qkdn_id>/qkd_links/qkd_link/<id>``
* ``GET /healthz``, ``GET /metrics``

Writes (control/sdn_policy.py): a node certificate of the inventory (OU ``node``) writes its
own node and the PHYS links it ends; the ``writers`` (default: the admission node, and
``host`` with OU ``operator``) add VIRT links, the operator anything; applications nothing.
Every refusal is a 403 with the reason. Every change is published retained on
``qkd/v1/topology``; the topology is also republished after each reconnection to the broker
(a restarted broker without persistence has lost its retained messages).

Config: ``listen`` {host, port: 8445}, ``tls`` {ca, cert, key}, ``writers``, ``db``,
``nodes`` (inventory ``qkdtwin_nodes``: mgmt addresses), ``seed_links`` (inventory
``qkdtwin_qkd_links``: PHYS links known before any KM registers, status ``seed_status``).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.control.common import Element, require
from qkdtwin.control.sdn_policy import Caller, Forbidden, WritePolicy
from qkdtwin.errors import UserError
from qkdtwin.etsi015 import SDN_BASE as BASE
from qkdtwin.httpserver import GatedServer, make_tls_server
from qkdtwin.key_manager.identity import from_environ
from qkdtwin.service import run_service
from qkdtwin.sqlite import open_db

LINK_TYPES = ("PHYS", "VIRT")


class BadRequest(ValueError):
    pass


def _link_ends(link: dict[str, Any]) -> tuple[str, str]:
    """(a, b) in the link id's order when the id is ``<a>-<b>``, else local/remote."""
    local = (link.get("qkdl_local") or {}).get("qkdn_id")
    remote = (link.get("qkdl_remote") or {}).get("qkdn_id")
    lid = link["qkdl_id"]
    if isinstance(lid, str) and lid.count("-") == 1:
        x, y = lid.split("-")
        if {x, y} == {local, remote}:
            return x, y
    return local, remote


def validate_link(link: Any, owner: str) -> dict[str, Any]:
    if not isinstance(link, dict):
        raise BadRequest("qkd_link must be an object")
    lid = link.get("qkdl_id")
    if not isinstance(lid, str) or not lid or len(lid) > 128 or "/" in lid:
        raise BadRequest("qkdl_id must be a non-empty string without '/'")
    ltype = link.get("qkdl_type", "PHYS")
    if ltype not in LINK_TYPES:
        raise BadRequest(f"link {lid}: qkdl_type must be PHYS or VIRT")
    local = link.get("qkdl_local") or {"qkdn_id": owner}
    remote = link.get("qkdl_remote")
    if not isinstance(local, dict) or not isinstance(remote, dict) \
            or not isinstance(remote.get("qkdn_id"), str):
        raise BadRequest(f"link {lid}: qkdl_local/qkdl_remote must be objects with qkdn_id")
    out = {"qkdl_id": lid, "qkdl_type": ltype,
           "qkdl_status": str(link.get("qkdl_status", "up")),
           "qkdl_local": {**local, "qkdn_id": local.get("qkdn_id", owner)},
           "qkdl_remote": remote}
    for k in ("virt_prev_hop", "virt_next_hop", "virt_bandwidth", "virt_hops",
              "qkdl_performance", "session_id"):
        if k in link:
            out[k] = link[k]
    if ltype == "VIRT":
        hops = out.get("virt_hops")
        if hops is not None and (not isinstance(hops, list)
                                 or not all(isinstance(h, str) for h in hops)):
            raise BadRequest(f"link {lid}: virt_hops must be a list of node ids")
    return out


class Registry:
    """Nodes and links, in memory and in SQLite; every change bumps ``version``."""

    def __init__(self, path: str | Path) -> None:
        self.lock = threading.RLock()
        self._db = open_db(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS obj (kind TEXT, id TEXT, body TEXT,"
                         " PRIMARY KEY (kind, id))")
        self.nodes: dict[str, dict[str, Any]] = {}
        self.links: dict[str, dict[str, Any]] = {}
        for kind, oid, body in self._db.execute("SELECT kind, id, body FROM obj"):
            (self.nodes if kind == "node" else self.links)[oid] = json.loads(body)
        self.version = 0

    def _save(self, kind: str, oid: str, body: dict[str, Any] | None) -> None:
        if body is None:
            self._db.execute("DELETE FROM obj WHERE kind=? AND id=?", (kind, oid))
        else:
            self._db.execute("INSERT OR REPLACE INTO obj VALUES (?,?,?)",
                             (kind, oid, json.dumps(body)))

    def put_node(self, qkdn_id: str, node: dict[str, Any], mgmt_ipv4: str | None) -> None:
        links_in = ((node.get("qkd_links") or {}).get("qkd_link") or [])
        if not isinstance(links_in, list):
            raise BadRequest("qkd_links.qkd_link must be a list")
        links = [validate_link(lk, qkdn_id) for lk in links_in]
        with self.lock:
            old = self.nodes.get(qkdn_id, {})
            rec = {"qkdn_id": qkdn_id, "qkdn_status": str(node.get("qkdn_status", "up")),
                   "mgmt_ipv4": node.get("mgmt_ipv4") or old.get("mgmt_ipv4") or mgmt_ipv4,
                   "registered": True}
            if "qkdn_capabilities" in node:
                rec["qkdn_capabilities"] = node["qkdn_capabilities"]
            self.nodes[qkdn_id] = rec
            self._save("node", qkdn_id, rec)
            for lk in links:
                self._put_link(qkdn_id, lk)
            self.version += 1

    def _put_link(self, owner: str, lk: dict[str, Any]) -> None:
        lk = {**lk, "owner": owner}
        self.links[lk["qkdl_id"]] = lk
        self._save("link", lk["qkdl_id"], lk)

    def put_link(self, owner: str, lk: dict[str, Any]) -> None:
        with self.lock:
            self._put_link(owner, validate_link(lk, owner))
            self.version += 1

    def delete_link(self, lid: str) -> bool:
        with self.lock:
            if self.links.pop(lid, None) is None:
                return False
            self._save("link", lid, None)
            self.version += 1
            return True

    def delete_node(self, qkdn_id: str) -> bool:
        with self.lock:
            node = self.nodes.get(qkdn_id)
            if node is None:
                return False
            node = {**node, "qkdn_status": "down"}
            self.nodes[qkdn_id] = node
            self._save("node", qkdn_id, node)
            for lk in list(self.links.values()):
                if qkdn_id in _link_ends(lk) and lk["qkdl_type"] == "PHYS":
                    self._put_link(lk["owner"], {**lk, "qkdl_status": "down"})
            self.version += 1
            return True

    def node_view(self, qkdn_id: str) -> dict[str, Any] | None:
        node = self.nodes.get(qkdn_id)
        if node is None:
            return None
        links = [lk for lk in self.links.values() if qkdn_id in _link_ends(lk)]
        return {**node, "qkd_links": {"qkd_link": links}}

    def topology(self) -> dict[str, Any]:
        with self.lock:
            nodes = [{"id": n, "mgmt_ipv4": v.get("mgmt_ipv4"), "status": v["qkdn_status"]}
                     for n, v in sorted(self.nodes.items())]
            links = []
            for lid, lk in sorted(self.links.items()):
                a, b = _link_ends(lk)
                entry = {"id": lid, "a": a, "b": b, "type": lk["qkdl_type"],
                         "status": lk["qkdl_status"], "hops": lk.get("virt_hops")}
                if lk.get("session_id"):
                    entry["session_id"] = lk["session_id"]
                links.append(entry)
            return m.Topology(version=self.version, nodes=nodes, links=links).to_payload()


def _err(code: int, message: str) -> Response:
    r = jsonify({"message": message})
    r.status_code = code
    return r


def _caller() -> str | None:
    """The client certificate's CN of the current request (mutual TLS)."""
    ident = from_environ(request.environ)
    return ident.cn if ident else None


def _body(key: str) -> dict[str, Any]:
    """The request body's ``key`` object (with or without the module prefix)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    inner = data.get(key, data.get(f"etsi-qkd-sdn-node:{key}"))
    if not isinstance(inner, dict):
        raise BadRequest(f"body must hold a {key!r} object")
    return inner


class SdnController(Element):
    role = "sdn"
    default_port = None  # /healthz and /metrics live on the REST app

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        tls = require(config, "tls", dict)
        for k in ("ca", "cert", "key"):
            if not tls.get(k) or not Path(tls[k]).is_file():
                raise UserError(f"config: tls.{k} file {tls.get(k)} not found")
        self.tls = tls
        listen = config.get("listen") or {}
        self.listen = (str(listen.get("host", "0.0.0.0")), int(listen.get("port", 8445)))
        self.writers = set(config.get("writers") or ["admission", "host"])
        self.reg = Registry(config.get("db") or self.data_dir / "sdn.db")
        self.m_http = Counter("qkdtwin_sdn_requests", "REST requests", ["method", "code"],
                              registry=self.registry)
        self._seed(config.get("nodes") or {}, config.get("seed_links") or [],
                   str(config.get("seed_status", "up")))
        seeded = {n for lk in config.get("seed_links") or [] for n in (lk["a"], lk["b"])}
        self.policy = WritePolicy(set(self._mgmt) | seeded, self.writers)
        self.app = self._make_app()
        self.server: GatedServer | None = None

    def _seed(self, nodes: dict[str, Any], links: list[Any], status: str) -> None:
        """Nodes and PHYS links from the inventory, kept until a KM registers its own."""
        self._mgmt = {n: (v or {}).get("mgmt_ipv4") for n, v in nodes.items()}
        for lk in links:
            if not isinstance(lk, dict) or not {"id", "a", "b"} <= lk.keys():
                raise UserError("config: seed_links entries need id, a, b")
            for n in (lk["a"], lk["b"]):
                if n not in self.reg.nodes:
                    self.reg.nodes[n] = {"qkdn_id": n, "qkdn_status": "up",
                                         "mgmt_ipv4": self._mgmt.get(n), "registered": False}
            if lk["id"] not in self.reg.links:
                self.reg.links[lk["id"]] = {
                    "qkdl_id": lk["id"], "qkdl_type": "PHYS", "qkdl_status": status,
                    "qkdl_local": {"qkdn_id": lk["a"], "qkdi_id": lk.get("a_interface")},
                    "qkdl_remote": {"qkdn_id": lk["b"], "qkdi_id": lk.get("b_interface")},
                    "owner": "seed"}

    # -- topology publishing --

    def setup(self) -> None:
        self.bus.on_connected(self.publish_topology)

    def publish_topology(self) -> None:
        topo = self.reg.topology()
        self.bus.publish(bus.TOPOLOGY, topo, retain=True)

    def changed(self, what: str, **fields: Any) -> None:
        self.publish_topology()
        self.event(what, version=self.reg.version, **fields)

    # -- REST --

    def _make_app(self) -> Flask:
        app = Flask("qkdtwin.sdn")
        app.config["MAX_CONTENT_LENGTH"] = 1 << 20
        self._add_errors_and_health(app)
        self._add_node_routes(app)
        self._add_link_routes(app)
        return app

    def _who(self) -> Caller:
        """The caller's write role (Forbidden: it may write nothing)."""
        ident = from_environ(request.environ)
        return self.policy.caller(ident.cn if ident else None, ident.ou if ident else None)

    def _add_errors_and_health(self, app: Flask) -> None:
        @app.after_request
        def count(resp: Response) -> Response:
            self.m_http.labels(request.method, str(resp.status_code)).inc()
            return resp

        @app.errorhandler(BadRequest)
        def bad(exc: BadRequest) -> Response:
            return _err(400, str(exc))

        @app.errorhandler(Forbidden)
        def forbidden(exc: Forbidden) -> Response:
            self.event("write_refused", caller=_caller(), method=request.method,
                       path=request.path, reason=str(exc))
            return _err(403, str(exc))

        @app.errorhandler(404)
        def not_found(exc: Exception) -> Response:
            return _err(404, "not found")

        @app.errorhandler(405)
        def not_allowed(exc: Exception) -> Response:
            return _err(405, "method not allowed")

        @app.errorhandler(413)
        def too_large(exc: Exception) -> Response:
            return _err(413, "body too large")

        @app.errorhandler(Exception)
        def internal(exc: Exception) -> Response:
            app.logger.exception("request failed")
            return _err(500, "internal error")

        @app.get("/healthz")
        def healthz() -> Response:
            h = self.healthz()
            r = jsonify({**h, "nodes": len(self.reg.nodes), "links": len(self.reg.links)})
            r.status_code = 200 if h["ok"] else 503
            return r

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    def _add_node_routes(self, app: Flask) -> None:
        reg = self.reg

        @app.get(BASE)
        def all_nodes() -> Response:
            with reg.lock:
                return jsonify({"qkd_node": [reg.node_view(n) for n in sorted(reg.nodes)]})

        @app.get(f"{BASE}/<qkdn_id>")
        def one_node(qkdn_id: str) -> Response:
            with reg.lock:
                view = reg.node_view(qkdn_id)
            return jsonify({"qkd_node": view}) if view else _err(404, f"no node {qkdn_id}")

        @app.put(f"{BASE}/<qkdn_id>")
        def put_node(qkdn_id: str) -> Response:
            who = self._who()
            self.policy.node(who, qkdn_id, "register")
            node = _body("qkd_node")
            if node.get("qkdn_id", qkdn_id) != qkdn_id:
                raise BadRequest("qkdn_id in the body differs from the URL")
            links = (node.get("qkd_links") or {}).get("qkd_link") or []
            if not isinstance(links, list):
                raise BadRequest("qkd_links.qkd_link must be a list")
            for lk in links:
                lk = validate_link(lk, qkdn_id)
                self.policy.link(who, qkdn_id, lk, reg.links.get(lk["qkdl_id"]))
            reg.put_node(qkdn_id, node, self._mgmt.get(qkdn_id))
            self.changed("node_registered", node=qkdn_id,
                         links=[lk.get("qkdl_id") for lk in
                                (node.get("qkd_links") or {}).get("qkd_link") or []])
            return jsonify({"qkd_node": reg.node_view(qkdn_id)})

        @app.delete(f"{BASE}/<qkdn_id>")
        def delete_node(qkdn_id: str) -> Response:
            self.policy.node(self._who(), qkdn_id, "remove")
            if not reg.delete_node(qkdn_id):
                return _err(404, f"no node {qkdn_id}")
            self.changed("node_down", node=qkdn_id)
            return Response(status=204)

    def _add_link_routes(self, app: Flask) -> None:
        reg = self.reg

        @app.put(f"{BASE}/<qkdn_id>/qkd_links/qkd_link/<qkdl_id>")
        def put_link(qkdn_id: str, qkdl_id: str) -> Response:
            who = self._who()
            link = _body("qkd_link")
            if link.setdefault("qkdl_id", qkdl_id) != qkdl_id:
                raise BadRequest("qkdl_id in the body differs from the URL")
            self.policy.link(who, qkdn_id, validate_link(link, qkdn_id), reg.links.get(qkdl_id))
            reg.put_link(qkdn_id, link)
            self.changed("link_registered", link=qkdl_id, link_type=link.get("qkdl_type",
                                                                             "PHYS"),
                         hops=link.get("virt_hops"), session_id=link.get("session_id"))
            return jsonify({"qkd_link": reg.links[qkdl_id]})

        @app.delete(f"{BASE}/<qkdn_id>/qkd_links/qkd_link/<qkdl_id>")
        def delete_link(qkdn_id: str, qkdl_id: str) -> Response:
            who = self._who()
            old = reg.links.get(qkdl_id)
            if old is None:
                return _err(404, f"no link {qkdl_id}")
            self.policy.link(who, qkdn_id, None, old)
            if not reg.delete_link(qkdl_id):
                return _err(404, f"no link {qkdl_id}")
            self.changed("link_deleted", link=qkdl_id)
            return Response(status=204)

    def start(self, wait: float = 10.0) -> SdnController:
        super().start(wait)
        # mutual TLS, lab CA clients only; the gated intake of qkdtwin.httpserver, so that
        # idle or slow clients hold no thread (finding H1)
        server = make_tls_server(self.listen, self.app, cert=self.tls["cert"],
                                 key=self.tls["key"], ca=self.tls["ca"], threads=8,
                                 name="qkdtwin-sdn", require_cert=True)
        try:
            server.prepare()
        except OSError as exc:
            raise UserError(f"cannot listen on {self.listen}: {exc}") from None
        self.server = server
        threading.Thread(target=server.serve, daemon=True, name="sdn-rest").start()
        self.publish_topology()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.bind_addr[1]

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        super().stop()


def main(config: dict[str, Any]) -> None:
    SdnController(config).serve_forever()


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin SDN controller (ETSI GS QKD 015 subset)"))
