"""Scenario files: parse and validate (no lab needed), then check against a lab's topology and
users. Every problem becomes one line naming where it is (``pairs[1].api: ...``), and all of a
file's problems are reported together.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qkdtwin.errors import UserError

APIS = ("014", "004")
FAULT_ACTIONS = ("link_down", "link_up", "eve", "eve_off", "kill", "stop", "start", "restart")
LINK_ACTIONS = ("link_down", "link_up", "eve", "eve_off")
NODE_ACTIONS = ("kill", "stop", "start", "restart")
QOS_FIELDS = ("key_chunk_size", "max_bps", "min_bps", "jitter", "priority", "timeout", "ttl")
TOP_KEYS = ("name", "description", "lab", "defaults", "pairs", "faults")
PAIR_KEYS = ("name", "from", "to", "api", "user", "keys", "size", "per_request", "interval",
             "priority", "qos", "at", "after", "timeout", "expect")
DEFAULT_KEYS = ("api", "keys", "size", "per_request", "interval", "priority", "qos", "timeout",
                "expect")
FAULT_KEYS = ("at", "action", "link", "fraction", "node", "program")
EXPECTS = ("keys", "refused")
# supervisord program of each control role (roles common, control_element and the service roles)
ROLE_PROGRAMS = {"km": "key_manager", "sdn": "qkdtwin-sdn", "access": "qkdtwin-access",
                 "admission": "qkdtwin-admission", "routing": "qkdtwin-routing",
                 "monitor": "qkdtwin-monitoring", "broker": "mosquitto"}


class ScenarioError(UserError):
    """A scenario file breaks one or more rules; ``problems`` lists them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source} is not a valid scenario, {len(problems)} problem(s):\n"
                         f"{lines}")


@dataclass
class Pair:
    name: str
    src: str  # ETSI 014 master / ETSI 004 source
    dst: str  # ETSI 014 slave / ETSI 004 destination
    api: str = "014"
    user: str | None = None
    keys: int = 4
    size: int = 256
    per_request: int = 1
    interval: float = 0.0
    priority: int | None = None
    qos: dict[str, int] = field(default_factory=dict)
    at: float = 0.0
    after: str | None = None
    timeout: float = 120.0
    expect: str = "keys"


@dataclass
class Fault:
    at: float
    action: str
    link: str | None = None  # "a:b" as written (either order)
    fraction: float = 0.5
    node: str | None = None
    program: str | None = None

    def describe(self) -> str:
        if self.action == "eve":
            return f"eve on {self.link} ({self.fraction:.0%} of the pulses)"
        if self.action in LINK_ACTIONS:
            return f"{self.action.replace('_', ' ')} {self.link}"
        return f"{self.action} {self.program or '?'} on {self.node}"


@dataclass
class Scenario:
    name: str
    pairs: list[Pair]
    faults: list[Fault] = field(default_factory=list)
    description: str = ""
    lab: str | None = None
    source: str = "<scenario>"


# --- parsing -------------------------------------------------------------------------------

def _typename(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            type(None): "empty"}.get(type(v), type(v).__name__)


def _unknown(where: str, d: dict, allowed: tuple[str, ...]) -> list[str]:
    out = []
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            out.append(f"{where}{k}: unknown key{hint}; allowed: {', '.join(allowed)}")
    return out


def _number(where: str, v: Any, *, lo: float | None = 0.0, integer: bool = False,
            hi: float | None = None, positive: bool = False) -> tuple[Any, list[str]]:
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer
                                                                 and not isinstance(v, int)):
        what = "an integer" if integer else "a number"
        return None, [f"{where}: must be {what}, got {_typename(v)} {v!r}"]
    if positive and v <= 0:
        return None, [f"{where}: must be more than 0, got {v}"]
    if lo is not None and v < lo:
        return None, [f"{where}: must be at least {lo:g}, got {v}"]
    if hi is not None and v > hi:
        return None, [f"{where}: must be at most {hi:g}, got {v}"]
    return v, []


def _api(where: str, v: Any) -> tuple[str | None, list[str]]:
    # YAML reads an unquoted 014 as the octal 12 and 004 as 4: accept them too.
    if isinstance(v, int) and not isinstance(v, bool):
        v = {4: "004", 12: "014", 14: "014"}.get(v, str(v))
    if v not in APIS:
        return None, [f'{where}: must be "014" or "004" (quote it), got {v!r}']
    return str(v), []


def _pair_fields(where: str, raw: dict, out: dict[str, Any]) -> list[str]:
    """Check the optional fields shared by `defaults` and a pair; store them in ``out``."""
    problems: list[str] = []
    for key, kw in (("keys", {"integer": True, "lo": 1, "hi": 100_000}),
                    ("size", {"integer": True, "lo": 8, "hi": 1 << 20}),
                    ("per_request", {"integer": True, "lo": 1, "hi": 1024}),
                    ("interval", {"lo": 0.0, "hi": 3600}),
                    ("priority", {"integer": True, "lo": 0, "hi": 9}),
                    ("timeout", {"positive": True, "lo": None, "hi": 24 * 3600})):
        if key in raw:
            v, p = _number(f"{where}{key}", raw[key], **kw)
            problems += p
            if not p:
                out[key] = v
    if "size" in out and out["size"] % 8:
        problems.append(f"{where}size: must be a multiple of 8 bits, got {out['size']}")
    if "api" in raw:
        v, p = _api(f"{where}api", raw["api"])
        problems += p
        if v:
            out["api"] = v
    if "expect" in raw:
        if raw["expect"] not in EXPECTS:
            problems.append(f"{where}expect: must be one of {', '.join(EXPECTS)}, "
                            f"got {raw['expect']!r}")
        else:
            out["expect"] = raw["expect"]
    if "qos" in raw:
        qos = raw["qos"]
        if not isinstance(qos, dict):
            problems.append(f"{where}qos: must be a mapping, got {_typename(qos)}")
        else:
            problems += _unknown(f"{where}qos.", qos, QOS_FIELDS)
            good: dict[str, int] = {}
            for k, v in qos.items():
                if k in QOS_FIELDS:
                    n, p = _number(f"{where}qos.{k}", v, integer=True,
                                   hi=9 if k == "priority" else None)
                    problems += p
                    if not p:
                        good[k] = n
            out["qos"] = good
    return problems


def _parse_pair(i: int, raw: Any, defaults: dict[str, Any]) -> tuple[Pair | None, list[str]]:
    where = f"pairs[{i}]"
    if not isinstance(raw, dict):
        return None, [f"{where}: must be a mapping (from, to, api, keys, ...), got "
                      f"{_typename(raw)}"]
    if isinstance(raw.get("name"), str):
        where = f"pairs[{i}] ({raw['name']})"
    problems = _unknown(f"{where}.", raw, PAIR_KEYS)
    vals: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                            for k, v in defaults.items()}
    problems += _pair_fields(f"{where}.", raw, vals)
    for end in ("from", "to"):
        v = raw.get(end)
        if v is None:
            problems.append(f"{where}.{end}: missing (the SAE ID of the "
                            f"{'master/source' if end == 'from' else 'slave/destination'} "
                            "application, e.g. sae-0)")
        elif not isinstance(v, str) or not v:
            problems.append(f"{where}.{end}: must be an SAE ID (a string), got {v!r}")
    src, dst = raw.get("from"), raw.get("to")
    if isinstance(src, str) and src and src == dst:
        problems.append(f"{where}: from and to are both {src}; a pair needs two applications")
    for key in ("name", "user", "after"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            problems.append(f"{where}.{key}: must be a non-empty string, got {raw[key]!r}")
    if "at" in raw:
        v, p = _number(f"{where}.at", raw["at"], hi=24 * 3600)
        problems += p
        if not p:
            vals["at"] = v
    api = vals.get("api", "014")
    if api == "014" and vals.get("qos") and "qos" in raw:
        problems.append(f"{where}.qos: QoS fields apply to api 004 sessions; for 014 give "
                        "priority (the other limits come from the user's SLA)")
    if problems:
        return None, problems
    name = raw.get("name") or f"{src}-{dst}"
    qos = dict(vals.pop("qos", {}) or {}) if api == "004" else {}
    vals.pop("qos", None)
    return Pair(name=name, src=src, dst=dst, user=raw.get("user"), after=raw.get("after"),
                qos=qos, **{k: v for k, v in vals.items() if k in (*DEFAULT_KEYS, "at")}), []


def _parse_fault(i: int, raw: Any) -> tuple[Fault | None, list[str]]:
    where = f"faults[{i}]"
    if not isinstance(raw, dict):
        return None, [f"{where}: must be a mapping (at, action, ...), got {_typename(raw)}"]
    problems = _unknown(f"{where}.", raw, FAULT_KEYS)
    at = 0.0
    if "at" not in raw:
        problems.append(f"{where}.at: missing (seconds from the start)")
    else:
        at, p = _number(f"{where}.at", raw["at"], hi=24 * 3600)
        problems += p
    action = raw.get("action")
    if action not in FAULT_ACTIONS:
        problems.append(f"{where}.action: must be one of {', '.join(FAULT_ACTIONS)}, "
                        f"got {action!r}")
        return None, problems
    fraction = 0.5
    if action in LINK_ACTIONS:
        link = raw.get("link")
        if not isinstance(link, str) or not _link_nodes(link):
            problems.append(f"{where}.link: {action} needs the link as NODE:NODE "
                            f"(e.g. km4:km5), got {link!r}")
        for k in ("node", "program"):
            if k in raw:
                problems.append(f"{where}.{k}: not used by {action} (it acts on a link)")
        if "fraction" in raw:
            if action != "eve":
                problems.append(f"{where}.fraction: only for action eve")
            else:
                fraction, p = _number(f"{where}.fraction", raw["fraction"], hi=1.0,
                                      positive=True)
                problems += p
    else:
        if not isinstance(raw.get("node"), str) or not raw.get("node"):
            problems.append(f"{where}.node: {action} needs the node whose program it acts "
                            f"on (e.g. node: km0)")
        if "program" in raw and (not isinstance(raw["program"], str) or not raw["program"]):
            problems.append(f"{where}.program: must be a supervisord program name, "
                            f"got {raw['program']!r}")
        for k in ("link", "fraction"):
            if k in raw:
                problems.append(f"{where}.{k}: not used by {action} (it acts on a node)")
    if problems:
        return None, problems
    return Fault(at=float(at), action=action, link=raw.get("link"), fraction=float(fraction),
                 node=raw.get("node"), program=raw.get("program")), []


def _link_nodes(spec: str) -> tuple[str, str] | None:
    a, sep, b = spec.partition(":")
    return (a, b) if sep and a and b and ":" not in b else None


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """A scenario from loaded YAML; raises :class:`ScenarioError` listing every problem."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"the file must be a mapping with 'pairs' (and 'name', "
                                     f"'faults', ...), got {_typename(data)}"])
    problems = _unknown("", data, TOP_KEYS)
    for key in ("name", "description", "lab"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key}: must be a string, got {_typename(data[key])}")
    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults", {}) or {}
    if not isinstance(raw_defaults, dict):
        problems.append(f"defaults: must be a mapping, got {_typename(raw_defaults)}")
    else:
        problems += _unknown("defaults.", raw_defaults, DEFAULT_KEYS)
        problems += _pair_fields("defaults.", raw_defaults, defaults)
    raw_pairs = data.get("pairs")
    pairs: list[Pair] = []
    if raw_pairs is None:
        problems.append("pairs: missing (the application pairs that ask for keys)")
    elif not isinstance(raw_pairs, list) or not raw_pairs:
        problems.append(f"pairs: must be a non-empty list, got {_typename(raw_pairs)}")
    else:
        for i, rp in enumerate(raw_pairs):
            pair, p = _parse_pair(i, rp, defaults)
            problems += p
            if pair:
                pairs.append(pair)
    faults: list[Fault] = []
    raw_faults = data.get("faults", []) or []
    if not isinstance(raw_faults, list):
        problems.append(f"faults: must be a list, got {_typename(raw_faults)}")
    else:
        for i, rf in enumerate(raw_faults):
            fault, p = _parse_fault(i, rf)
            problems += p
            if fault:
                faults.append(fault)
    problems += _check_order(pairs)
    if problems:
        raise ScenarioError(source, problems)
    return Scenario(name=data.get("name") or Path(source).stem, pairs=pairs,
                    faults=sorted(faults, key=lambda f: f.at),
                    description=data.get("description") or "", lab=data.get("lab"),
                    source=source)


def _check_order(pairs: list[Pair]) -> list[str]:
    """Unique names, `after` naming an existing pair, and no cycles."""
    problems: list[str] = []
    names = [p.name for p in pairs]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"pairs: the name {n!r} is used {names.count(n)} times; give each "
                        "pair its own name")
    by_name = {p.name: p for p in pairs}
    for p in pairs:
        if p.after is not None and p.after not in by_name:
            problems.append(f"pairs ({p.name}).after: no pair named {p.after!r} "
                            f"(pairs: {', '.join(names)})")
    for p in pairs:
        seen = [p.name]
        cur = p
        while cur.after in by_name:
            cur = by_name[cur.after]
            if cur.name in seen:
                problems.append(f"pairs ({p.name}).after: the order loops "
                                f"({' -> '.join([*seen, cur.name])})")
                break
            seen.append(cur.name)
    return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    p = Path(path)
    if not p.is_file():
        hint = ""
        if not p.suffix and Path("scenarios", f"{p}.yml").is_file():
            hint = f" (did you mean scenarios/{p}.yml?)"
        raise UserError(f"no scenario file {p}{hint}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(str(p), [f"not valid YAML{at}: {reason}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError(str(p), ["not a text file (UTF-8)"]) from None
    return parse_scenario(data, str(p))


# --- against a lab -------------------------------------------------------------------------

@dataclass
class LabFacts:
    """What a scenario is checked against: from a lab's topology and users file."""

    name: str
    saes: dict[str, dict[str, str]]  # sae -> {km, user, status}
    nodes: dict[str, list[str]]  # node -> roles
    links: list[tuple[str, str, str]]  # (id, a, b) of every QKD link

    @classmethod
    def from_lab(cls, lab: Any) -> LabFacts:
        """From a :class:`qkdtwin.topology.Lab`."""
        saes = {a.sae_id: {"km": a.km, "user": u.name, "status": u.status}
                for u in lab.users for a in u.applications}
        return cls(lab.name, saes, {n.name: list(n.roles) for n in lab.nodes.values()},
                   [(lk.id, lk.a.node, lk.b.node) for lk in lab.qkd_links])

    def link_id(self, spec: str) -> str | None:
        ends = _link_nodes(spec)
        if ends is None:
            return None
        for lid, a, b in self.links:
            if {a, b} == set(ends):
                return lid
        return None


def check_against_lab(sc: Scenario, facts: LabFacts) -> None:
    """The SAEs, users, links, nodes and programs a scenario names must exist in the lab."""
    problems: list[str] = []
    known_saes = ", ".join(sorted(facts.saes)) or "none"
    for p in sc.pairs:
        for end, sae in (("from", p.src), ("to", p.dst)):
            if sae not in facts.saes:
                problems.append(f"pairs ({p.name}).{end}: lab {facts.name} has no application "
                                f"{sae} (known: {known_saes})")
        owner = facts.saes.get(p.src, {}).get("user")
        if p.user is not None and owner is not None and owner != p.user:
            problems.append(f"pairs ({p.name}).user: {p.src} belongs to user {owner}, not "
                            f"{p.user} (the SAE's certificate names its user)")
    links = ", ".join(f"{a}:{b}" for _, a, b in facts.links) or "none"
    for i, f in enumerate(sc.faults):
        where = f"faults[{i}] ({f.describe()})"
        if f.action in LINK_ACTIONS:
            if facts.link_id(f.link or "") is None:
                problems.append(f"{where}.link: lab {facts.name} has no QKD link {f.link} "
                                f"(QKD links: {links})")
            continue
        roles = facts.nodes.get(f.node or "")
        if roles is None:
            problems.append(f"{where}.node: lab {facts.name} has no node {f.node} "
                            f"(nodes: {', '.join(sorted(facts.nodes))})")
            continue
        progs = sorted({ROLE_PROGRAMS[r] for r in roles if r in ROLE_PROGRAMS})
        modules = sorted(f"qkd-{lid}" for lid, a, b in facts.links if f.node in (a, b))
        if f.program is not None:
            if f.program not in progs + modules:
                problems.append(f"{where}.program: node {f.node} runs no program "
                                f"{f.program} (it runs {', '.join(progs + modules) or 'none'})")
        else:
            if len(progs) != 1:
                problems.append(f"{where}.program: node {f.node} runs "
                                f"{', '.join(progs) or 'no known program'}; name the one "
                                "to act on")
            else:
                f.program = progs[0]
    if problems:
        raise ScenarioError(sc.source, problems)
