"""The project's rules for the management network and the nodes (roles, kind, mgmt address)."""

from __future__ import annotations

import ipaddress
from typing import Any

from qkdtwin.topology.model import CONTROL_ROLES, ROLE_LABEL, ROLES, Node


def mgmt_subnet(mgmt: dict) -> tuple[ipaddress.IPv4Network | None, list[str]]:
    """The lab's `mgmt.ipv4-subnet` (None when missing or unusable) and its problems."""
    raw_subnet = mgmt.get("ipv4-subnet")
    if raw_subnet is None:
        return None, ["mgmt.ipv4-subnet: required by qkdtwin (the lab's management subnet)"]
    try:
        subnet = ipaddress.IPv4Network(raw_subnet, strict=True)
    except ValueError as exc:
        return None, [f"mgmt.ipv4-subnet: {raw_subnet!r} is not an IPv4 network ({exc})"]
    if subnet.num_addresses < 4:
        return None, [f"mgmt.ipv4-subnet: {raw_subnet} is too small (at most /30)"]
    return subnet, []


def parse_roles(value: Any) -> tuple[list[str], list[str]]:
    """Return (roles, problems) for a `qkdtwin.role` label value."""
    if not isinstance(value, str) or not value.strip():
        return [], [f"must be a role or a comma list of roles ({', '.join(ROLES)})"]
    roles, problems = [], []
    for r in (x.strip() for x in value.split(",")):
        if r not in ROLES:
            problems.append(f"unknown role {r!r} (known: {', '.join(ROLES)})")
        elif r in roles:
            problems.append(f"role {r!r} listed twice")
        else:
            roles.append(r)
    return roles, problems


def merged_node(defaults: dict, kinds: dict, groups: dict, node: dict | None) -> dict:
    """containerlab's inheritance: defaults < kinds < groups < node (labels merged)."""
    node = node or {}
    layers = [defaults or {}]
    kind = node.get("kind") or (groups.get(node.get("group"), {}) or {}).get("kind") \
        or (defaults or {}).get("kind")
    if kind and kind in (kinds or {}):
        layers.append(kinds[kind] or {})
    if node.get("group") and node["group"] in (groups or {}):
        layers.append(groups[node["group"]] or {})
    layers.append(node)
    out: dict = {}
    labels: dict = {}
    for layer in layers:
        labels.update(layer.get("labels") or {})
        out.update(layer)
    out["labels"] = labels
    return out


def build_nodes(topo: dict, subnet: ipaddress.IPv4Network | None
                ) -> tuple[dict[str, Node], list[str]]:
    """Every node of `topology.nodes` (with inheritance applied) and the problems found."""
    defaults, kinds, groups = topo.get("defaults") or {}, topo.get("kinds") or {}, \
        topo.get("groups") or {}
    nodes: dict[str, Node] = {}
    problems: list[str] = []
    used_mgmt: dict[str, str] = {}
    for nname, raw in (topo.get("nodes") or {}).items():
        cfg = merged_node(defaults, kinds, groups, raw)
        where = f"node {nname}"
        labels = cfg["labels"]
        roles, rp = _roles_of(where, labels)
        problems += rp
        kind = cfg.get("kind") or "linux"
        if kind != "linux":
            problems.append(f"{where}: kind: {kind!r} not supported (qkdtwin nodes are linux)")
        mgmt_ip = cfg.get("mgmt-ipv4")
        if mgmt_ip is None:
            problems.append(f"{where}: mgmt-ipv4: missing (give each node its mgmt address)")
        elif subnet is not None:
            mgmt_ip, mp = _mgmt_address(nname, mgmt_ip, subnet, used_mgmt)
            problems += mp
        nodes[nname] = Node(name=nname, roles=tuple(roles), mgmt_ipv4=str(mgmt_ip),
                            kind=kind, image=cfg.get("image"), labels=dict(labels))
    return nodes, problems


def _roles_of(where: str, labels: dict) -> tuple[list[str], list[str]]:
    if ROLE_LABEL not in labels:
        return [], [f"{where}: labels.{ROLE_LABEL}: missing "
                    f"(one of {', '.join(ROLES)}, or a comma list)"]
    roles, rp = parse_roles(labels[ROLE_LABEL])
    return roles, [f"{where}: labels.{ROLE_LABEL}: {p}" for p in rp]


def _mgmt_address(nname: str, mgmt_ip: Any, subnet: ipaddress.IPv4Network,
                  used_mgmt: dict[str, str]) -> tuple[Any, list[str]]:
    """The node's bare mgmt address and its problems; records it in `used_mgmt` when free."""
    where = f"node {nname}"
    try:
        addr = ipaddress.IPv4Address(str(mgmt_ip).split("%")[0])
    except ValueError:
        return mgmt_ip, [f"{where}: mgmt-ipv4: {mgmt_ip!r} is not an IPv4 address"]
    gateway = str(next(subnet.hosts()))
    if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
        problem = (f"{where}: mgmt-ipv4: {addr} is not a host address of "
                   f"mgmt.ipv4-subnet {subnet}")
    elif str(addr) == gateway:
        problem = (f"{where}: mgmt-ipv4: {addr} is reserved for the lab "
                   f"bridge (first address of {subnet})")
    elif str(addr) in used_mgmt:
        problem = f"{where}: mgmt-ipv4: {addr} already used by node {used_mgmt[str(addr)]}"
    else:
        used_mgmt[str(addr)] = nname
        return str(addr), []
    return str(addr), [problem]


def role_problems(nodes: dict[str, Node], node_problems: list[str]) -> list[str]:
    """Lab-wide role rules: each control role exactly once, at least one km."""
    # They only make sense once every node's own label is valid.
    if not nodes or any(p.startswith("node ") and f"labels.{ROLE_LABEL}" in p
                        for p in node_problems):
        return []
    problems = []
    for role in CONTROL_ROLES:
        owners = [n.name for n in nodes.values() if role in n.roles]
        if not owners:
            problems.append(f"lab: labels.{ROLE_LABEL}: no node has role {role!r} "
                            f"(every control role is needed once)")
        elif len(owners) > 1:
            problems.append(f"lab: labels.{ROLE_LABEL}: role {role!r} on several nodes "
                            f"({', '.join(owners)}); exactly one is allowed")
    if not any("km" in n.roles for n in nodes.values()):
        problems.append(f"lab: labels.{ROLE_LABEL}: no node has role 'km'")
    return problems
