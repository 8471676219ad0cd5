"""The netns runtime against the real kernel: up (twice), reconcile, status, down.

The labs are copies of line3/star6 renamed (`itline3`, `itstar6`) with their own mgmt
subnets, so the tests never touch a lab somebody deployed from labs/. Each test starts with
`down` to clear leftovers of an interrupted earlier run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qkdtwin.cli import main
from qkdtwin.runtime import netns
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import Lab, load_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

ROOT = Path(__file__).resolve().parents[2]
NETNS = get_runtime("netns")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def make_lab(tmp_path: Path, src: str, name: str, octet: int, edit=None) -> Lab:
    text = (ROOT / "labs" / f"{src}.clab.yml").read_text()
    old_octet = {"line3": "3", "star6": "6"}[src]
    text = text.replace(f"name: {src}", f"name: {name}").replace(
        f"172.31.{old_octet}.", f"172.31.{octet}.")
    if edit:
        text = edit(text)
    (tmp_path / f"{name}.clab.yml").write_text(text)
    shutil.copy(ROOT / "labs" / f"{src}.users.yml", tmp_path / f"{name}.users.yml")
    return load_lab(tmp_path / f"{name}.clab.yml")


def lab_namespaces(lab: Lab) -> set[str]:
    return {ns for ns in netns.namespaces() if ns.startswith(f"clab-{lab.name}-")}


def host_snapshot() -> dict[str, str]:
    """What `up`/`down` must leave as it was on the host."""
    snap = {
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        "routes": sh("ip", "-4", "route", "show", "table", "all").stdout,
    }
    if shutil.which("nft"):
        snap["nft"] = sh("nft", "list", "ruleset").stdout
    return snap


def assert_gone(lab: Lab) -> None:
    assert lab_namespaces(lab) == set()
    assert sh("ip", "link", "show", "dev", netns.bridge_name(lab), check=False).returncode != 0
    for node in lab.nodes:
        assert not (Path("/etc/netns") / lab.namespace(node)).exists()
        host_if = netns.mgmt_host_ifname(lab, node)
        assert sh("ip", "link", "show", "dev", host_if, check=False).returncode != 0
    assert str(lab.mgmt_subnet) not in sh("ip", "-4", "route").stdout
    assert not netns.state_path(lab).exists()


def ping(src_ns: str | None, addr: str) -> bool:
    """At least one reply out of 5 (one lab link drops 20 % each way on purpose)."""
    argv = ["ping", "-c", "5", "-i", "0.05", "-W", "2", addr]
    if src_ns:
        argv = ["ip", "netns", "exec", src_ns, *argv]
    return sh(*argv, check=False).returncode == 0


@pytest.fixture
def line3(tmp_path):
    def edit(text: str) -> str:  # give one link a loss to exercise the nftables fallback
        return text.replace("        impairment: {delay_ms: 1}\n",
                            "        impairment: {delay_ms: 1, loss_percent: 20}\n", 1)

    lab = make_lab(tmp_path, "line3", "itline3", 213, edit)
    NETNS.down(lab, log=lambda _: None)  # leftovers of an interrupted run
    yield lab
    NETNS.down(lab, log=lambda _: None)
    assert_gone(lab)


@pytest.mark.slow
def test_up_reconcile_status_down(line3, capsys):
    lab = line3
    before = host_snapshot()
    lines: list[str] = []

    # ---- up builds everything
    result = NETNS.up(lab, log=lines.append)
    assert result.changes > 0
    assert lab_namespaces(lab) == {lab.namespace(n) for n in lab.nodes}
    br = json.loads(sh("ip", "-j", "addr", "show", "dev", netns.bridge_name(lab)).stdout)[0]
    assert "172.31.213.1" in [a["local"] for a in br["addr_info"]]
    assert Path("/etc/qkdtwin").is_dir()
    for node in lab.nodes.values():
        ns = lab.namespace(node.name)
        assert (Path("/etc/netns") / ns / "qkdtwin").is_dir()
        addrs = json.loads(sh("ip", "-n", ns, "-j", "addr", "show", "dev", "eth0").stdout)
        assert f"{node.mgmt_ipv4}" in [a["local"] for a in addrs[0]["addr_info"]]
        assert ping(None, node.mgmt_ipv4), f"host cannot reach {node.name}"
    for link in lab.links:
        for end in link.endpoints:
            out = sh("ip", "-n", lab.namespace(end.node), "-d", "-j", "link", "show",
                     "dev", end.interface).stdout
            info = json.loads(out)[0]
            assert info["linkinfo"]["info_kind"] == "veth"
            assert "UP" in info["flags"]
    assert any("namespace clab-itline3-km0 created" in line for line in lines)
    # Node config written inside the node lands in its /etc/netns overlay.
    sh("ip", "netns", "exec", lab.namespace("km0"), "sh", "-c",
       "echo hi > /etc/qkdtwin/probe")
    assert (Path("/etc/netns") / lab.namespace("km0") / "qkdtwin" / "probe").read_text() == "hi\n"
    assert not Path("/etc/qkdtwin/probe").exists()

    # ---- a second up changes nothing
    assert NETNS.up(lab, log=lambda _: None).changes == 0

    # ---- p2p addresses (normally role `common`) and ping across every link
    for link in lab.links:
        for end in link.endpoints:
            sh("ip", "-n", lab.namespace(end.node), "addr", "replace", end.ipv4,
               "dev", end.interface)
    for link in lab.links:
        assert ping(lab.namespace(link.a.node), link.b.address), link.id

    # ---- status --json through the CLI
    capsys.readouterr()
    assert main(["status", "--json", str(lab.path)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "up" and st["bridge"]["state"] == "present"
    assert {n["name"]: n["state"] for n in st["nodes"]} == {n: "running" for n in lab.nodes}
    km1 = next(n for n in st["nodes"] if n["name"] == "km1")
    assert km1["roles"] == ["km"] and km1["mgmt_ipv4"] == "172.31.213.21/24"
    assert {i["name"]: i["ipv4"] for i in km1["interfaces"]}["eth2"] == ["10.10.2.1/30"]
    links = {lk["id"]: lk for lk in st["links"]}
    assert links["km1-km2"]["state"] == "up"
    assert links["km1-km2"]["applied"]["km1:eth2"]["rate_mbit"] == pytest.approx(100)
    assert links["km0-km1"]["applied"]["km0:eth1"]["loss_percent"] == pytest.approx(20)
    netem = "delay_ms" in links["km0-km1"]["applied"]["km0:eth1"]
    if not netem:  # this machine: no sch_netem, so the delay is reported, not hidden
        assert links["km0-km1"]["not_applied"] == ["delay_ms"]
        assert any("km0-km1" in w and "delay_ms" in w for w in st["warnings"])
        assert any("delay_ms=1 not applied" in w for w in result.warnings)
        rules = sh("ip", "netns", "exec", lab.namespace("km0"), "nft", "list", "table",
                   "inet", "qkdtwin").stdout
        assert 'oifname "eth1"' in rules and "< 2000 drop" in rules

    # ---- partial teardown, then up repairs it
    sh("ip", "netns", "del", lab.namespace("km2"))
    sh("ip", "-n", lab.namespace("km0"), "link", "del", "eth1")
    sh("ip", "-n", lab.namespace("ctl"), "addr", "flush", "dev", "eth0")
    sh("ip", "link", "del", netns.bridge_name(lab))
    assert main(["status", "--json", str(lab.path)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "partial"
    # Deleting km2's namespace also destroyed the veth peer in km1 (veths die in pairs).
    assert {lk["id"]: lk["state"] for lk in st["links"]} == {"km0-km1": "missing",
                                                             "km1-km2": "missing"}
    assert next(n for n in st["nodes"] if n["name"] == "km2")["state"] == "missing"
    repaired: list[str] = []
    assert NETNS.up(lab, log=repaired.append).changes > 0
    assert any("namespace clab-itline3-km2 created" in line for line in repaired)
    assert any("link km0-km1: veth" in line for line in repaired)
    for node in lab.nodes.values():
        assert ping(None, node.mgmt_ipv4), f"{node.name} not reachable after repair"
    assert NETNS.up(lab, log=lambda _: None).changes == 0

    # ---- a process in the lab, then down removes everything
    proc = subprocess.Popen(["ip", "netns", "exec", lab.namespace("km1"), "sleep", "300"])
    time.sleep(0.3)
    assert netns.ns_pids(lab.namespace("km1"))
    assert main(["down", str(lab.path)]) == 0
    out = capsys.readouterr().out
    assert "stopped 1 process(es)" in out and "artefacts kept" in out
    assert proc.wait(timeout=10) != 0
    assert_gone(lab)
    assert lab.lab_dir.is_dir(), "artefacts directory is kept"
    assert host_snapshot() == before


@pytest.mark.slow
def test_star6_up_down(tmp_path):
    lab = make_lab(tmp_path, "star6", "itstar6", 216)
    NETNS.down(lab, log=lambda _: None)
    before = host_snapshot()
    try:
        NETNS.up(lab, log=lambda _: None)
        assert len(lab_namespaces(lab)) == 12
        st = NETNS.status(lab)
        assert st["state"] == "up"
        assert all(lk["state"] == "up" for lk in st["links"]) and len(st["links"]) == 6
        km0 = next(n for n in st["nodes"] if n["name"] == "km0")
        assert sorted(i["name"] for i in km0["interfaces"]) == [f"eth{i}" for i in range(6)]
        assert ping(lab.namespace("km4"), "172.31.216.25")  # over the mgmt bridge
    finally:
        NETNS.down(lab, log=lambda _: None)
    assert_gone(lab)
    assert host_snapshot() == before
