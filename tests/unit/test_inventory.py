"""Inventory shape (docs/architecture.md) and the netns connection plugin's documentation."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qkdtwin.runtime import netns
from qkdtwin.runtime.inventory import build_inventory, write_inventory
from qkdtwin.runtime.netns.impair import applied_from_qdisc, netem_args, tbf_args
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import ROLES, load_lab

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NETNS, CLAB = get_runtime("netns"), get_runtime("clab")
ALL_VARS = {"qkdtwin_lab", "qkdtwin_lab_dir", "qkdtwin_runtime", "qkdtwin_python",
            "qkdtwin_users", "qkdtwin_broker", "qkdtwin_elements", "qkdtwin_nodes",
            "qkdtwin_qkd_links"}
HOST_VARS = {"qkdtwin_node", "qkdtwin_roles", "qkdtwin_mgmt_ipv4", "qkdtwin_data_dir",
             "qkdtwin_interfaces", "qkdtwin_node_qkd_links"}


@pytest.fixture
def line3(tmp_path):
    for suffix in (".clab.yml", ".users.yml"):
        shutil.copy(ROOT / "labs" / f"line3{suffix}", tmp_path / f"line3{suffix}")
    return load_lab(tmp_path / "line3.clab.yml")


def test_all_vars(line3):
    inv = build_inventory(line3, NETNS, python="/venv/bin/python")
    v = inv["all"]["vars"]
    assert set(v) == ALL_VARS
    assert v["qkdtwin_lab"] == "line3"
    assert v["qkdtwin_lab_dir"] == str(line3.path.parent / "clab-line3")
    assert v["qkdtwin_runtime"] == "netns"
    assert v["qkdtwin_python"] == "/venv/bin/python"
    assert v["qkdtwin_broker"] == {"host": "172.31.3.10", "port": 8883}
    assert v["qkdtwin_elements"]["admission"] == "ctl"
    assert v["qkdtwin_elements"]["broker"] == "broker"
    assert v["qkdtwin_nodes"]["km1"] == {"mgmt_ipv4": "172.31.3.21", "roles": ["km"]}
    assert [u["name"] for u in v["qkdtwin_users"]] == ["alice", "bob", "mallory"]
    assert v["qkdtwin_users"][0]["applications"][0] == {"sae_id": "sae-a0", "km": "km0"}
    link = v["qkdtwin_qkd_links"][1]
    assert {k: link[k] for k in ("id", "a", "b", "a_interface", "b_interface", "a_ipv4",
                                 "b_ipv4")} == {
        "id": "km1-km2", "a": "km1", "b": "km2", "a_interface": "eth2",
        "b_interface": "eth1", "a_ipv4": "10.10.2.1", "b_ipv4": "10.10.2.2"}
    assert link["qkd"]["length_km"] == 25


def test_groups_by_role(line3):
    children = build_inventory(line3, NETNS)["all"]["children"]
    assert set(children) == set(ROLES)
    assert list(children["km"]["hosts"]) == ["km0", "km1", "km2"]
    for role in ("sdn", "access", "admission", "routing", "monitor"):
        assert list(children[role]["hosts"]) == ["ctl"]
    assert list(children["broker"]["hosts"]) == ["broker"]
    assert children["app"]["hosts"] == {}


def test_host_vars(line3):
    hosts = build_inventory(line3, NETNS, python="/py")["all"]["hosts"]
    km1 = hosts["km1"]
    assert HOST_VARS <= set(km1)
    assert km1["qkdtwin_node"] == "km1" and km1["qkdtwin_roles"] == ["km"]
    assert km1["qkdtwin_mgmt_ipv4"] == "172.31.3.21"
    assert km1["qkdtwin_data_dir"] == str(line3.lab_dir / "nodes" / "km1")
    assert km1["qkdtwin_interfaces"] == [
        {"name": "eth1", "ipv4": "10.10.1.2/30", "peer": "km0", "peer_interface": "eth1",
         "peer_ipv4": "10.10.1.1", "link": "km0-km1"},
        {"name": "eth2", "ipv4": "10.10.2.1/30", "peer": "km2", "peer_interface": "eth1",
         "peer_ipv4": "10.10.2.2", "link": "km1-km2"},
    ]
    q = km1["qkdtwin_node_qkd_links"]
    assert [(x["id"], x["side"], x["interface"], x["local_ipv4"], x["peer"], x["peer_ipv4"])
            for x in q] == [("km0-km1", "b", "eth1", "10.10.1.2", "km0", "10.10.1.1"),
                            ("km1-km2", "a", "eth2", "10.10.2.1", "km2", "10.10.2.2")]
    assert hosts["ctl"]["qkdtwin_interfaces"] == []
    assert km1["ansible_connection"] == "netns"
    assert km1["qkdtwin_netns"] == "clab-line3-km1"
    assert km1["ansible_python_interpreter"] == "/py"


def test_runtimes_differ_only_in_connection(line3):
    conn = {"ansible_connection", "ansible_host", "qkdtwin_netns",
            "ansible_python_interpreter", "qkdtwin_data_dir"}
    a = build_inventory(line3, NETNS, python=sys.executable)
    b = build_inventory(line3, CLAB, python=sys.executable)
    assert b["all"]["hosts"]["km0"]["ansible_connection"] == "community.docker.docker"
    assert b["all"]["hosts"]["km0"]["ansible_host"] == "clab-line3-km0"
    for inv in (a, b):
        inv["all"]["vars"]["qkdtwin_runtime"] = None
        for hv in inv["all"]["hosts"].values():
            for k in conn:
                hv.pop(k, None)
    assert a == b


def test_build_is_pure(line3):
    before = copy.deepcopy(line3)
    assert build_inventory(line3, NETNS) == build_inventory(line3, NETNS)
    assert line3 == before


def test_written_inventory_is_read_by_ansible(line3):
    path = write_inventory(line3, NETNS, python=sys.executable)
    assert path == line3.lab_dir / "ansible-inventory.yml"
    data = yaml.safe_load(path.read_text())
    assert data == json.loads(json.dumps(build_inventory(line3, NETNS, python=sys.executable)))
    mtime = path.stat().st_mtime_ns
    write_inventory(line3, NETNS, python=sys.executable)
    assert path.stat().st_mtime_ns == mtime, "unchanged inventory is not rewritten"
    exe = Path(sys.executable).parent / "ansible-inventory"
    if not exe.exists():
        pytest.skip("ansible-inventory not installed")
    out = subprocess.run([str(exe), "-i", str(path), "--list"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    listed = json.loads(out)
    assert sorted(listed["km"]["hosts"]) == ["km0", "km1", "km2"]
    assert listed["_meta"]["hostvars"]["km2"]["qkdtwin_netns"] == "clab-line3-km2"
    assert listed["_meta"]["hostvars"]["ctl"]["qkdtwin_elements"]["routing"] == "ctl"


def test_site_group_vars_seed_access_control_with_the_lab_users(line3):
    """inventory/group_vars/ applies beside the generated inventory: the access node gets
    access_control_users = the lab's users; other nodes do not get it."""
    from qkdtwin.deploy import SITE_INVENTORY, ansible_env, inventory_args

    path = write_inventory(line3, NETNS, python=sys.executable)
    assert inventory_args(path) == ["-i", str(SITE_INVENTORY), "-i", str(path)]
    exe = Path(sys.executable).parent / "ansible"
    if not exe.exists():
        pytest.skip("ansible not installed")

    def var(host: str, name: str):
        # debug runs on the controller: no connection to the (not running) lab is made.
        out = subprocess.run([str(exe), *inventory_args(path), host, "-o", "-m", "debug",
                              "-a", f"var={name}"], capture_output=True, text=True,
                             timeout=60, env=ansible_env(), cwd=ROOT, check=True).stdout
        return json.loads(out.split("=>", 1)[1])[name]

    users = var("ctl", "access_control_users")
    assert [u["name"] for u in users] == [u.name for u in line3.users]
    assert users == json.loads(json.dumps([u.as_dict() for u in line3.users]))
    assert var("ctl", "access_control_seed_overwrite") is False
    undefined = var("km0", "access_control_users")  # Ansible's wording varies by version
    assert isinstance(undefined, str) and "defined" in undefined.lower()


def test_connection_plugin_documentation():
    spec = importlib.util.spec_from_file_location(
        "netns_plugin", ROOT / "plugins" / "connection" / "netns.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["name"] == "netns"
    names = [v["name"] for v in doc["options"]["netns"]["vars"]]
    assert "qkdtwin_netns" in names and "ansible_host" in names
    assert module.Connection.has_pipelining is True
    assert module.Connection.transport == "netns"


# --- pure helpers of the netns runtime (names and impairment translation; no root needed)


def test_runtime_names_fit_linux_limits(line3):
    assert netns.bridge_name(line3) == "qt-line3"
    line3.name = "a-very-long-lab-name"
    br = netns.bridge_name(line3)
    assert len(br) <= 15 and br.startswith("qt-a-very")
    line3.name = "a-very-long-lab-nameX"
    assert netns.bridge_name(line3) != br
    names = {netns.mgmt_host_ifname(line3, n) for n in line3.nodes}
    assert len(names) == len(line3.nodes) and all(len(n) <= 15 for n in names)


def test_impairment_translation():
    assert netem_args({"delay_ms": 2.0, "jitter_ms": 0.5, "loss_percent": 1.0,
                       "rate_mbit": 100.0}) == [
        "netem", "delay", "2ms", "0.5ms", "loss", "1%", "rate", "100mbit"]
    tbf = tbf_args(100.0)
    assert tbf[:3] == ["tbf", "rate", "100mbit"] and int(tbf[4]) == 125000
    assert applied_from_qdisc(
        {"kind": "tbf", "options": {"rate": 12500000}}) == {"rate_mbit": 100.0}
    assert applied_from_qdisc({"kind": "pfifo_fast"}) == {}
