"""The Key Manager's HTTP layer: the TLS server hands the verified client certificate to the
application, and refusals are JSON (no control plane needed for these)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests

from qkdtwin.key_manager.app import create_app
from qkdtwin.key_manager.config import parse_config
from qkdtwin.key_manager.identity import from_environ, parse_pem
from qkdtwin.key_manager.manager import KeyManager
from qkdtwin.key_manager.server import make_server
from tests.support.broker import free_port

pytestmark = pytest.mark.unit


def _cfg(tmp_path, test_ca, port=0):
    node = test_ca.issue("km9", ou="node")
    return parse_config({"node": "km9", "listen": {"host": "127.0.0.1", "port": port},
                         "tls": {"ca": test_ca.ca, "cert": node.cert, "key": node.key},
                         "data_dir": str(tmp_path / "km9"), "control_timeout_s": 0.5})


def test_cheroot_puts_verified_client_certificate_in_environ(tmp_path, test_ca):
    seen = {}

    def wsgi(environ, start_response):
        seen.update({k: v for k, v in environ.items() if k.startswith("SSL_CLIENT")})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    cfg = _cfg(tmp_path, test_ca, free_port())
    server = make_server(cfg, wsgi)
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        sae = test_ca.issue("sae-x", ou="sae", o="alice")
        url = f"https://127.0.0.1:{cfg.port}/"
        assert requests.get(url, cert=(sae.cert, sae.key), verify=test_ca.ca).text == "ok"
        assert seen["SSL_CLIENT_VERIFY"] == "SUCCESS"
        assert seen["SSL_CLIENT_S_DN_CN"] == "sae-x"
        ident = from_environ(seen)
        assert (ident.cn, ident.o, ident.ou) == ("sae-x", "alice", "sae")
        assert ident.fingerprint == parse_pem(Path(sae.cert).read_text()).fingerprint
        seen.clear()
        requests.get(url, verify=test_ca.ca)  # no certificate: allowed by TLS, no identity
        assert seen.get("SSL_CLIENT_VERIFY") == "NONE" and from_environ(seen) is None
    finally:
        server.stop()


@pytest.fixture
def client(tmp_path, test_ca):
    km = KeyManager(_cfg(tmp_path, test_ca))
    app = create_app(km)
    pem = Path(test_ca.issue("sae-y", ou="sae", o="bob").cert).read_text()
    yield app.test_client(), {"SSL_CLIENT_CERT": pem, "SSL_CLIENT_VERIFY": "SUCCESS"}
    km.store.close()


def test_refusals_are_json(client, test_ca):
    c, env = client
    r = c.post("/api/v1/keys/sae-z/enc_keys", json={})
    assert r.status_code == 401 and "certificate" in r.get_json()["message"]
    # identity is fine but nobody answers on the control plane: 503, not a hang or a 500
    r = c.post("/api/v1/keys/sae-z/enc_keys", json={}, environ_base=env)
    assert r.status_code == 503 and "control plane" in r.get_json()["message"]
    r = c.post("/api/v1/qkd004/open_connect", environ_base=env,
               json={"source": "sae-y", "destination": "sae-z"})
    body = r.get_json()
    assert r.status_code == 200 and body["status"] == 4 and body["message"]
    r = c.post("/api/v1/qkd004/open_connect", environ_base=env,
               json={"source": "sae-q", "destination": "sae-z"})
    assert r.status_code == 401 and r.get_json()["status"] == 10
    r = c.post("/api/v1/keys/sae-z/enc_keys", data=b"\xff\xfe", environ_base=env)
    assert r.status_code == 400 and "malformed JSON" in r.get_json()["message"]
    r = c.post("/kmapi/v1/ext_keys", json={}, environ_base=env)
    assert r.status_code == 403
    assert c.get("/healthz").get_json() == {"ok": True}  # no certificate: liveness only
    assert c.get("/healthz", environ_base=env).get_json() == {"ok": True}  # an application
    node = {"SSL_CLIENT_CERT": Path(test_ca.issue("km9", ou="node").cert).read_text(),
            "SSL_CLIENT_VERIFY": "SUCCESS"}
    h = c.get("/healthz", environ_base=node).get_json()
    assert h["db"] is True and h["broker"] is False
    assert c.get("/metrics").status_code == 403
    assert b"qkdtwin_km_requests_total" in c.get("/metrics", environ_base=node).data
    assert json.loads(c.get("/kmapi/versions").data)["versions"]


def test_sdn_agent_registers_node_and_links(tmp_path, test_ca):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from qkdtwin.key_manager.sdn_agent import SdnAgent
    got = []

    class H(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802
            n = int(self.headers["Content-Length"])
            got.append((self.path, json.loads(self.rfile.read(n))))
            self.send_response(200 if len(got) > 1 else 503)  # first attempt fails
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    node = test_ca.issue("km9", ou="node")
    cfg = parse_config({"node": "km9", "tls": {"ca": test_ca.ca, "cert": node.cert,
                                              "key": node.key},
                        "data_dir": str(tmp_path), "sdn": {"url": f"http://127.0.0.1:"
                                                                  f"{srv.server_address[1]}"},
                        "modules": [{"link": "km9-km8", "peer": "km8", "peer_url": "https://x",
                                     "module_url": "http://y", "interface": "eth3"}]})
    agent = SdnAgent(cfg).start()
    try:
        assert agent.registered.wait(10)
    finally:
        agent.stop()
        srv.shutdown()
    path, body = got[-1]
    assert path == "/restconf/data/etsi-qkd-sdn-node:qkd_node/km9"
    link = body["qkd_node"]["qkd_links"]["qkd_link"][0]
    assert body["qkd_node"]["qkdn_id"] == "km9" and link["qkdl_id"] == "km9-km8"
    assert link["qkdl_type"] == "PHYS" and link["qkdl_remote"] == {"qkdn_id": "km8"}
    assert link["qkdl_local"] == {"qkdn_id": "km9", "qkdi_id": "eth3"}
