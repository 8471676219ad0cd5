"""The project's rules for links: endpoints, p2p addresses, `vars.qkd`, `vars.impairment`."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from qkdtwin.topology.model import MGMT_INTERFACE, Endpoint, Link, Node
from qkdtwin.topology.values import is_number, typename

# vars.impairment: key -> (minimum, maximum, minimum is exclusive)
IMPAIRMENT_RANGES: dict[str, tuple[float, float, bool]] = {
    "delay_ms": (0.0, 60_000.0, False),
    "jitter_ms": (0.0, 60_000.0, False),
    "loss_percent": (0.0, 100.0, False),
    "rate_mbit": (0.0, 100_000.0, True),
}
# Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Derived p2p addresses: one /30 per link without `ipv4`, numbered by link position.
DERIVED_P2P_POOL = ipaddress.ip_network("10.255.0.0/16")


def validate_impairment(d: Any) -> list[str]:
    """Problems of a link's `vars.impairment` mapping, each as `<field>: <message>`."""
    if not isinstance(d, dict):
        return [f": must be a mapping of {', '.join(IMPAIRMENT_RANGES)}, got {typename(d)}"]
    problems = []
    for key, value in d.items():
        if key not in IMPAIRMENT_RANGES:
            problems.append(f".{key}: unknown key (known: {', '.join(IMPAIRMENT_RANGES)})")
            continue
        lo, hi, lo_open = IMPAIRMENT_RANGES[key]
        if not is_number(value):
            problems.append(f".{key}: must be a number, got {typename(value)} {value!r}")
        elif value > hi or value < lo or (lo_open and value == lo):
            bracket = "(" if lo_open else "["
            problems.append(f".{key}: {value} out of range {bracket}{lo:g}, {hi:g}]")
    if not problems and d.get("jitter_ms") and not d.get("delay_ms"):
        problems.append(".jitter_ms: needs delay_ms (jitter varies the delay)")
    return problems


def validate_qkd_vars(d: Any) -> list[str]:
    """The quantum channel rules belong to qkdtwin.quantum.params (one message per problem)."""
    from qkdtwin.quantum.params import validate_qkd_vars as check

    return check(d)


def build_links(raw_links: list, nodes: dict[str, Node]) -> tuple[list[Link], list[str]]:
    """Every valid link of `topology.links` and the problems of all of them, in file order."""
    links: list[Link] = []
    problems: list[str] = []
    used_ifaces: dict[tuple[str, str], str] = {}
    used_p2p: dict[str, str] = {}
    for idx, raw in enumerate(raw_links):
        link, lp = build_link(idx, raw, nodes, used_ifaces, used_p2p)
        problems += lp
        if link is not None:
            if any(lk.id == link.id for lk in links):
                problems.append(f"link {link.id}: endpoints: a second link between the same "
                                f"nodes in the same order has the same id; reverse one of "
                                f"them or remove it")
            links.append(link)
    return links, problems


def build_link(idx: int, raw: dict, nodes: dict[str, Node],
               used_ifaces: dict[tuple[str, str], str],
               used_p2p: dict[str, str]) -> tuple[Link | None, list[str]]:
    """Link #idx (None when it has problems) and its problems; `used_*` collect what the
    links so far took (interfaces, p2p addresses) to find a second use."""
    ltype = raw.get("type", "veth")
    eps_raw = raw.get("endpoints")
    where = f"link #{idx + 1}"
    if ltype != "veth":
        return None, [f"{where}: type: {ltype!r} not supported (only veth links)"]
    if not isinstance(eps_raw, list) or len(eps_raw) != 2:
        return None, [f"{where}: endpoints: exactly two endpoints needed"]
    eps = [_parse_endpoint(e) for e in eps_raw]
    problems = [f"{where}: endpoints[{i}]: {eps_raw[i]!r} is not 'node:interface'"
                for i, e in enumerate(eps) if e is None]
    if problems:
        return None, problems
    (na, ia), (nb, ib) = eps  # type: ignore[misc]
    lid = f"{na}-{nb}"
    where = f"link {lid}"
    problems += _endpoint_problems(where, lid, ((na, ia), (nb, ib)), nodes, used_ifaces)
    addrs, derived, ap = _addresses(where, idx, raw, eps_raw)
    problems += ap
    for a in addrs:
        if a is None:
            continue
        bare = a.split("/")[0]
        if bare in used_p2p:
            problems.append(f"{where}: ipv4: {bare} already used by link {used_p2p[bare]}")
        used_p2p[bare] = lid
    lvars = raw.get("vars") or {}
    qkd, imp = lvars.get("qkd"), lvars.get("impairment")
    problems += _vars_problems(where, (na, nb), qkd, imp, nodes)
    if problems:
        return None, problems
    return Link(id=lid, a=Endpoint(na, ia, addrs[0]), b=Endpoint(nb, ib, addrs[1]),
                qkd=dict(qkd) if qkd is not None else None,
                impairment={k: float(v) for k, v in (imp or {}).items()},
                mtu=raw.get("mtu"), ipv4_derived=derived), []


def _parse_endpoint(raw: Any) -> tuple[str, str] | None:
    if isinstance(raw, str) and raw.count(":") == 1:
        node, iface = raw.split(":")
        if node and iface:
            return node, iface
    if isinstance(raw, dict) and isinstance(raw.get("node"), str) \
            and isinstance(raw.get("interface"), str):
        return raw["node"], raw["interface"]
    return None


def _endpoint_problems(where: str, lid: str, ends: tuple[tuple[str, str], ...],
                       nodes: dict[str, Node],
                       used_ifaces: dict[tuple[str, str], str]) -> list[str]:
    problems = []
    for n, i in ends:
        if n not in nodes:
            problems.append(f"{where}: endpoints: node {n!r} is not in topology.nodes")
        if i in (MGMT_INTERFACE, "lo"):
            problems.append(f"{where}: endpoints: {n}:{i}: {i} is reserved "
                            f"({'management' if i == MGMT_INTERFACE else 'loopback'})")
        elif not _IFNAME.match(i):
            problems.append(f"{where}: endpoints: {n}:{i}: not a valid interface name "
                            f"(letters, digits, '_.-', at most 15)")
        elif (n, i) in used_ifaces:
            problems.append(f"{where}: endpoints: {n}:{i} already used by link "
                            f"{used_ifaces[(n, i)]}")
        else:
            used_ifaces[(n, i)] = lid
    if ends[0][0] == ends[1][0]:
        problems.append(f"{where}: endpoints: both ends on node {ends[0][0]}")
    return problems


def _addresses(where: str, idx: int, raw: dict, eps_raw: list
               ) -> tuple[list[Any], bool, list[str]]:
    """(the two endpoint CIDRs or [None, None], derived from the pool?, problems)."""
    # Short form `ipv4: [a, b]`, or per endpoint in the extended form.
    ipv4 = raw.get("ipv4")
    if ipv4 is None and all(isinstance(e, dict) for e in eps_raw):
        ipv4 = [e.get("ipv4") for e in eps_raw]
        if ipv4 == [None, None]:
            ipv4 = None
    if ipv4 is None:
        net = list(DERIVED_P2P_POOL.subnets(new_prefix=30))[idx]
        hosts = list(net.hosts())
        return [f"{hosts[0]}/30", f"{hosts[1]}/30"], True, []
    addrs = list(ipv4)
    if len(addrs) != 2 or any(not a for a in addrs):
        return [None, None], False, [f"{where}: ipv4: give one address per endpoint "
                                     f"(two CIDRs)"]
    try:
        ifs = [ipaddress.IPv4Interface(a) for a in addrs]
    except ValueError as exc:
        return addrs, False, [f"{where}: ipv4: {exc}"]
    problems = []
    if ifs[0].network != ifs[1].network:
        problems.append(f"{where}: ipv4: {addrs[0]} and {addrs[1]} are not in "
                        f"the same subnet")
    elif ifs[0].ip == ifs[1].ip:
        problems.append(f"{where}: ipv4: both ends have {ifs[0].ip}")
    for i in ifs:
        if ifs[0].network.prefixlen < 31 and i.ip in (
                i.network.network_address, i.network.broadcast_address):
            problems.append(f"{where}: ipv4: {i} is not a host address")
    return addrs, False, problems


def _vars_problems(where: str, ends: tuple[str, str], qkd: Any, imp: Any,
                   nodes: dict[str, Node]) -> list[str]:
    problems: list[str] = []
    if qkd is not None:
        if not isinstance(qkd, dict):
            problems.append(f"{where}: vars.qkd: must be a mapping, got {typename(qkd)}")
        else:
            problems += [f"{where}: {_prefix_qkd_problem(p)}" for p in validate_qkd_vars(qkd)]
            for n in ends:
                if n in nodes and nodes[n].roles and "km" not in nodes[n].roles:
                    problems.append(f"{where}: vars.qkd: QKD links join km nodes only; "
                                    f"{n} has roles {','.join(nodes[n].roles)}")
    if imp is not None:
        problems += [f"{where}: vars.impairment{p}" for p in validate_impairment(imp)]
    return problems


def _prefix_qkd_problem(p: str) -> str:
    """Messages name the field as `qkd.<field>`; place them under the link's `vars.`."""
    p = str(p).strip()
    if p.startswith("vars."):
        return p
    return f"vars.{p}" if p.startswith("qkd") else f"vars.qkd.{p}"
