"""SDN controller REST with mutual TLS (cheroot), topology publishing; Access Control
requests over MQTT; the `qkdtwin users` CLI against a lab directory."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from qkdtwin import bus
from qkdtwin.cli import main as cli_main
from qkdtwin.control.access import AccessControl
from qkdtwin.control.sdn import SdnController
from qkdtwin.etsi015 import SDN_BASE as BASE
from tests.support.control import STAR6_NODES, broker_cfg, make_bus, register_star6, wait_for
from tests.support.pki import TestCA

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


@pytest.fixture
def sdn(broker, test_ca, tmp_path):
    ident = test_ca.issue("sdn")
    s = SdnController({"element": "sdn", "broker": broker_cfg(broker, test_ca, "sdn"),
                       "data_dir": str(tmp_path / "sdn"),
                       "listen": {"host": "127.0.0.1", "port": 0},
                       "tls": {"ca": test_ca.ca, "cert": ident.cert, "key": ident.key},
                       "nodes": {**STAR6_NODES,
                                 "km0": {"mgmt_ipv4": "172.31.6.20"}}}).start()
    yield s
    s.stop()


def call(sdn, ca, cn, method, path, **kw):
    ident = ca.issue(cn)
    return requests.request(method, f"https://127.0.0.1:{sdn.port}{path}",
                            cert=(ident.cert, ident.key), verify=ca.ca, timeout=5, **kw)


def test_registration_topology_and_authorisation(sdn, test_ca, broker, tmp_path):
    topos = []
    host = make_bus(broker, test_ca, "host")
    host.subscribe(bus.TOPOLOGY, lambda t, p, m: topos.append(p))
    register_star6(f"https://127.0.0.1:{sdn.port}", test_ca)
    topo = wait_for(lambda: topos and len(topos[-1]["links"]) == 6 and topos[-1])
    assert {lk["id"] for lk in topo["links"]} >= {"km0-km1", "km4-km5"}
    km1 = next(lk for lk in topo["links"] if lk["id"] == "km0-km1")
    assert (km1["a"], km1["b"], km1["type"], km1["status"]) == ("km0", "km1", "PHYS", "up")
    assert next(n for n in topo["nodes"] if n["id"] == "km0")["mgmt_ipv4"] == "172.31.6.20"
    # a KM may only register itself; admission may add VIRT links
    r = call(sdn, test_ca, "km1", "PUT", f"{BASE}/km0", json={"qkd_node": {"qkdn_id": "km0"}})
    assert r.status_code == 403 and "may not" in r.json()["message"]
    virt = {"qkd_link": {"qkdl_type": "VIRT", "qkdl_remote": {"qkdn_id": "km3"},
                         "virt_hops": ["km2", "km0", "km3"], "session_id": "s1"}}
    r = call(sdn, test_ca, "admission", "PUT", f"{BASE}/km2/qkd_links/qkd_link/virt-s1",
             json=virt)
    assert r.status_code == 200, r.text
    topo = wait_for(lambda: any(lk["type"] == "VIRT" for lk in topos[-1]["links"])
                    and topos[-1])
    v = next(lk for lk in topo["links"] if lk["type"] == "VIRT")
    assert v["hops"] == ["km2", "km0", "km3"] and v["session_id"] == "s1"
    r = call(sdn, test_ca, "admission", "DELETE", f"{BASE}/km2/qkd_links/qkd_link/virt-s1")
    assert r.status_code == 204
    # bad input: clear JSON errors, never a traceback
    for body, msg in (("[1]", "JSON object"), ('{"qkd_node": 5}', "qkd_node"),
                      ('{"qkd_node": {"qkd_links": {"qkd_link": [{"qkdl_id": 3}]}}}',
                       "qkdl_id")):
        r = call(sdn, test_ca, "km3", "PUT", f"{BASE}/km3", data=body,
                 headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and msg in r.json()["message"], r.text
    assert call(sdn, test_ca, "km3", "GET", f"{BASE}/km9").status_code == 404
    node = call(sdn, test_ca, "host", "GET", f"{BASE}/km4").json()["qkd_node"]
    assert {lk["qkdl_id"] for lk in node["qkd_links"]["qkd_link"]} == {"km0-km4", "km4-km5"}
    # a node leaving takes its links down
    assert call(sdn, test_ca, "km5", "DELETE", f"{BASE}/km5").status_code == 204
    topo = wait_for(lambda: any(lk["id"] == "km4-km5" and lk["status"] == "down"
                                for lk in topos[-1]["links"]) and topos[-1])
    r = call(sdn, test_ca, "host", "GET", "/healthz")
    assert r.status_code == 200 and r.json()["ok"]
    assert "qkdtwin_sdn_requests" in call(sdn, test_ca, "host", "GET", "/metrics").text
    host.stop()


def test_mtls_required(sdn, test_ca, tmp_path):
    url = f"https://127.0.0.1:{sdn.port}{BASE}"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, verify=test_ca.ca, timeout=5)  # no client certificate
    other = TestCA(tmp_path / "rogue")
    ident = other.issue("km0")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, cert=(ident.cert, ident.key), verify=test_ca.ca, timeout=5)


def test_idle_and_half_sent_clients_do_not_stall_the_rest_api(sdn, test_ca):
    """Finding H1: one idle TCP connection (no handshake) and one that trickles a request
    head once held cheroot's accept thread / a worker; a real client must not wait."""
    idle = socket.create_connection(("127.0.0.1", sdn.port))
    t0 = time.monotonic()
    ident = test_ca.issue("km0")
    ctx = ssl.create_default_context(cafile=test_ca.ca)
    ctx.load_cert_chain(ident.cert, ident.key)
    half = ctx.wrap_socket(socket.create_connection(("127.0.0.1", sdn.port)),
                           server_hostname="localhost")
    half.sendall(b"GET /restconf HTTP/1.1\r\nHost: sdn\r\n")  # and never the end
    try:
        for _ in range(3):  # each a new connection: handshake and request while both wait
            assert call(sdn, test_ca, "km1", "GET", BASE).status_code == 200
        # H1's own kind of threshold: the old intake made each wait for its 10 s socket
        # timeout; a handshake and 3 requests in 3 s leave a slow machine a wide margin
        assert time.monotonic() - t0 < 3.0, "requests stalled behind the idle connections"
    finally:
        idle.close()
        half.close()


def test_topology_republished_after_broker_restart(sdn, test_ca, broker):
    register_star6(f"https://127.0.0.1:{sdn.port}", test_ca)
    broker.restart()  # persistence off: the retained topology is gone with it
    wait_for(lambda: sdn.bus.connected, timeout=15)
    time.sleep(0.5)
    late = make_bus(broker, test_ca, "late")
    got = threading.Event()
    late.subscribe(bus.TOPOLOGY, lambda t, p, m: len(p["links"]) == 6 and got.set())
    assert got.wait(5)
    late.stop()


@pytest.fixture
def access(broker, test_ca, tmp_path):
    a = AccessControl({"element": "access", "broker": broker_cfg(broker, test_ca, "access"),
                       "data_dir": str(tmp_path / "access"), "users": USERS,
                       "health": {"host": "127.0.0.1", "port": 0}}).start()
    yield a
    a.stop()


def test_access_requests_and_refusal_events(access, broker, test_ca):
    km = make_bus(broker, test_ca, "km2")
    events = []
    km.subscribe(bus.events("access"), lambda t, p, m: events.append(p))
    time.sleep(0.2)
    ok = km.request(bus.ACCESS_IN, {"type": "authenticate", "km": "km2", "sae_id": "sae-2",
                                    "cert": {"cn": "sae-2", "o": "research", "ou": "sae"}})
    assert ok["ok"] and ok["sla"]["max_priority"] == 5
    bad = km.request(bus.ACCESS_IN, {"type": "authenticate", "km": "km2", "sae_id": "sae-2",
                                     "cert": {"cn": "sae-2", "o": "ops", "ou": "sae"}})
    assert not bad["ok"]
    ev = wait_for(lambda: [e for e in events if e["kind"] == "auth_refused"])
    assert ev[0]["sae_id"] == "sae-2" and "certificate" in ev[0]["reason"]
    assert km.request(bus.ACCESS_IN, {"type": "lookup_sae", "sae_id": "sae-5"})["km"] == "km5"
    assert km.request(bus.ACCESS_IN, {"type": "nonsense"})["reason"].startswith("unknown")
    # User management is not served on the KMs' topic, only on the operator's.
    r = km.request(bus.ACCESS_IN, {"type": "user_add", "user": {"name": "x", "sla": {}}})
    assert not r["ok"] and r["reason"].startswith("unknown request type")
    r = km.request(bus.ACCESS_ADMIN, {"type": "user_add", "user": {"name": "x", "sla": {}}})
    assert not r["ok"] and "sla.max_priority" in r["reason"]
    port = access.health_port
    h = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
    assert h["ok"] and h["users"] == 4
    assert "qkdtwin_control_messages" in requests.get(f"http://127.0.0.1:{port}/metrics",
                                                      timeout=5).text
    km.stop()


def test_users_cli(access, broker, test_ca, tmp_path, monkeypatch, capsys):
    """`qkdtwin users` finds the broker and host cert in labs/clab-<lab>/ like a deployed lab."""
    labs = tmp_path / "labs"
    (labs / "clab-star6" / "pki").mkdir(parents=True)
    for f in ("star6.clab.yml", "star6.users.yml"):
        (labs / f).write_text((ROOT / "labs" / f).read_text())
    host = test_ca.issue("host", ou="operator")
    pki = labs / "clab-star6" / "pki"
    (pki / "ca.crt").write_text(open(test_ca.ca).read())
    (pki / "host.crt").write_text(open(host.cert).read())
    (pki / "host.key").write_text(open(host.key).read())
    (labs / "clab-star6" / "ansible-inventory.yml").write_text(yaml.safe_dump(
        {"all": {"vars": {"qkdtwin_broker": {"host": "127.0.0.1", "port": broker.port}}}}))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["users", "list", "star6"]) == 0
    out = capsys.readouterr().out
    assert "mallory" in out and "disabled" in out and "sae-2@km2" in out
    assert cli_main(["users", "add", "star6", "carol", "--sae", "sae-c@km3",
                     "--max-priority", "4", "--allow", "sae-2"]) == 0
    assert "sae-c@km3" in capsys.readouterr().out
    assert access.db.application("sae-c")["sla"]["allowed_destinations"] == ["sae-2"]
    assert cli_main(["users", "disable", "star6", "carol"]) == 0
    assert access.db.get("carol")["status"] == "disabled"
    assert cli_main(["users", "disable", "star6", "nobody"]) == 2
    assert "unknown user nobody" in capsys.readouterr().err
    # an application named like a node would claim its identity: refused before asking
    assert cli_main(["users", "add", "star6", "eve", "--sae", "km1@km2"]) == 2
    assert "sae_id: 'km1' clashes with node km1" in capsys.readouterr().err
    assert access.db.get("eve") is None
    assert cli_main(["users", "list", "star6", "--json"]) == 0
    assert any(u["name"] == "carol" for u in yaml.safe_load(capsys.readouterr().out))
    with pytest.raises(SystemExit):
        cli_main(["users", "add", "star6", "dave", "--sae", "nokm"])


def test_monitoring_rtt_probe_completes_tls(sdn, test_ca):
    from qkdtwin.control.monitoring import probe_context, tcp_rtt_ms
    from tests.support.broker import free_port

    ident = test_ca.issue("monitor")
    ctx = probe_context(test_ca.ca, ident.cert, ident.key)
    before = sdn.m_http.labels("GET", "200")._value.get()
    rtt = tcp_rtt_ms("127.0.0.1", sdn.port, ctx)
    assert rtt is not None and 0 < rtt < 1000
    assert sdn.m_http.labels("GET", "200")._value.get() == before + 1  # a real /healthz
    assert tcp_rtt_ms("127.0.0.1", free_port(), ctx) is None
