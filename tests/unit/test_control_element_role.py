"""Role control_element, included by the element roles: the elements of two nodes get their
own config and program (from role common's one program template), a second run changes
nothing, and a changed setting restarts only that element. Runs the roles against
localhost with paths in a temp dir and a stand-in /healthz."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.unit, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@pytest.fixture
def healthz(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "healthz").write_text("ok")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _run(tmp_path: Path, *extra: str) -> tuple[dict, dict[str, list[str]]]:
    """Run the play; the stats per host and the control element commands each ran."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_LIBRARY": str(ROOT / "playbooks/library"),
           "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOCALHOST_WARNING": "false"}
    cmd = [str(PLAYBOOK), "-i", str(tmp_path / "hosts.yml"), *extra, str(tmp_path / "play.yml")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    out = json.loads(r.stdout)
    ran: dict[str, list[str]] = {"n1": [], "n2": []}
    for task in (t for play in out["plays"] for t in play["tasks"]):
        if not task["task"]["name"].endswith(("(control element)", "control element")):
            continue
        for host, res in task["hosts"].items():
            if res.get("changed"):
                c = res["cmd"]
                ran[host].append(" ".join(c) if isinstance(c, list) else c)
    return out["stats"], ran


@pytest.mark.skipif(not PLAYBOOK.exists(), reason="ansible not installed in the venv")
def test_elements_of_two_nodes_in_parallel(tmp_path, healthz):
    common = {"qkdtwin_python": sys.executable, "ansible_python_interpreter": sys.executable,
              "ansible_connection": "local",
              "qkdtwin_broker": {"host": "172.31.3.10", "port": 8883},
              "qkdtwin_elements": {}, "qkdtwin_nodes": {},
              "routing_element_health_port": healthz, "admission_control_health_port": healthz,
              "control_element_supervisorctl": "echo"}
    hosts = {}
    for node, elements in (("n1", ["routing_element", "admission_control"]),
                           ("n2", ["admission_control"])):
        hosts[node] = {**common, "qkdtwin_node": node, "elements": elements,
                       "qkdtwin_data_dir": str(tmp_path / node / "data"),
                       "control_element_config_dir": str(tmp_path / node / "etc"),
                       "control_element_programs_dir": str(tmp_path / node / "etc/sd")}
    (tmp_path / "hosts.yml").write_text(json.dumps({"all": {"hosts": hosts}}))
    # as playbooks/site.yml: every node at its own pace, its element roles included in turn
    (tmp_path / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  strategy: ansible.builtin.free\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: '{{ r }}'}\n"
        "      loop: '{{ elements }}'\n      loop_control: {loop_var: r}\n")
    first, ran = _run(tmp_path)
    assert first["n1"]["changed"] >= 4 and ran == {"n1": ["echo update"] * 2,
                                                   "n2": ["echo update"]}
    etc = tmp_path / "n1" / "etc"
    routing = yaml.safe_load((etc / "routing.yml").read_text())
    assert routing["element"] == "n1" and routing["health"] == {"host": "0.0.0.0",
                                                                 "port": healthz}
    assert routing["broker"]["cert"] == "/etc/qkdtwin/tls/node.crt"
    assert routing["qber_threshold"] == 0.11 and "peer_wait_s" not in routing
    admission = yaml.safe_load((etc / "admission.yml").read_text())
    assert admission["peer_wait_s"] == 60 and admission["sdn"] == {"url": ""}
    program = (etc / "sd/qkdtwin-admission.conf").read_text()
    assert program.startswith("; Managed by Ansible (role admission_control); do not edit.\n")
    assert f"command = {sys.executable} -m qkdtwin.control.admission --config " \
           f"{etc}/admission.yml\n" in program
    assert f"stdout_logfile = {tmp_path}/n1/data/logs/qkdtwin-admission.log\n" in program

    again, ran = _run(tmp_path)
    assert again["n1"]["changed"] == again["n2"]["changed"] == 0
    assert ran == {"n1": [], "n2": []}
    # changed settings restart exactly the element whose configuration changed, on each node
    # (Ansible runs the copy of a handler it loaded last, maybe another element's or node's)
    # (the order of one node's handlers is not part of it: strategy free)
    _, ran = _run(tmp_path, "-e", json.dumps({"routing_element_qber_threshold": 0.2,
                                              "admission_control_peer_wait_s": 30}))
    assert {n: sorted(c) for n, c in ran.items()} == {
        "n1": ["echo restart qkdtwin-admission", "echo restart qkdtwin-routing"],
        "n2": ["echo restart qkdtwin-admission"]}
    assert yaml.safe_load((etc / "routing.yml").read_text())["qber_threshold"] == 0.2


def test_every_service_uses_the_one_program_template():
    templates = sorted(str(p.relative_to(ROOT / "roles")) for p in
                       (ROOT / "roles").glob("*/templates/*supervisor*"))
    assert templates == ["common/templates/supervisor_program.conf.j2",
                         "common/templates/supervisord.conf.j2"]
    for role in ("access_control", "admission_control", "routing_element", "monitoring",
                 "sdn_controller"):
        assert not (ROOT / "roles" / role / "handlers").exists()
        assert "name: control_element" in (ROOT / "roles" / role / "tasks/main.yml").read_text()
