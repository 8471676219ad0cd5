"""Nodes of the netns runtime and their management network: a namespace per node with `lo`
and `eth0` (veth) in the lab's bridge, the bridge holding the mgmt subnet's first address,
and the node's `/etc/qkdtwin` overlay directory."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from qkdtwin.errors import UserError
from qkdtwin.runtime.base import Log, UpResult
from qkdtwin.runtime.netns.system import host_link, ns_addrs, ns_links, run, run_json, short_ifname
from qkdtwin.topology import MGMT_INTERFACE, Lab

ETC_NETNS = Path("/etc/netns")
ETC_QKDTWIN = Path("/etc/qkdtwin")


def bridge_name(lab: Lab) -> str:
    """`qt-<lab>`, shortened with a hash when the lab name is long (IFNAMSIZ is 16)."""
    name = f"qt-{lab.name}"
    if len(name) <= 15:
        return name
    return f"qt-{lab.name[:7]}-{hashlib.sha1(lab.name.encode()).hexdigest()[:4]}"


def mgmt_host_ifname(lab: Lab, node: str) -> str:
    return short_ifname("qtm", lab.name, node)


def check_subnet(lab: Lab) -> None:
    """Refuse a subnet the host already routes elsewhere: the lab must not hijack traffic."""
    br = bridge_name(lab)
    for route in run_json(["ip", "-j", "-4", "route", "show"]):
        dst = route.get("dst", "default")
        if dst == "default" or route.get("dev") == br:
            continue
        try:
            overlaps = ipaddress.IPv4Network(dst, strict=False).overlaps(lab.mgmt_subnet)
        except ValueError:
            continue
        if overlaps:
            raise UserError(f"mgmt subnet {lab.mgmt_subnet} overlaps {dst} routed via "
                            f"{route.get('dev')} on this host; pick another mgmt.ipv4-subnet")


def ensure_etc_qkdtwin(log: Log) -> None:
    # ip netns exec bind-mounts /etc/netns/<ns>/qkdtwin only over an existing /etc/qkdtwin.
    if not ETC_QKDTWIN.is_dir():
        ETC_QKDTWIN.mkdir(parents=True, exist_ok=True)
        log(f"host: created empty {ETC_QKDTWIN} (mount point for per-node config)")


def ensure_bridge(lab: Lab, log: Log, result: UpResult) -> None:
    br = bridge_name(lab)
    cidr = f"{lab.mgmt_gateway}/{lab.mgmt_subnet.prefixlen}"
    info = host_link(br)
    if info is None:
        run(["ip", "link", "add", "name", br, "type", "bridge"])
        log(f"bridge {br}: created")
        result.changes += 1
    elif info.get("linkinfo", {}).get("info_kind") != "bridge":
        raise UserError(f"host interface {br} exists and is not a bridge; remove it first")
    addrs = {f"{a['local']}/{a['prefixlen']}" for e in
             run_json(["ip", "-j", "addr", "show", "dev", br]) for a in e.get("addr_info", [])
             if a.get("family") == "inet"}
    if cidr not in addrs:
        run(["ip", "addr", "add", cidr, "dev", br])
        log(f"bridge {br}: address {cidr}")
        result.changes += 1
    if info is None or "UP" not in info.get("flags", []):
        run(["ip", "link", "set", br, "up"])


def ensure_node(lab: Lab, node: str, existing: set[str], log: Log, result: UpResult) -> None:
    ns = lab.namespace(node)
    if ns not in existing:
        run(["ip", "netns", "add", ns])
        log(f"node {node}: namespace {ns} created")
        result.changes += 1
    if "UP" not in ns_links(ns).get("lo", {}).get("flags", []):
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _ensure_mgmt_veth(lab, node, log, result)
    _ensure_mgmt_address(lab, node, log, result)
    etc = ETC_NETNS / ns / "qkdtwin"
    if not etc.is_dir():
        etc.mkdir(parents=True, exist_ok=True)
        log(f"node {node}: config dir {etc} (seen as {ETC_QKDTWIN} inside the node)")
        result.changes += 1


def _ensure_mgmt_veth(lab: Lab, node: str, log: Log, result: UpResult) -> None:
    ns = lab.namespace(node)
    links = ns_links(ns)
    host_if = mgmt_host_ifname(lab, node)
    host_info = host_link(host_if)
    if MGMT_INTERFACE not in links or host_info is None:
        # Half a pair cannot exist (veths die together), but a foreign eth0 could.
        if MGMT_INTERFACE in links:
            run(["ip", "-n", ns, "link", "del", MGMT_INTERFACE])
        if host_info is not None:
            run(["ip", "link", "del", host_if])
        run(["ip", "link", "add", "name", host_if, "type", "veth",
             "peer", "name", MGMT_INTERFACE, "netns", ns])
        log(f"node {node}: mgmt veth {host_if} <-> {ns}:{MGMT_INTERFACE}")
        result.changes += 1
        host_info = host_link(host_if)
    br = bridge_name(lab)
    if (host_info or {}).get("master") != br or "UP" not in (host_info or {}).get("flags", []):
        run(["ip", "link", "set", host_if, "master", br, "up"])
        log(f"node {node}: {host_if} attached to bridge {br}")
        result.changes += 1


def _ensure_mgmt_address(lab: Lab, node: str, log: Log, result: UpResult) -> None:
    ns = lab.namespace(node)
    want = f"{lab.nodes[node].mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}"
    have = ns_addrs(ns).get(MGMT_INTERFACE, [])
    for cidr in have:
        if cidr != want:  # a stale address from an older topology
            run(["ip", "-n", ns, "addr", "del", cidr, "dev", MGMT_INTERFACE])
    if want not in have:
        run(["ip", "-n", ns, "addr", "add", want, "dev", MGMT_INTERFACE])
        log(f"node {node}: {MGMT_INTERFACE} {want}")
        result.changes += 1
    if "UP" not in ns_links(ns).get(MGMT_INTERFACE, {}).get("flags", []):
        run(["ip", "-n", ns, "link", "set", MGMT_INTERFACE, "up"])
