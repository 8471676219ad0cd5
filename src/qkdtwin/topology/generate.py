"""Generated labs: a topology file, its users file and a scenario, from a shape or a real
network, seeded and reproducible (`qkdtwin generate`, docs/labs.md "Generated labs").

Shapes: `ring`, `grid`, `star`, `geometric` (random points in a square, links between
close ones, lengths from the distances), or the name of a real network in
`topology/networks/` (its published sites and link lengths). Every QKD node is a `km`
node; the control roles go on one `ctl` node (`combined`) or one node each (`separate`),
next to a `broker` node.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from qkdtwin.errors import UserError
from qkdtwin.quantum.params import MODELS, RECONCILIATION

SHAPES = ("ring", "grid", "star", "geometric")
NETWORKS_DIR = Path(__file__).with_name("networks")
CONTROL_ROLES = ("sdn", "access", "admission", "routing", "monitor")
MAX_KM_NODES = 230          # mgmt .20 to .249 of a /24
FIRST_KM_OCTET = 20
# a metro QKD link of the shipped labs (labs/star6.clab.yml), its length set per link
BASE_QKD: dict[str, Any] = {
    "protocol": "bb84-decoy", "attenuation_db_per_km": 0.21, "source_rate_hz": 10.0e6,
    "mu": 0.5, "nu": 0.1, "detector_efficiency": 0.045, "dark_count_prob": 1.7e-6,
    "misalignment": 0.033, "block_size": 100000}


@dataclass
class Spec:
    """What to generate (the CLI's options)."""

    shape: str
    nodes: int = 12
    seed: int = 1
    name: str | None = None
    octet: int = 100                 # mgmt subnet 172.31.<octet>.0/24
    length_km: float = 10.0          # ring, grid, star: every link's length
    area_km: float = 100.0           # geometric: side of the square
    degree: float = 3.0              # geometric: mean number of neighbours aimed at
    model: str = "analytic"
    bb84_links: int = 0              # how many links (drawn with the seed) run bb84
    reconciliation: str = "cascade"  # of the links that reconcile (bb84, statistical)
    source_rate_hz: float = 10.0e6
    control: str = "combined"        # combined | separate
    pairs: int = 10
    max_hops: int = 6
    faults: bool = True

    @property
    def lab_name(self) -> str:
        if self.name:
            return self.name
        return self.shape if self.shape not in SHAPES else f"{self.shape}{self.nodes}"


def known_networks() -> list[str]:
    return sorted(p.stem for p in NETWORKS_DIR.glob("*.yml"))


def load_network(name: str) -> dict[str, Any]:
    """A real network's data file: sites, links with lengths, and the source."""
    path = NETWORKS_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown shape or network {name!r} (shapes: {', '.join(SHAPES)}; "
                        f"networks: {', '.join(known_networks()) or 'none'})")
    return yaml.safe_load(path.read_text())


# -- the graph: km nodes with positions (km), links with lengths (km) ----------------------

def build_graph(spec: Spec) -> tuple[nx.Graph, dict[str, Any]]:
    """The QKD network as a graph (node attr `pos`, edge attr `length_km`) and provenance."""
    rng = random.Random(spec.seed)
    if spec.shape not in SHAPES:
        return _network_graph(load_network(spec.shape))
    n = spec.nodes
    if not 2 <= n <= MAX_KM_NODES:
        raise UserError(f"--nodes: {n} out of range [2, {MAX_KM_NODES}] (km nodes of one lab)")
    if spec.shape == "ring":
        g = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
        r = n * spec.length_km / (2 * math.pi)
        pos = {i: (r * math.cos(2 * math.pi * i / n), r * math.sin(2 * math.pi * i / n))
               for i in g}
    elif spec.shape == "star":
        g = nx.star_graph(n - 1)
        pos = {0: (0.0, 0.0)} | {i: (spec.length_km * math.cos(2 * math.pi * i / (n - 1)),
                                     spec.length_km * math.sin(2 * math.pi * i / (n - 1)))
                                 for i in range(1, n)}
    elif spec.shape == "grid":
        cols = math.ceil(math.sqrt(n))
        full = nx.grid_2d_graph(math.ceil(n / cols), cols)
        order = sorted(full, key=lambda rc: (rc[0], rc[1]))[:n]  # row by row: connected
        g = nx.convert_node_labels_to_integers(full.subgraph(order).copy(), ordering="sorted")
        pos = {i: (rc[1] * spec.length_km, rc[0] * spec.length_km)
               for i, rc in enumerate(sorted(order))}
    else:
        g, pos = _geometric(n, spec.area_km, spec.degree, rng)
    for a, b in g.edges:
        g.edges[a, b]["length_km"] = (spec.length_km if spec.shape != "geometric"
                                      else _distance(pos[a], pos[b]))
    g = nx.relabel_nodes(g, {i: f"km{i}" for i in g})
    nx.set_node_attributes(g, {f"km{i}": p for i, p in pos.items()}, "pos")
    return g, {"shape": spec.shape, "seed": spec.seed}


def _distance(p: tuple[float, float], q: tuple[float, float]) -> float:
    return max(round(math.dist(p, q), 1), 1.0)


def _geometric(n: int, side: float, degree: float,
               rng: random.Random) -> tuple[nx.Graph, dict[int, tuple[float, float]]]:
    """Random points in a side x side square; links between points closer than the radius
    that gives `degree` neighbours on average; components joined by their closest pair."""
    pos = {i: (round(rng.uniform(0, side), 1), round(rng.uniform(0, side), 1)) for i in range(n)}
    radius = side * math.sqrt(degree / (math.pi * n))
    g = nx.Graph()
    g.add_nodes_from(pos)
    g.add_edges_from((a, b) for a in range(n) for b in range(a + 1, n)
                     if math.dist(pos[a], pos[b]) <= radius)
    while not nx.is_connected(g):
        parts = sorted(nx.connected_components(g), key=len)
        small, rest = parts[0], set().union(*parts[1:])
        a, b = min(((a, b) for a in small for b in rest),
                   key=lambda ab: math.dist(pos[ab[0]], pos[ab[1]]))
        g.add_edge(a, b)
    return g, pos


def _network_graph(data: dict[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    g = nx.Graph()
    names = {}
    for i, site in enumerate(data["sites"]):
        names[site["name"]] = f"km{i}"
        g.add_node(f"km{i}", pos=tuple(site.get("pos", (0.0, 0.0))), site=site["name"])
    for link in data["links"]:
        a, b = names[link["a"]], names[link["b"]]
        g.add_edge(a, b, length_km=float(link["length_km"]))
    return g, {"network": data["name"], "source": data["source"]}


# -- the three files -----------------------------------------------------------------------

def lab_document(spec: Spec, g: nx.Graph) -> dict[str, Any]:
    """The topology file (containerlab schema, qkdtwin labels)."""
    if not 1 <= spec.octet <= 254:
        raise UserError(f"--octet: {spec.octet} out of range [1, 254]")
    if spec.model not in MODELS:
        raise UserError(f"--model: {spec.model!r} is not one of {', '.join(MODELS)}")
    if spec.reconciliation not in RECONCILIATION:
        raise UserError(f"--reconciliation: {spec.reconciliation!r} is not one of "
                        f"{', '.join(RECONCILIATION)}")
    if spec.control not in ("combined", "separate"):
        raise UserError(f"--control: {spec.control!r} is not combined or separate")
    net = f"172.31.{spec.octet}"
    nodes: dict[str, Any] = {"broker": {"image": "qkdtwin/broker:latest",
                                        "mgmt-ipv4": f"{net}.10",
                                        "labels": {"qkdtwin.role": "broker"}}}
    if spec.control == "combined":
        nodes["ctl"] = {"mgmt-ipv4": f"{net}.11", "labels": {"qkdtwin.role":
                                                              ",".join(CONTROL_ROLES)}}
    else:
        for i, role in enumerate(CONTROL_ROLES):
            nodes[role] = {"mgmt-ipv4": f"{net}.{11 + i}", "labels": {"qkdtwin.role": role}}
    kms = sorted(g, key=_index)
    x0, y0 = (min(p[axis] for _, p in g.nodes(data="pos")) for axis in (0, 1))
    for i, km in enumerate(kms):
        x, y = g.nodes[km]["pos"]
        labels: dict[str, Any] = {"qkdtwin.role": "km", "qkdtwin.x_km": round(x - x0, 1),
                                  "qkdtwin.y_km": round(y - y0, 1)}
        if "site" in g.nodes[km]:
            labels["qkdtwin.site"] = g.nodes[km]["site"]
        nodes[km] = {"mgmt-ipv4": f"{net}.{FIRST_KM_OCTET + i}", "labels": labels}
    edges = _edges(g)
    bb84 = set(random.Random(spec.seed + 1).sample(range(len(edges)),
                                                   min(spec.bb84_links, len(edges))))
    ifaces = {km: 0 for km in kms}
    links = []
    for j, (a, b) in enumerate(edges):
        ifaces[a] += 1
        ifaces[b] += 1
        qkd = {**BASE_QKD, "source_rate_hz": spec.source_rate_hz,
               "length_km": g.edges[a, b]["length_km"],
               "model": "bb84" if j in bb84 else spec.model}
        if qkd["model"] != "analytic" and spec.reconciliation != "cascade":
            qkd["reconciliation"] = spec.reconciliation
        links.append({"endpoints": [f"{a}:eth{ifaces[a]}", f"{b}:eth{ifaces[b]}"],
                      "vars": {"qkd": qkd, "impairment": {"delay_ms": 1}}})
    return {"name": spec.lab_name, "mgmt": {"network": f"qkdtwin-{spec.lab_name}",
                                            "ipv4-subnet": f"{net}.0/24"},
            "topology": {"defaults": {"kind": "linux", "image": "qkdtwin/node:latest"},
                         "nodes": nodes, "links": links}}


def _index(km: str) -> int:
    return int(km[2:])


def _edges(g: nx.Graph) -> list[tuple[str, str]]:
    """The links in file order: by their ends' numbers, the lower end first."""
    return sorted((tuple(sorted(e, key=_index)) for e in g.edges),
                  key=lambda e: (_index(e[0]), _index(e[1])))


def pair_endpoints(spec: Spec, g: nx.Graph) -> list[tuple[str, str]]:
    """`pairs` (source km, destination km), distinct nodes at most `max_hops` apart."""
    hops = dict(nx.all_pairs_shortest_path_length(g, cutoff=spec.max_hops))
    candidates = sorted((a, b) for a in hops for b, h in hops[a].items() if 0 < h)
    if not candidates:
        raise UserError("no two km nodes within --max-hops of each other")
    rng = random.Random(spec.seed + 2)
    return [rng.choice(candidates) for _ in range(spec.pairs)]


def users_document(spec: Spec, ends: list[tuple[str, str]]) -> dict[str, Any]:
    apps = []
    for i, (a, b) in enumerate(ends):
        apps += [{"sae_id": f"sae-{i}a", "km": a}, {"sae_id": f"sae-{i}b", "km": b}]
    return {"users": [{"name": "ops", "status": "active",
                       "sla": {"max_priority": 9, "max_key_rate": 65536, "max_key_size": 1024,
                               "max_sessions": max(8, len(ends)),
                               "allowed_destinations": ["*"]},
                       "applications": apps}]}


def _fault_links(spec: Spec, g: nx.Graph) -> list[tuple[str, str]]:
    """Two links to lose at once (Eve, then a cut) with the network still connected; in a
    network without such a pair (a ring, a tree) one link whose loss leaves it connected,
    or none."""
    edges = sorted(_edges(g))  # by name: the order the seeds of the shipped tests saw
    rng = random.Random(spec.seed + 3)
    pairs = [(a, b) for i, a in enumerate(edges) for b in edges[i + 1:]]
    rng.shuffle(pairs)
    for a, b in pairs:  # the first that keeps the network whole, in a seeded order
        if nx.is_connected(nx.restricted_view(g, [], [a, b])):
            return [a, b]
    singles = [e for e in edges if nx.is_connected(nx.restricted_view(g, [], [e]))]
    return [rng.choice(singles)] if singles else []


def scenario_document(spec: Spec, g: nx.Graph, ends: list[tuple[str, str]]) -> dict[str, Any]:
    """Every pair at once (ETSI 014 and 004 alternately); with faults, Eve on one link and a
    cut of another while the pairs run, both lost at once without splitting the network (a
    ring has no such two links: it gets the cut only)."""
    pairs = [{"name": f"p{i}-{a}-{b}", "from": f"sae-{i}a", "to": f"sae-{i}b",
              "api": "014" if i % 2 == 0 else "004"} for i, (a, b) in enumerate(ends)]
    faults: list[dict[str, Any]] = []
    lost = _fault_links(spec, g) if spec.faults else []
    if len(lost) == 2:
        eve = f"{lost[0][0]}:{lost[0][1]}"
        faults += [{"at": 5, "action": "eve", "link": eve, "fraction": 0.5},
                   {"at": 30, "action": "eve_off", "link": eve}]
    if lost:
        cut = f"{lost[-1][0]}:{lost[-1][1]}"
        faults += [{"at": 10, "action": "link_down", "link": cut},
                   {"at": 35, "action": "link_up", "link": cut}]
    what = {0: "", 1: ", a link cut", 2: ", Eve on one link, a cut of another"}[len(lost)]
    doc: dict[str, Any] = {
        "name": f"{spec.lab_name}-pairs",
        "description": f"{len(pairs)} application pairs at once on {spec.lab_name}{what}",
        "lab": spec.lab_name,
        # ~30 s of requests per pair, so the pairs run through Eve (5-30 s) and the cut
        "defaults": {"size": 256, "keys": 10, "interval": 3.0, "timeout": 180},
        "pairs": pairs}
    if faults:
        doc["faults"] = sorted(faults, key=lambda f: f["at"])
    return doc


def generate(spec: Spec, out_dir: Path) -> list[Path]:
    """Write <name>.clab.yml, <name>.users.yml and <name>.scenario.yml; their paths."""
    g, origin = build_graph(spec)
    lab = lab_document(spec, g)
    ends = pair_endpoints(spec, g)
    name = spec.lab_name
    header = _header(spec, g, origin)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.clab.yml": (header, lab),
             f"{name}.users.yml": (f"# Users of the generated lab {name} (qkdtwin generate).\n",
                                   users_document(spec, ends)),
             f"{name}.scenario.yml": (f"# qkdtwin scenario {name} <this file>\n",
                                      scenario_document(spec, g, ends))}
    paths = []
    for fname, (head, doc) in files.items():
        path = out_dir / fname
        path.write_text(head + yaml.safe_dump(doc, sort_keys=False, width=100,
                                              default_flow_style=None))
        paths.append(path)
    return paths


def _header(spec: Spec, g: nx.Graph, origin: dict[str, Any]) -> str:
    lengths = [d["length_km"] for *_, d in g.edges(data=True)]
    lines = [f"Generated by `qkdtwin generate` ({_command(spec)}).",
             f"{g.number_of_nodes()} key managers, {g.number_of_edges()} QKD links of "
             f"{min(lengths):g}-{max(lengths):g} km (model {spec.model}, "
             f"{min(spec.bb84_links, len(lengths))} bb84); control roles {spec.control}."]
    if "source" in origin:
        lines.insert(1, f"Network: {origin['network']}. Source: {origin['source']}")
    return "".join(f"# {ln}\n" for ln in lines)


def _command(spec: Spec) -> str:
    parts = [f"--shape {spec.shape}"]
    if spec.shape in SHAPES:
        parts.append(f"--nodes {spec.nodes}")
    parts += [f"--seed {spec.seed}", f"--model {spec.model}", f"--pairs {spec.pairs}"]
    if spec.bb84_links:
        parts.append(f"--bb84-links {spec.bb84_links}")
    if spec.reconciliation != "cascade":
        parts.append(f"--reconciliation {spec.reconciliation}")
    return " ".join(parts)
