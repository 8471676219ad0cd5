"""`status` of the netns runtime: the lab's live state, like `containerlab inspect`."""

from __future__ import annotations

from typing import Any

from qkdtwin.runtime.netns.impair import applied_from_qdisc, nft_loss, root_qdisc
from qkdtwin.runtime.netns.nodes import bridge_name
from qkdtwin.runtime.netns.system import (
    host_link,
    namespaces,
    ns_addrs,
    ns_links,
    ns_pids,
    require_root,
)
from qkdtwin.topology import Lab, Link


def _node(lab: Lab, name: str, present: set[str], per_ns_links: dict[str, dict]) -> dict:
    n = lab.nodes[name]
    ns = lab.namespace(name)
    running = ns in present
    ifaces = []
    if running:
        links = per_ns_links[ns] = ns_links(ns)
        addrs = ns_addrs(ns)
        for ifname, info in links.items():
            if ifname == "lo":
                continue
            ifaces.append({"name": ifname, "state": info.get("operstate", "UNKNOWN"),
                           "ipv4": addrs.get(ifname, [])})
    return {
        "name": n.name, "namespace": ns, "roles": list(n.roles),
        "mgmt_ipv4": f"{n.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}",
        "state": "running" if running else "missing",
        "processes": len(ns_pids(ns)) if running else 0,
        "interfaces": ifaces,
    }


def _link(lab: Lab, link: Link, per_ns_links: dict[str, dict],
          nft_cache: dict[str, dict[str, float]], warnings: list[str]) -> dict[str, Any]:
    declared = {k: v for k, v in link.impairment.items() if v}
    applied: dict[str, dict[str, float]] = {}
    ends_present = 0
    for end in link.endpoints:
        ns = lab.namespace(end.node)
        key = f"{end.node}:{end.interface}"
        if end.interface not in per_ns_links.get(ns, {}):
            continue
        ends_present += 1
        got = applied_from_qdisc(root_qdisc(ns, end.interface))
        if ns not in nft_cache:
            nft_cache[ns] = nft_loss(ns)
        if end.interface in nft_cache[ns]:
            got["loss_percent"] = nft_cache[ns][end.interface]
        applied[key] = got
    not_applied = sorted(k for k in declared
                         if ends_present == 0 or any(k not in a for a in applied.values()))
    if ends_present and not_applied:
        warnings.append(f"link {link.id}: not applied: "
                        + ", ".join(f"{k}={declared[k]:g}" for k in not_applied))
    return {
        "id": link.id,
        "endpoints": [f"{e.node}:{e.interface}" for e in link.endpoints],
        "ipv4": [e.ipv4 for e in link.endpoints],
        "qkd": link.qkd is not None,
        "model": link.qkd_model,
        "label": link.qkd_label,
        "state": {2: "up", 1: "partial", 0: "missing"}[ends_present],
        "impairment": declared,
        "applied": applied,
        "not_applied": not_applied,
    }


def status(lab: Lab, runtime: str) -> dict[str, Any]:
    """Live state of the lab as a JSON-ready dict."""
    require_root()
    present = namespaces()
    br = bridge_name(lab)
    br_info = host_link(br)
    per_ns_links: dict[str, dict] = {}
    nodes = [_node(lab, name, present, per_ns_links) for name in lab.nodes]
    warnings: list[str] = []
    nft_cache: dict[str, dict[str, float]] = {}
    links_out = [_link(lab, link, per_ns_links, nft_cache, warnings) for link in lab.links]
    running = sum(1 for n in nodes if n["state"] == "running")
    return {
        "lab": lab.name, "runtime": runtime, "topology": str(lab.path),
        "lab_dir": str(lab.lab_dir),
        "state": "up" if running == len(nodes) and br_info else
                 ("down" if running == 0 and not br_info else "partial"),
        "bridge": {"name": br, "address": f"{lab.mgmt_gateway}/{lab.mgmt_subnet.prefixlen}",
                   "state": "present" if br_info else "missing"},
        "nodes": nodes, "links": links_out, "warnings": warnings,
    }


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows padded to column widths, the last column unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
            for r in rows]


def format_status(st: dict[str, Any]) -> str:
    """A table like `containerlab inspect`."""
    rows = [("NODE", "NAMESPACE", "ROLES", "MGMT IPV4", "STATE", "PROCS", "INTERFACES")]
    for n in st["nodes"]:
        ifaces = " ".join(f"{i['name']}({','.join(i['ipv4']) or '-'})"
                          for i in n["interfaces"]) or "-"
        rows.append((n["name"], n["namespace"], ",".join(n["roles"]), n["mgmt_ipv4"],
                     n["state"], str(n["processes"]), ifaces))
    lines = [f"lab {st['lab']} ({st['runtime']}): {st['state']}; bridge {st['bridge']['name']} "
             f"{st['bridge']['address']} {st['bridge']['state']}"]
    lines += _columns(rows)
    lines.append("")
    lrows = [("LINK", "ENDPOINTS", "QKD MODEL", "STATE", "IMPAIRMENT", "APPLIED", "NOT APPLIED")]
    for lk in st["links"]:
        imp = ",".join(f"{k}={v:g}" for k, v in lk["impairment"].items()) or "-"
        app = "; ".join(f"{e}:" + (",".join(f"{k}={v:g}" for k, v in a.items()) or "-")
                        for e, a in lk["applied"].items()) or "-"
        lrows.append((lk["id"], " ".join(lk["endpoints"]), lk.get("label") or "-", lk["state"],
                      imp, app,
                      ",".join(lk["not_applied"]) or "-"))
    lines += _columns(lrows)
    lines += [f"WARNING: {w}" for w in st["warnings"]]
    return "\n".join(lines)
