"""The lab model: load a containerlab topology (`labs/<lab>.clab.yml`) and its users file.

Validation runs in three layers, and every problem becomes one line that names the node,
link or user and the field:

1. YAML (anchors and merge keys are resolved by the loader),
2. containerlab's JSON schema (`schemas/clab.schema.json`; its `\\p{..}` patterns need the
   `regex` package, so the `pattern` keyword is re-implemented with it),
3. the project's conventions (roles, `vars.qkd`, `vars.impairment`, addresses, users).

`load_lab()` returns a clean `Lab` or raises `LabInvalid` (a `UserError`) holding the list
of problems.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import regex
import yaml

from qkdtwin.errors import UserError

ROLES = ("km", "sdn", "access", "admission", "routing", "monitor", "broker", "app")
# Roles that must exist exactly once in a lab (the control plane and the broker).
CONTROL_ROLES = ("sdn", "access", "admission", "routing", "monitor", "broker")
ROLE_LABEL = "qkdtwin.role"
MGMT_INTERFACE = "eth0"
BROKER_PORT = 8883

# vars.impairment: key -> (minimum, maximum, minimum is exclusive)
IMPAIRMENT_RANGES: dict[str, tuple[float, float, bool]] = {
    "delay_ms": (0.0, 60_000.0, False),
    "jitter_ms": (0.0, 60_000.0, False),
    "loss_percent": (0.0, 100.0, False),
    "rate_mbit": (0.0, 100_000.0, True),
}

USER_STATUSES = ("active", "disabled")
SLA_FIELDS = ("max_priority", "max_key_rate", "max_key_size", "max_sessions",
              "allowed_destinations")
# Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Derived p2p addresses: one /30 per link without `ipv4`, numbered by link position.
DERIVED_P2P_POOL = ipaddress.ip_network("10.255.0.0/16")


class LabInvalid(UserError):
    """A lab file (or its users file) breaks one or more rules; `problems` lists them."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{Path(path).name} is invalid, {len(problems)} problem(s) "
                         f"(run `qkdtwin validate`):\n{lines}")


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str
    ipv4: str | None = None  # CIDR, e.g. 10.10.1.1/30

    @property
    def address(self) -> str | None:
        """The bare address of `ipv4`."""
        return self.ipv4.split("/")[0] if self.ipv4 else None


@dataclass(frozen=True)
class Link:
    id: str  # "<a>-<b>" from the endpoints in file order
    a: Endpoint
    b: Endpoint
    qkd: dict[str, Any] | None = None  # None: classical-only link
    impairment: dict[str, float] = field(default_factory=dict)
    mtu: int | None = None
    ipv4_derived: bool = False

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)

    def end(self, node: str) -> Endpoint:
        return self.a if self.a.node == node else self.b

    def peer(self, node: str) -> Endpoint:
        return self.b if self.a.node == node else self.a


@dataclass(frozen=True)
class Node:
    name: str
    roles: tuple[str, ...]
    mgmt_ipv4: str  # bare address
    kind: str = "linux"
    image: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Application:
    sae_id: str
    km: str


@dataclass(frozen=True)
class User:
    name: str
    status: str
    sla: dict[str, Any]
    applications: tuple[Application, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sla": dict(self.sla),
            "applications": [{"sae_id": a.sae_id, "km": a.km} for a in self.applications],
        }


@dataclass
class Lab:
    name: str
    path: Path  # the topology file (absolute)
    mgmt_network: str
    mgmt_subnet: ipaddress.IPv4Network
    nodes: dict[str, Node]
    links: list[Link]
    users: list[User]
    users_path: Path | None  # None when the lab has no users file

    @property
    def lab_dir(self) -> Path:
        """Artefacts directory, like containerlab's: `clab-<lab>/` beside the topology."""
        return self.path.parent / f"clab-{self.name}"

    @property
    def mgmt_gateway(self) -> str:
        """The host's address on the lab bridge: first address of the mgmt subnet."""
        return str(next(self.mgmt_subnet.hosts()))

    def namespace(self, node: str) -> str:
        return f"clab-{self.name}-{node}"

    def nodes_with_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes.values() if role in n.roles]

    @property
    def elements(self) -> dict[str, str]:
        """Control role -> the node that runs it."""
        out: dict[str, str] = {}
        for role in CONTROL_ROLES:
            nodes = self.nodes_with_role(role)
            if nodes:
                out[role] = nodes[0].name
        return out

    @property
    def broker(self) -> Node:
        return self.nodes_with_role("broker")[0]

    @property
    def qkd_links(self) -> list[Link]:
        return [lk for lk in self.links if lk.qkd is not None]

    def links_of(self, node: str) -> list[Link]:
        return [lk for lk in self.links if node in (lk.a.node, lk.b.node)]


# --------------------------------------------------------------------------- loading


def resolve_lab_path(ref: str | Path) -> Path:
    """Accept a path to a `.clab.yml` file or a lab name (looked up in `./labs/`)."""
    p = Path(ref)
    candidates = [p]
    if p.suffix not in (".yml", ".yaml"):
        candidates += [Path("labs") / f"{ref}.clab.yml", Path("labs") / f"{ref}.clab.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise UserError(f"no such lab: {ref} (give a labs/<lab>.clab.yml path or a lab name)")


def users_path_for(topology: Path) -> Path:
    """`labs/x.clab.yml` -> `labs/x.users.yml`."""
    name = topology.name
    for suffix in (".clab.yml", ".clab.yaml", ".yml", ".yaml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return topology.with_name(f"{name}.users.yml")


def load_lab(ref: str | Path) -> Lab:
    """Load and validate a lab; raise `LabInvalid` listing every problem."""
    path = resolve_lab_path(ref)
    lab, problems = check_lab(path)
    if problems or lab is None:
        raise LabInvalid(path, problems)
    return lab


def check_lab(path: Path) -> tuple[Lab | None, list[str]]:
    """Validate a lab file; return (lab or None, problems). Never raises for bad content."""
    path = Path(path)
    data, problems = _read_yaml(path)
    if not problems:
        problems = schema_problems(data)
    if problems:
        # Conventions assume a schema-valid structure; report the lower layer first.
        return None, [f"{path.name}: {p}" for p in problems]
    lab, problems, nodes = _build(path, data)
    problems = [f"{path.name}: {p}" for p in problems]
    upath = users_path_for(path)
    users: list[User] = []
    if upath.exists():
        udata, uproblems = _read_yaml(upath)
        if not uproblems:
            users, uproblems = _build_users(udata, nodes)
        problems += [f"{upath.name}: {p}" for p in uproblems]
    if lab is not None:
        lab.users = users
        lab.users_path = upath if upath.exists() else None
    return (lab if not problems else None), problems


def _read_yaml(path: Path) -> tuple[Any, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [f"cannot read: {exc.strerror}"]
    except UnicodeDecodeError:
        return None, ["not UTF-8 text"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, [f"YAML error{where}: {what}"]
    if not isinstance(data, dict):
        return None, [f"top level must be a mapping, got {_typename(data)}"]
    return data, []


# --------------------------------------------------------------------------- schema


def _regex_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterable[Any]:
    """JSON schema `pattern` with the `regex` module (understands `\\p{L}` and `\\p{N}`)."""
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_VALIDATOR: Any = None


def _schema_validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        text = resources.files("qkdtwin").joinpath("schemas", "clab.schema.json").read_text()
        schema = json.loads(text)
        base = jsonschema.validators.validator_for(schema)
        cls = jsonschema.validators.extend(base, {"pattern": _regex_pattern})
        _VALIDATOR = cls(schema)
    return _VALIDATOR


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def schema_problems(data: Any) -> list[str]:
    """containerlab schema errors, one line each, located as `schema: <path>: <message>`."""
    problems = []
    for err in sorted(_schema_validator().iter_errors(data), key=lambda e: list(e.path)):
        # For anyOf/oneOf (links, nodes) report the most relevant sub-error.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        problems.append(f"schema: {_json_path(best.absolute_path)}: {best.message}")
    return problems


# --------------------------------------------------------------------------- conventions


def _typename(v: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "nothing",
            bool: "boolean", int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _parse_roles(value: Any) -> tuple[list[str], list[str]]:
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


def _merged_node(defaults: dict, kinds: dict, groups: dict, node: dict | None) -> dict:
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


def _parse_endpoint(raw: Any) -> tuple[str, str] | None:
    if isinstance(raw, str) and raw.count(":") == 1:
        node, iface = raw.split(":")
        if node and iface:
            return node, iface
    if isinstance(raw, dict) and isinstance(raw.get("node"), str) \
            and isinstance(raw.get("interface"), str):
        return raw["node"], raw["interface"]
    return None


def validate_impairment(d: Any) -> list[str]:
    """Problems of a link's `vars.impairment` mapping, each as `<field>: <message>`."""
    if not isinstance(d, dict):
        return [f": must be a mapping of {', '.join(IMPAIRMENT_RANGES)}, got {_typename(d)}"]
    problems = []
    for key, value in d.items():
        if key not in IMPAIRMENT_RANGES:
            problems.append(f".{key}: unknown key (known: {', '.join(IMPAIRMENT_RANGES)})")
            continue
        lo, hi, lo_open = IMPAIRMENT_RANGES[key]
        if not _is_number(value):
            problems.append(f".{key}: must be a number, got {_typename(value)} {value!r}")
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


def _prefix_qkd_problem(p: str) -> str:
    """Messages name the field as `qkd.<field>`; place them under the link's `vars.`."""
    p = str(p).strip()
    if p.startswith("vars."):
        return p
    return f"vars.{p}" if p.startswith("qkd") else f"vars.qkd.{p}"


def _build(path: Path, data: dict) -> tuple[Lab | None, list[str], dict[str, Node]]:
    """The Lab (None when there are problems), the problems, and the nodes as parsed."""
    problems: list[str] = []
    name = data["name"]
    topo = data.get("topology") or {}
    raw_nodes: dict = topo.get("nodes") or {}
    defaults, kinds, groups = topo.get("defaults") or {}, topo.get("kinds") or {}, \
        topo.get("groups") or {}

    # --- management network
    mgmt = data.get("mgmt") or {}
    subnet = None
    raw_subnet = mgmt.get("ipv4-subnet")
    if raw_subnet is None:
        problems.append("mgmt.ipv4-subnet: required by qkdtwin (the lab's management subnet)")
    else:
        try:
            subnet = ipaddress.IPv4Network(raw_subnet, strict=True)
            if subnet.num_addresses < 4:
                problems.append(f"mgmt.ipv4-subnet: {raw_subnet} is too small (at most /30)")
                subnet = None
        except ValueError as exc:
            problems.append(f"mgmt.ipv4-subnet: {raw_subnet!r} is not an IPv4 network ({exc})")

    if not raw_nodes:
        problems.append("topology.nodes: a lab needs nodes")

    # --- nodes
    nodes: dict[str, Node] = {}
    used_mgmt: dict[str, str] = {}
    gateway = str(next(subnet.hosts())) if subnet else None
    for nname, raw in raw_nodes.items():
        cfg = _merged_node(defaults, kinds, groups, raw)
        where = f"node {nname}"
        labels = cfg["labels"]
        roles: list[str] = []
        if ROLE_LABEL not in labels:
            problems.append(f"{where}: labels.{ROLE_LABEL}: missing "
                            f"(one of {', '.join(ROLES)}, or a comma list)")
        else:
            roles, rp = _parse_roles(labels[ROLE_LABEL])
            problems += [f"{where}: labels.{ROLE_LABEL}: {p}" for p in rp]
        kind = cfg.get("kind") or "linux"
        if kind != "linux":
            problems.append(f"{where}: kind: {kind!r} not supported (qkdtwin nodes are linux)")
        mgmt_ip = cfg.get("mgmt-ipv4")
        if mgmt_ip is None:
            problems.append(f"{where}: mgmt-ipv4: missing (give each node its mgmt address)")
        elif subnet is not None:
            try:
                addr = ipaddress.IPv4Address(str(mgmt_ip).split("%")[0])
            except ValueError:
                problems.append(f"{where}: mgmt-ipv4: {mgmt_ip!r} is not an IPv4 address")
            else:
                if addr not in subnet or addr in (subnet.network_address,
                                                  subnet.broadcast_address):
                    problems.append(f"{where}: mgmt-ipv4: {addr} is not a host address of "
                                    f"mgmt.ipv4-subnet {subnet}")
                elif str(addr) == gateway:
                    problems.append(f"{where}: mgmt-ipv4: {addr} is reserved for the lab "
                                    f"bridge (first address of {subnet})")
                elif str(addr) in used_mgmt:
                    problems.append(f"{where}: mgmt-ipv4: {addr} already used by node "
                                    f"{used_mgmt[str(addr)]}")
                else:
                    used_mgmt[str(addr)] = nname
                mgmt_ip = str(addr)
        nodes[nname] = Node(name=nname, roles=tuple(roles), mgmt_ipv4=str(mgmt_ip),
                            kind=kind, image=cfg.get("image"), labels=dict(labels))

    # --- roles across the lab
    # Lab-wide role rules only make sense once every node's own label is valid.
    if nodes and not any(p.startswith("node ") and f"labels.{ROLE_LABEL}" in p
                         for p in problems):
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

    # --- links
    links: list[Link] = []
    used_ifaces: dict[tuple[str, str], str] = {}
    used_p2p: dict[str, str] = {}
    for idx, raw in enumerate(topo.get("links") or []):
        link, lp = _build_link(idx, raw, nodes, used_ifaces, used_p2p)
        problems += lp
        if link is not None:
            if any(lk.id == link.id for lk in links):
                problems.append(f"link {link.id}: endpoints: a second link between the same "
                                f"nodes in the same order has the same id; reverse one of "
                                f"them or remove it")
            links.append(link)

    if problems or subnet is None:
        return None, problems, nodes
    return Lab(name=name, path=path.resolve(), mgmt_network=mgmt.get("network") or
               f"clab-{name}", mgmt_subnet=subnet, nodes=nodes, links=links, users=[],
               users_path=None), [], nodes


def _build_link(idx: int, raw: dict, nodes: dict[str, Node],
                used_ifaces: dict[tuple[str, str], str],
                used_p2p: dict[str, str]) -> tuple[Link | None, list[str]]:
    problems: list[str] = []
    ltype = raw.get("type", "veth")
    eps_raw = raw.get("endpoints")
    where = f"link #{idx + 1}"
    if ltype != "veth":
        return None, [f"{where}: type: {ltype!r} not supported (only veth links)"]
    if not isinstance(eps_raw, list) or len(eps_raw) != 2:
        return None, [f"{where}: endpoints: exactly two endpoints needed"]
    eps = [_parse_endpoint(e) for e in eps_raw]
    for i, e in enumerate(eps):
        if e is None:
            problems.append(f"{where}: endpoints[{i}]: {eps_raw[i]!r} is not 'node:interface'")
    if problems:
        return None, problems
    (na, ia), (nb, ib) = eps  # type: ignore[misc]
    lid = f"{na}-{nb}"
    where = f"link {lid}"
    for n, i in ((na, ia), (nb, ib)):
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
    if na == nb:
        problems.append(f"{where}: endpoints: both ends on node {na}")

    # Endpoint addresses: short form `ipv4: [a, b]`, or per endpoint in the extended form.
    ipv4 = raw.get("ipv4")
    if ipv4 is None and all(isinstance(e, dict) for e in eps_raw):
        ipv4 = [e.get("ipv4") for e in eps_raw]
        if ipv4 == [None, None]:
            ipv4 = None
    derived = False
    if ipv4 is None:
        net = list(DERIVED_P2P_POOL.subnets(new_prefix=30))[idx]
        hosts = list(net.hosts())
        addrs = [f"{hosts[0]}/30", f"{hosts[1]}/30"]
        derived = True
    else:
        addrs = list(ipv4)
        if len(addrs) != 2 or any(not a for a in addrs):
            problems.append(f"{where}: ipv4: give one address per endpoint (two CIDRs)")
            addrs = [None, None]
        else:
            try:
                ifs = [ipaddress.IPv4Interface(a) for a in addrs]
            except ValueError as exc:
                problems.append(f"{where}: ipv4: {exc}")
                ifs = []
            if ifs:
                if ifs[0].network != ifs[1].network:
                    problems.append(f"{where}: ipv4: {addrs[0]} and {addrs[1]} are not in "
                                    f"the same subnet")
                elif ifs[0].ip == ifs[1].ip:
                    problems.append(f"{where}: ipv4: both ends have {ifs[0].ip}")
                for i in ifs:
                    if ifs[0].network.prefixlen < 31 and i.ip in (
                            i.network.network_address, i.network.broadcast_address):
                        problems.append(f"{where}: ipv4: {i} is not a host address")
    for a in addrs:
        if a is None:
            continue
        bare = a.split("/")[0]
        if bare in used_p2p:
            problems.append(f"{where}: ipv4: {bare} already used by link {used_p2p[bare]}")
        used_p2p[bare] = lid

    lvars = raw.get("vars") or {}
    qkd = lvars.get("qkd")
    imp = lvars.get("impairment")
    if qkd is not None:
        if not isinstance(qkd, dict):
            problems.append(f"{where}: vars.qkd: must be a mapping, got {_typename(qkd)}")
        else:
            problems += [f"{where}: {_prefix_qkd_problem(p)}" for p in validate_qkd_vars(qkd)]
            for n in (na, nb):
                if n in nodes and nodes[n].roles and "km" not in nodes[n].roles:
                    problems.append(f"{where}: vars.qkd: QKD links join km nodes only; "
                                    f"{n} has roles {','.join(nodes[n].roles)}")
    if imp is not None:
        problems += [f"{where}: vars.impairment{p}" for p in validate_impairment(imp)]
    if problems:
        return None, problems
    return Link(id=lid, a=Endpoint(na, ia, addrs[0]), b=Endpoint(nb, ib, addrs[1]),
                qkd=dict(qkd) if qkd is not None else None,
                impairment={k: float(v) for k, v in (imp or {}).items()},
                mtu=raw.get("mtu"), ipv4_derived=derived), []


# --------------------------------------------------------------------------- users


def _check_count(where: str, key: str, value: Any, lo: int, hi: int | None) -> list[str]:
    if not isinstance(value, int) or isinstance(value, bool):
        return [f"{where}: {key}: must be an integer, got {_typename(value)} {value!r}"]
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        return [f"{where}: {key}: {value} out of range {rng}"]
    return []


def _build_users(data: dict, nodes: dict[str, Node]) -> tuple[list[User], list[str]]:
    problems: list[str] = []
    extra = set(data) - {"users"}
    if extra:
        problems.append(f"unknown top-level key(s): {', '.join(sorted(extra))} "
                        f"(only 'users')")
    raw_users = data.get("users")
    if not isinstance(raw_users, list):
        return [], problems + [f"users: must be a list, got {_typename(raw_users)}"]
    users: list[User] = []
    names: set[str] = set()
    sae_owner: dict[str, str] = {}
    for i, ru in enumerate(raw_users):
        if not isinstance(ru, dict):
            problems.append(f"users[{i}]: must be a mapping, got {_typename(ru)}")
            continue
        uname = ru.get("name")
        where = f"user {uname}" if isinstance(uname, str) else f"users[{i}]"
        up: list[str] = []
        unknown = set(ru) - {"name", "status", "sla", "applications"}
        if unknown:
            up.append(f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        if not isinstance(uname, str) or not _USER_NAME.match(uname):
            up.append(f"{where}: name: must be a name of letters, digits, '._-'")
        elif uname in names:
            up.append(f"{where}: name: duplicate user")
        names.add(str(uname))
        status = ru.get("status")
        if status not in USER_STATUSES:
            up.append(f"{where}: status: {status!r} must be one of {', '.join(USER_STATUSES)}")
        sla = ru.get("sla")
        if not isinstance(sla, dict):
            up.append(f"{where}: sla: must be a mapping with {', '.join(SLA_FIELDS)}")
            sla = {}
        else:
            for key in sorted(set(SLA_FIELDS) - set(sla)):
                up.append(f"{where}: sla.{key}: missing")
            for key in sorted(set(map(str, sla)) - set(SLA_FIELDS)):
                up.append(f"{where}: sla.{key}: unknown field (known: {', '.join(SLA_FIELDS)})")
            if "max_priority" in sla:
                up += _check_count(where, "sla.max_priority", sla["max_priority"], 0, 9)
            if "max_key_rate" in sla:
                up += _check_count(where, "sla.max_key_rate", sla["max_key_rate"], 1, None)
            if "max_key_size" in sla:
                up += _check_count(where, "sla.max_key_size", sla["max_key_size"], 8, None)
                if not up and sla["max_key_size"] % 8:
                    up.append(f"{where}: sla.max_key_size: {sla['max_key_size']} is not a "
                              f"whole number of bytes (multiple of 8 bits)")
            if "max_sessions" in sla:
                up += _check_count(where, "sla.max_sessions", sla["max_sessions"], 0, None)
            dests = sla.get("allowed_destinations", [])
            if not isinstance(dests, list) or not all(isinstance(d, str) for d in dests):
                up.append(f"{where}: sla.allowed_destinations: must be a list of SAE IDs "
                          f"or [\"*\"]")
        apps: list[Application] = []
        raw_apps = ru.get("applications", [])
        if not isinstance(raw_apps, list):
            up.append(f"{where}: applications: must be a list of {{sae_id, km}}")
            raw_apps = []
        for j, ra in enumerate(raw_apps):
            aw = f"{where}: applications[{j}]"
            if not isinstance(ra, dict):
                up.append(f"{aw}: must be a mapping {{sae_id, km}}")
                continue
            unknown = set(ra) - {"sae_id", "km"}
            if unknown:
                up.append(f"{aw}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
            sae, km = ra.get("sae_id"), ra.get("km")
            if not isinstance(sae, str) or not _SAE_ID.match(sae):
                up.append(f"{aw}: sae_id: {sae!r} is not a valid SAE ID "
                          f"(letters, digits, '._-')")
            else:
                aw = f"{where}: application {sae}"
                if sae in sae_owner:
                    up.append(f"{aw}: sae_id: already used by user {sae_owner[sae]}")
                sae_owner[sae] = str(uname)
            if km not in nodes:
                up.append(f"{aw}: km: {km!r} is not a node of the lab")
            elif "km" not in nodes[km].roles:
                up.append(f"{aw}: km: node {km} is not a key manager (role km)")
            if isinstance(sae, str) and isinstance(km, str):
                apps.append(Application(sae_id=sae, km=km))
        problems += up
        if not up:
            users.append(User(name=uname, status=status, sla=dict(sla),
                              applications=tuple(apps)))
    # allowed_destinations must name SAEs that exist (or "*").
    for u in users:
        for d in u.sla.get("allowed_destinations", []):
            if d != "*" and d not in sae_owner:
                problems.append(f"user {u.name}: sla.allowed_destinations: {d!r} is not an "
                                f"SAE ID of this lab")
    return users, problems
