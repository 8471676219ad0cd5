"""The embedded `netns` runtime: a lab as network namespaces on this host.

- node -> namespace `clab-<lab>-<node>` with `lo` up and `eth0` (veth) in the lab bridge,
- lab -> management bridge (`bridge_name()`), holding the first address of the mgmt subnet,
- link -> veth pair created directly inside the two namespaces with the topology's names,
- `vars.impairment` -> netem when the kernel has it, else tbf (rate) + nftables (loss).

Every step inspects before it changes, so `up` is idempotent and repairs a partly built
lab. What `up` created is recorded in `clab-<lab>/runtime.json` so `down` also removes
nodes that were later deleted from the topology. Point-to-point addresses are left to
Ansible (role `common`, host var `qkdtwin_interfaces`), as with containerlab.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.topology import MGMT_INTERFACE, Lab, Link

Log = Callable[[str], None]

ETC_NETNS = Path("/etc/netns")
ETC_QKDTWIN = Path("/etc/qkdtwin")
RUN_NETNS = Path("/run/netns")
STATE_NAME = "runtime.json"
NFT_TABLE = "qkdtwin"  # inside each node's namespace: `inet qkdtwin`
LOSS_SCALE = 10000  # nft loss resolution: 0.01 %


class RuntimeFailure(UserError):
    """A system command failed while building or removing a lab."""


@dataclass
class UpResult:
    warnings: list[str] = field(default_factory=list)
    changes: int = 0


# --------------------------------------------------------------------------- helpers


def _run(argv: list[str], *, check: bool = True, input: str | None = None,
         ) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"command not found: {argv[0]} (install iproute2/nftables)") \
            from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(f"timed out: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeFailure(f"`{' '.join(argv)}` failed: {msg[-1] if msg else proc.returncode}")
    return proc


def _json(argv: list[str]) -> list[dict]:
    proc = _run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return []


def _ifname(prefix: str, *parts: str) -> str:
    """A stable host-side interface name of at most 15 characters."""
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return (prefix + digest)[:12]


def bridge_name(lab: Lab) -> str:
    """`qt-<lab>`, shortened with a hash when the lab name is long (IFNAMSIZ is 16)."""
    name = f"qt-{lab.name}"
    if len(name) <= 15:
        return name
    return f"qt-{lab.name[:7]}-{hashlib.sha1(lab.name.encode()).hexdigest()[:4]}"


def mgmt_host_ifname(lab: Lab, node: str) -> str:
    return _ifname("qtm", lab.name, node)


def namespaces() -> set[str]:
    return {e["name"] for e in _json(["ip", "-j", "netns", "list"])}


def _host_link(name: str) -> dict | None:
    info = _json(["ip", "-d", "-j", "link", "show", "dev", name])
    return info[0] if info else None


def _ns_links(ns: str) -> dict[str, dict]:
    return {e["ifname"]: e for e in _json(["ip", "-n", ns, "-d", "-j", "link", "show"])}


def _ns_addrs(ns: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in _json(["ip", "-n", ns, "-j", "addr", "show"]):
        out[e["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in e.get("addr_info", [])
                            if a.get("family") == "inet"]
    return out


def ns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the netns runtime needs root (network namespaces, veths, bridges)")
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            raise UserError(f"`{tool}` not found: install iproute2")


# --------------------------------------------------------------------------- state


def state_path(lab: Lab) -> Path:
    return lab.lab_dir / STATE_NAME


def load_state(lab: Lab) -> dict[str, Any]:
    try:
        data = json.loads(state_path(lab).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _save_state(lab: Lab, state: dict[str, Any]) -> None:
    lab.lab_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_path(lab).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(state_path(lab))


# --------------------------------------------------------------------------- up


def up(lab: Lab, log: Log = print) -> UpResult:
    """Create what is missing of the lab and repair what is broken; return warnings."""
    _require_root()
    _check_subnet(lab)
    result = UpResult()
    ns_names = [lab.namespace(n) for n in lab.nodes]
    state = load_state(lab)
    known = sorted(set(state.get("namespaces", [])) | set(ns_names))
    state.update({"runtime": "netns", "lab": lab.name, "topology": str(lab.path),
                  "bridge": bridge_name(lab), "namespaces": known})
    _save_state(lab, state)  # before any change, so `down` can clean up a failed `up`

    # ip netns exec bind-mounts /etc/netns/<ns>/qkdtwin only over an existing /etc/qkdtwin.
    if not ETC_QKDTWIN.is_dir():
        ETC_QKDTWIN.mkdir(parents=True, exist_ok=True)
        log(f"host: created empty {ETC_QKDTWIN} (mount point for per-node config)")

    _ensure_bridge(lab, log, result)
    existing = namespaces()
    for node in lab.nodes:
        _ensure_node(lab, node, existing, log, result)
    for link in lab.links:
        _ensure_link(lab, link, log, result)
    _apply_impairments(lab, log, result)

    state["warnings"] = result.warnings
    state["up_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _save_state(lab, state)
    log(f"up: {result.changes} change(s)" if result.changes else "up: nothing to change")
    return result


def _check_subnet(lab: Lab) -> None:
    """Refuse a subnet the host already routes elsewhere: the lab must not hijack traffic."""
    br = bridge_name(lab)
    for route in _json(["ip", "-j", "-4", "route", "show"]):
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


def _ensure_bridge(lab: Lab, log: Log, result: UpResult) -> None:
    br = bridge_name(lab)
    cidr = f"{lab.mgmt_gateway}/{lab.mgmt_subnet.prefixlen}"
    info = _host_link(br)
    if info is None:
        _run(["ip", "link", "add", "name", br, "type", "bridge"])
        log(f"bridge {br}: created")
        result.changes += 1
    elif info.get("linkinfo", {}).get("info_kind") != "bridge":
        raise UserError(f"host interface {br} exists and is not a bridge; remove it first")
    addrs = {f"{a['local']}/{a['prefixlen']}" for e in
             _json(["ip", "-j", "addr", "show", "dev", br]) for a in e.get("addr_info", [])
             if a.get("family") == "inet"}
    if cidr not in addrs:
        _run(["ip", "addr", "add", cidr, "dev", br])
        log(f"bridge {br}: address {cidr}")
        result.changes += 1
    if info is None or "UP" not in info.get("flags", []):
        _run(["ip", "link", "set", br, "up"])


def _ensure_node(lab: Lab, node: str, existing: set[str], log: Log, result: UpResult) -> None:
    ns = lab.namespace(node)
    n = lab.nodes[node]
    if ns not in existing:
        _run(["ip", "netns", "add", ns])
        log(f"node {node}: namespace {ns} created")
        result.changes += 1
    links = _ns_links(ns)
    if "UP" not in links.get("lo", {}).get("flags", []):
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    host_if = mgmt_host_ifname(lab, node)
    host_info = _host_link(host_if)
    if MGMT_INTERFACE not in links or host_info is None:
        # Half a pair cannot exist (veths die together), but a foreign eth0 could.
        if MGMT_INTERFACE in links:
            _run(["ip", "-n", ns, "link", "del", MGMT_INTERFACE])
        if host_info is not None:
            _run(["ip", "link", "del", host_if])
        _run(["ip", "link", "add", "name", host_if, "type", "veth",
              "peer", "name", MGMT_INTERFACE, "netns", ns])
        log(f"node {node}: mgmt veth {host_if} <-> {ns}:{MGMT_INTERFACE}")
        result.changes += 1
        host_info = _host_link(host_if)
    br = bridge_name(lab)
    if (host_info or {}).get("master") != br or "UP" not in (host_info or {}).get("flags", []):
        _run(["ip", "link", "set", host_if, "master", br, "up"])
        log(f"node {node}: {host_if} attached to bridge {br}")
        result.changes += 1
    want = f"{n.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}"
    have = _ns_addrs(ns).get(MGMT_INTERFACE, [])
    for cidr in have:
        if cidr != want:  # a stale address from an older topology
            _run(["ip", "-n", ns, "addr", "del", cidr, "dev", MGMT_INTERFACE])
    if want not in have:
        _run(["ip", "-n", ns, "addr", "add", want, "dev", MGMT_INTERFACE])
        log(f"node {node}: {MGMT_INTERFACE} {want}")
        result.changes += 1
    if "UP" not in _ns_links(ns).get(MGMT_INTERFACE, {}).get("flags", []):
        _run(["ip", "-n", ns, "link", "set", MGMT_INTERFACE, "up"])
    etc = ETC_NETNS / ns / "qkdtwin"
    if not etc.is_dir():
        etc.mkdir(parents=True, exist_ok=True)
        log(f"node {node}: config dir {etc} (seen as {ETC_QKDTWIN} inside the node)")
        result.changes += 1


def _paired(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return False
    if a.get("linkinfo", {}).get("info_kind") != "veth" or \
            b.get("linkinfo", {}).get("info_kind") != "veth":
        return False
    return a.get("link_index") == b.get("ifindex") and b.get("link_index") == a.get("ifindex")


def _ensure_link(lab: Lab, link: Link, log: Log, result: UpResult) -> None:
    na, nb = lab.namespace(link.a.node), lab.namespace(link.b.node)
    la = _ns_links(na).get(link.a.interface)
    lb = _ns_links(nb).get(link.b.interface)
    if not _paired(la, lb):
        for ns, ifname, info in ((na, link.a.interface, la), (nb, link.b.interface, lb)):
            if info is not None:
                _run(["ip", "-n", ns, "link", "del", ifname], check=False)
        argv = ["ip", "link", "add", "name", link.a.interface, "netns", na]
        if link.mtu:
            argv += ["mtu", str(link.mtu)]
        argv += ["type", "veth", "peer", "name", link.b.interface, "netns", nb]
        if link.mtu:
            argv += ["mtu", str(link.mtu)]
        _run(argv)
        log(f"link {link.id}: veth {link.a.node}:{link.a.interface} <-> "
            f"{link.b.node}:{link.b.interface}")
        result.changes += 1
        la = _ns_links(na).get(link.a.interface)
        lb = _ns_links(nb).get(link.b.interface)
    for ns, ifname, info in ((na, link.a.interface, la), (nb, link.b.interface, lb)):
        if "UP" not in (info or {}).get("flags", []):
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])


# --------------------------------------------------------------------------- impairments


def _netem_args(imp: dict[str, float]) -> list[str]:
    args = ["netem"]
    if imp.get("delay_ms"):
        args += ["delay", f"{imp['delay_ms']:g}ms"]
        if imp.get("jitter_ms"):
            args += [f"{imp['jitter_ms']:g}ms"]
    if imp.get("loss_percent"):
        args += ["loss", f"{imp['loss_percent']:g}%"]
    if imp.get("rate_mbit"):
        args += ["rate", f"{imp['rate_mbit']:g}mbit"]
    return args


def _tbf_args(rate_mbit: float) -> list[str]:
    rate_bytes = rate_mbit * 1e6 / 8
    # Burst: 10 ms worth of traffic, at least a few MTU-sized packets.
    burst = max(int(rate_bytes / 100), 4 * 1514)
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "50ms"]


def _root_qdisc(ns: str, ifname: str) -> dict | None:
    for q in _json(["tc", "-n", ns, "-j", "qdisc", "show", "dev", ifname]):
        if q.get("root"):
            return q
    return None


def _apply_impairments(lab: Lab, log: Log, result: UpResult) -> None:
    netem: bool | None = None  # unknown until the first attempt
    loss_rules: dict[str, list[str]] = {lab.namespace(n): [] for n in lab.nodes}
    for link in lab.links:
        imp = {k: v for k, v in link.impairment.items() if v}
        missing: set[str] = set()
        for end in link.endpoints:
            ns = lab.namespace(end.node)
            where = f"{end.node}:{end.interface}"
            current = _root_qdisc(ns, end.interface)
            ours = current is not None and current.get("kind") in ("netem", "tbf")
            if not imp:
                if ours:
                    _run(["tc", "-n", ns, "qdisc", "del", "dev", end.interface, "root"])
                    log(f"link {link.id}: {where}: impairment removed")
                continue
            if netem is not False:
                proc = _run(["tc", "-n", ns, "qdisc", "replace", "dev", end.interface, "root",
                             *_netem_args(imp)], check=False)
                if proc.returncode == 0:
                    netem = True
                    log(f"link {link.id}: {where}: netem {' '.join(_netem_args(imp)[1:])}")
                    continue
                if netem is None and "unknown" not in proc.stderr.lower():
                    raise RuntimeFailure(f"tc netem on {where} failed: {proc.stderr.strip()}")
                netem = False
            # Fallback without sch_netem: tbf for rate, nftables for loss, nothing for delay.
            if imp.get("rate_mbit"):
                have = _applied_from_qdisc(current) if current and \
                    current.get("kind") == "tbf" else {}
                if abs(have.get("rate_mbit", -1) - imp["rate_mbit"]) > 1e-6 * imp["rate_mbit"]:
                    _run(["tc", "-n", ns, "qdisc", "replace", "dev", end.interface, "root",
                          *_tbf_args(imp["rate_mbit"])])
                    log(f"link {link.id}: {where}: tbf rate {imp['rate_mbit']:g}mbit")
                    result.changes += 1
            elif ours:
                _run(["tc", "-n", ns, "qdisc", "del", "dev", end.interface, "root"])
            if imp.get("loss_percent"):
                n = round(imp["loss_percent"] * LOSS_SCALE / 100)
                loss_rules[ns].append(
                    f'oifname "{end.interface}" numgen random mod {LOSS_SCALE} < {n} drop '
                    f'comment "qkdtwin loss {imp["loss_percent"]:g}% link {link.id}"')
            missing |= {k for k in ("delay_ms", "jitter_ms") if k in imp}
        if missing:
            what = ", ".join(f"{k}={imp[k]:g}" for k in sorted(missing))
            result.warnings.append(f"link {link.id}: {what} not applied: this kernel has no "
                                   f"sch_netem (rate and loss are applied with tbf/nftables)")
    _apply_loss_tables(lab, loss_rules, log, result)


def _apply_loss_tables(lab: Lab, rules: dict[str, list[str]], log: Log,
                       result: UpResult) -> None:
    have_nft = shutil.which("nft") is not None
    for ns, lines in rules.items():
        if not have_nft:
            if lines:
                result.warnings.append(f"{ns}: loss not applied: `nft` (nftables) is not "
                                       f"installed")
            continue
        if not lines:
            # Drop a table left from an earlier topology (no error if there is none).
            _run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE],
                 check=False)
            continue
        body = "\n".join(f"    {r}" for r in lines)
        script = (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                  f"table inet {NFT_TABLE} {{\n  chain impair_out {{\n"
                  f"    type filter hook postrouting priority 0; policy accept;\n"
                  f"{body}\n  }}\n}}\n")
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script)
        log(f"{ns}: nftables loss rules: {len(lines)}")


# --------------------------------------------------------------------------- down


def _lab_pids(nss: list[str]) -> dict[str, list[int]]:
    me = os.getpid()
    return {ns: [p for p in ns_pids(ns) if p != me] for ns in nss}


def _stop_processes(nss: list[str], log: Log, grace: float = 5.0) -> None:
    """SIGTERM every process of the lab at once (supervisord stops its children), wait,
    then SIGKILL what is left."""
    first = {ns: pids for ns, pids in _lab_pids(nss).items() if pids}
    if not first:
        return
    left = first
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        for pids in left.values():
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while True:
            left = {ns: pids for ns, pids in _lab_pids(list(left)).items() if pids}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not left:
            break
    for ns, pids in sorted(first.items()):
        log(f"{ns}: stopped {len(pids)} process(es)")
    if left:
        raise RuntimeFailure(f"processes survived SIGKILL: {left}")


def down(lab: Lab, log: Log = print) -> None:
    """Remove every trace of the lab on the host except its artefacts directory."""
    _require_root()
    state = load_state(lab)
    known = set(state.get("namespaces", [])) | {lab.namespace(n) for n in lab.nodes}
    # Only names of this lab: a stale state file must not make us delete another lab's.
    known = {ns for ns in known if ns.startswith(f"clab-{lab.name}-")}
    present = namespaces() & known
    _stop_processes(sorted(present), log)
    for ns in sorted(present):
        _run(["ip", "netns", "del", ns])
        log(f"{ns}: namespace removed (with its veths and nftables table)")
    for node in lab.nodes:  # host ends of mgmt veths normally die with their peers
        host_if = mgmt_host_ifname(lab, node)
        if _host_link(host_if) is not None:
            _run(["ip", "link", "del", host_if], check=False)
    for br in {bridge_name(lab), state.get("bridge") or bridge_name(lab)}:
        info = _host_link(br)
        if info is not None and info.get("linkinfo", {}).get("info_kind") == "bridge":
            _run(["ip", "link", "del", br])
            log(f"bridge {br}: removed")
    for ns in sorted(known):
        d = ETC_NETNS / ns
        if d.exists():
            shutil.rmtree(d)
            log(f"{d}: removed")
    _remove_if_empty(ETC_NETNS)
    if ETC_QKDTWIN.is_dir() and not any(ETC_NETNS.glob("*/qkdtwin")):
        _remove_if_empty(ETC_QKDTWIN)
    if state_path(lab).exists():
        state_path(lab).unlink()
    if lab.lab_dir.exists():
        log(f"down: lab {lab.name} removed; artefacts kept in {lab.lab_dir} "
            f"(inventory, pki, node data, logs)")
    else:
        log(f"down: lab {lab.name} removed")


def _remove_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- status


def _applied_from_qdisc(q: dict | None) -> dict[str, float]:
    if not q:
        return {}
    opts = q.get("options", {})
    if q.get("kind") == "tbf":
        return {"rate_mbit": round(opts.get("rate", 0) * 8 / 1e6, 6)}
    if q.get("kind") == "netem":
        out: dict[str, float] = {}
        if opts.get("delay"):
            out["delay_ms"] = opts["delay"].get("delay", 0) * 1000
            if opts["delay"].get("jitter"):
                out["jitter_ms"] = opts["delay"]["jitter"] * 1000
        if opts.get("loss-random"):
            out["loss_percent"] = opts["loss-random"].get("loss", 0) * 100
        if opts.get("rate"):
            out["rate_mbit"] = opts["rate"].get("rate", 0) * 8 / 1e6
        return out
    return {}


_LOSS_RULE = re.compile(r'oifname "([^"]+)" numgen random mod (\d+) < (\d+) drop')


def _nft_loss(ns: str) -> dict[str, float]:
    if not shutil.which("nft"):
        return {}
    proc = _run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", NFT_TABLE],
                check=False)
    if proc.returncode != 0:
        return {}
    return {m[1]: int(m[3]) * 100 / int(m[2]) for m in _LOSS_RULE.finditer(proc.stdout)}


def status(lab: Lab) -> dict[str, Any]:
    """Live state of the lab, like `containerlab inspect`, as a JSON-ready dict."""
    _require_root()
    present = namespaces()
    br = bridge_name(lab)
    br_info = _host_link(br)
    nodes, per_ns_links = [], {}
    for n in lab.nodes.values():
        ns = lab.namespace(n.name)
        running = ns in present
        ifaces = []
        if running:
            links = per_ns_links[ns] = _ns_links(ns)
            addrs = _ns_addrs(ns)
            for name, info in links.items():
                if name == "lo":
                    continue
                ifaces.append({"name": name, "state": info.get("operstate", "UNKNOWN"),
                               "ipv4": addrs.get(name, [])})
        nodes.append({
            "name": n.name, "namespace": ns, "roles": list(n.roles),
            "mgmt_ipv4": f"{n.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}",
            "state": "running" if running else "missing",
            "processes": len(ns_pids(ns)) if running else 0,
            "interfaces": ifaces,
        })
    links_out, warnings = [], []
    nft_cache: dict[str, dict[str, float]] = {}
    for link in lab.links:
        declared = {k: v for k, v in link.impairment.items() if v}
        applied: dict[str, dict[str, float]] = {}
        ends_present = 0
        for end in link.endpoints:
            ns = lab.namespace(end.node)
            key = f"{end.node}:{end.interface}"
            if end.interface not in per_ns_links.get(ns, {}):
                continue
            ends_present += 1
            got = _applied_from_qdisc(_root_qdisc(ns, end.interface))
            if ns not in nft_cache:
                nft_cache[ns] = _nft_loss(ns)
            if end.interface in nft_cache[ns]:
                got["loss_percent"] = nft_cache[ns][end.interface]
            applied[key] = got
        not_applied = sorted(k for k in declared
                             if ends_present == 0 or any(k not in a for a in applied.values()))
        if ends_present and not_applied:
            warnings.append(f"link {link.id}: not applied: "
                            + ", ".join(f"{k}={declared[k]:g}" for k in not_applied))
        links_out.append({
            "id": link.id,
            "endpoints": [f"{e.node}:{e.interface}" for e in link.endpoints],
            "ipv4": [e.ipv4 for e in link.endpoints],
            "qkd": link.qkd is not None,
            "state": {2: "up", 1: "partial", 0: "missing"}[ends_present],
            "impairment": declared,
            "applied": applied,
            "not_applied": not_applied,
        })
    running = sum(1 for n in nodes if n["state"] == "running")
    return {
        "lab": lab.name, "runtime": "netns", "topology": str(lab.path),
        "lab_dir": str(lab.lab_dir),
        "state": "up" if running == len(nodes) and br_info else
                 ("down" if running == 0 and not br_info else "partial"),
        "bridge": {"name": br, "address": f"{lab.mgmt_gateway}/{lab.mgmt_subnet.prefixlen}",
                   "state": "present" if br_info else "missing"},
        "nodes": nodes, "links": links_out, "warnings": warnings,
    }


def format_status(st: dict[str, Any]) -> str:
    """A table like `containerlab inspect`."""
    rows = [("NODE", "NAMESPACE", "ROLES", "MGMT IPV4", "STATE", "PROCS", "INTERFACES")]
    for n in st["nodes"]:
        ifaces = " ".join(f"{i['name']}({','.join(i['ipv4']) or '-'})"
                          for i in n["interfaces"]) or "-"
        rows.append((n["name"], n["namespace"], ",".join(n["roles"]), n["mgmt_ipv4"],
                     n["state"], str(n["processes"]), ifaces))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"lab {st['lab']} ({st['runtime']}): {st['state']}; bridge {st['bridge']['name']} "
             f"{st['bridge']['address']} {st['bridge']['state']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
              for r in rows]
    lines.append("")
    lrows = [("LINK", "ENDPOINTS", "STATE", "IMPAIRMENT", "APPLIED", "NOT APPLIED")]
    for lk in st["links"]:
        imp = ",".join(f"{k}={v:g}" for k, v in lk["impairment"].items()) or "-"
        app = "; ".join(f"{e}:" + (",".join(f"{k}={v:g}" for k, v in a.items()) or "-")
                        for e, a in lk["applied"].items()) or "-"
        lrows.append((lk["id"], " ".join(lk["endpoints"]), lk["state"], imp, app,
                      ",".join(lk["not_applied"]) or "-"))
    widths = [max(len(r[i]) for r in lrows) for i in range(len(lrows[0]) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
              for r in lrows]
    lines += [f"WARNING: {w}" for w in st["warnings"]]
    return "\n".join(lines)
