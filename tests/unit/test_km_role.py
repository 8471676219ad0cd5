"""Role key_manager renders a config the Key Manager accepts, and a supervisord program;
a second run changes nothing. Runs the role against localhost with paths in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qkdtwin.key_manager.config import parse_config

pytestmark = [pytest.mark.unit, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)),
                    reason="ansible not installed in the venv")
def test_role_renders_config_and_program(tmp_path):
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port_holder.listen(1)  # stands in for the KM's HTTPS port that the role waits for
    port = port_holder.getsockname()[1]
    links = [{"id": "km0-km1", "interface": "eth1", "local_ipv4": "10.10.1.1",
              "peer": "km1", "peer_ipv4": "10.10.1.2", "side": "a", "qkd": {}},
             {"id": "km2-km0", "interface": "eth2", "local_ipv4": "10.10.2.2",
              "peer": "km2", "peer_ipv4": "10.10.2.1", "side": "b", "qkd": {}}]
    vars_ = {"qkdtwin_lab": "t", "qkdtwin_node": "km0", "qkdtwin_python": sys.executable,
             "ansible_python_interpreter": sys.executable,
             "qkdtwin_data_dir": str(tmp_path / "data"),
             "qkdtwin_broker": {"host": "172.31.3.10", "port": 8883},
             "qkdtwin_node_qkd_links": links, "qkdtwin_elements": {"sdn": "ctl"},
             "qkdtwin_nodes": {"ctl": {"mgmt_ipv4": "172.31.3.11", "roles": ["sdn"]}},
             "key_manager_config_dir": str(tmp_path / "etc"),
             "key_manager_programs_dir": str(tmp_path / "etc/supervisord.d"),
             "key_manager_port": port, "key_manager_supervisorctl": "true"}
    (tmp_path / "etc/supervisord.d").mkdir(parents=True)
    (tmp_path / "vars.json").write_text(json.dumps(vars_))
    (tmp_path / "play.yml").write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles: [key_manager]\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_LIBRARY": str(ROOT / "playbooks/library"),
           "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOCALHOST_WARNING": "false"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
           "-e", f"@{tmp_path / 'vars.json'}", str(tmp_path / "play.yml")]
    try:
        runs = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
                for _ in range(2)]
    finally:
        port_holder.close()
    for r in runs:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    stats = [json.loads(r.stdout)["stats"]["localhost"] for r in runs]
    assert stats[0]["changed"] >= 1 and stats[1]["changed"] == 0
    raw = yaml.safe_load((tmp_path / "etc/key_manager.yml").read_text())
    cfg = parse_config(raw)
    assert cfg.node == "km0" and cfg.port == port and cfg.sdn_url == "https://172.31.3.11:8445"
    assert cfg.data_dir == tmp_path / "data/key_manager"
    a, b = cfg.links
    assert (a.link, a.side, a.peer_url, a.module_url) == (
        "km0-km1", "a", f"https://10.10.1.2:{port}", "http://127.0.0.1:8700")
    assert (b.link, b.side, b.module_url) == ("km2-km0", "b", "http://127.0.0.1:8701")
    assert (a.interface, b.interface) == ("eth1", "eth2")
    prog = (tmp_path / "etc/supervisord.d/key_manager.conf").read_text()
    assert "[program:key_manager]" in prog and "-m qkdtwin.key_manager --config" in prog
