"""testinfra checks of the control elements (roles sdn_controller, access_control,
routing_element, admission_control, monitoring): running under the node's supervisord,
healthy, configured for this node, and working together over the lab's broker with the lab's
certificates and ACLs. On star6 (`deployed_star6`), where each element has its own node, and
on line3 (`deployed_lab`), where one node `ctl` runs all five."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

pytestmark = [pytest.mark.infra]

SUPERVISORCTL = "{python} -m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"
# inventory role -> (module / config name, health port)
ELEMENTS = {"sdn": ("sdn", 8445), "access": ("access", 9101), "admission": ("admission", 9102),
            "routing": ("routing", 9103), "monitor": ("monitoring", 9105)}


def element_nodes(lab):
    return [(role, node) for role in ELEMENTS for node in lab.nodes_with_role(role)]


def test_every_element_runs_on_its_own_star6_node(deployed_star6):
    assert len({n for _, n in element_nodes(deployed_star6)}) == len(ELEMENTS)
    check_elements(deployed_star6)


def test_every_element_runs_on_the_line3_ctl_node(deployed_lab):
    assert {n for _, n in element_nodes(deployed_lab)} == {"ctl"}
    check_elements(deployed_lab)


def check_elements(deployed_lab) -> None:
    python = deployed_lab.all_vars["qkdtwin_python"]
    pairs = element_nodes(deployed_lab)
    assert {r for r, _ in pairs} == set(ELEMENTS), "the lab has every control role"
    for role, node in pairs:
        module, port = ELEMENTS[role]
        host = deployed_lab.host(node)
        status = _program_status(host, SUPERVISORCTL.format(python=python)
                                 + f" status qkdtwin-{module}")
        assert "RUNNING" in status, status
        cfg = host.file(f"/etc/qkdtwin/{module}.yml")
        assert cfg.is_file and f"element: {node}" in cfg.content_string
        if role == "sdn":
            mgmt = deployed_lab.hostvars(node)["qkdtwin_mgmt_ipv4"]
            assert host.socket(f"tcp://{mgmt}:{port}").is_listening
            out = host.check_output(
                f"curl -sf --cacert /etc/qkdtwin/tls/ca.crt --cert /etc/qkdtwin/tls/node.crt "
                f"--key /etc/qkdtwin/tls/node.key https://{mgmt}:{port}/healthz")
            # without a client certificate the TLS handshake is refused
            assert host.run(f"curl -s --cacert /etc/qkdtwin/tls/ca.crt "
                            f"https://{mgmt}:{port}/healthz").rc != 0
        else:
            out = host.check_output(f"curl -sf http://127.0.0.1:{port}/healthz")
            assert "qkdtwin_control_messages" in host.check_output(
                f"curl -sf http://127.0.0.1:{port}/metrics")
        health = json.loads(out)
        # a rollout ends when every program runs; the broker, started on its own node in
        # parallel, may take a moment more to be connected: give it a bounded wait
        deadline = time.monotonic() + 60
        while not (health["ok"] and health["broker_connected"]) and time.monotonic() < deadline:
            time.sleep(1)
            health = json.loads(_health(deployed_lab, host, role, node, port))
        assert health["ok"] and health["broker_connected"], (node, health)


def _program_status(host, command: str, timeout: float = 60.0) -> str:
    """supervisorctl's status line, waiting (bounded) for RUNNING: a program restarted late
    in a parallel rollout is briefly STARTING."""
    deadline = time.monotonic() + timeout
    status = host.run(command).stdout
    while "RUNNING" not in status and time.monotonic() < deadline:
        time.sleep(1)
        status = host.run(command).stdout
    return status


def _health(lab, host, role: str, node: str, port: int) -> str:
    if role == "sdn":
        mgmt = lab.hostvars(node)["qkdtwin_mgmt_ipv4"]
        return host.check_output(
            f"curl -sf --cacert /etc/qkdtwin/tls/ca.crt --cert /etc/qkdtwin/tls/node.crt "
            f"--key /etc/qkdtwin/tls/node.key https://{mgmt}:{port}/healthz")
    return host.check_output(f"curl -sf http://127.0.0.1:{port}/healthz")


def test_routing_knows_the_star6_topology(deployed_star6):
    node = deployed_star6.nodes_with_role("routing")[0]
    health = json.loads(deployed_star6.host(node).check_output(
        "curl -sf http://127.0.0.1:9103/healthz"))
    assert health["links"] == len(deployed_star6.all_vars["qkdtwin_qkd_links"]) == 6


def _admission_sessions(lab) -> dict:
    node = lab.nodes_with_role("admission")[0]
    return json.loads(lab.host(node).check_output(
        "curl -sf http://127.0.0.1:9102/healthz"))["sessions"]


def test_etsi004_session_cycle_through_the_control_plane(deployed_lab):
    """Two applications open the same key stream on their KMs (ETSI 004, mTLS with the lab's
    SAE certificates): access control authenticates, admission configures the path, and a
    close from one side ends the session everywhere."""
    users = deployed_lab.all_vars["qkdtwin_users"]
    user = next(u for u in users if u["status"] == "active" and len(
        {a["km"] for a in u["applications"]}) >= 2)
    a = user["applications"][0]
    b = next(x for x in user["applications"][1:] if x["km"] != a["km"])
    nodes = deployed_lab.all_vars["qkdtwin_nodes"]
    pki = deployed_lab.pki

    def call(app, op, body):
        url = f"https://{nodes[app['km']]['mgmt_ipv4']}:8443/api/v1/qkd004/{op}"
        cert = (str(pki / "sae" / f"{app['sae_id']}.crt"),
                str(pki / "sae" / f"{app['sae_id']}.key"))
        r = requests.post(url, json=body, cert=cert, verify=str(pki / "ca.crt"), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    sid = str(uuid.uuid4())
    body = {"source": a["sae_id"], "destination": b["sae_id"], "key_stream_id": sid,
            "qos": {"key_chunk_size": 32, "timeout": 300}}
    assert call(a, "open_connect", body)["status"] in (0, 1)
    r = call(b, "open_connect", {**body, "source": b["sae_id"], "destination": a["sae_id"],
                                 "qos": {"key_chunk_size": 32, "timeout": 15000}})
    assert r["status"] == 0, r
    assert _admission_sessions(deployed_lab).get("active", 0) >= 1
    assert call(a, "close", {"key_stream_id": sid})["status"] == 0
    deadline = time.time() + 15
    while time.time() < deadline and _admission_sessions(deployed_lab).get("active", 0):
        time.sleep(0.2)
    assert not _admission_sessions(deployed_lab).get("active"), "deleted and confirmed"
