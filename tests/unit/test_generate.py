"""`qkdtwin generate`: valid labs of every shape, reproducible, scenarios that fit the lab."""

from __future__ import annotations

import networkx as nx
import pytest

from qkdtwin.cli import main
from qkdtwin.scenario.model import LabFacts, check_against_lab, load_scenario
from qkdtwin.topology import check_lab, load_lab
from qkdtwin.topology.generate import Spec, build_graph, generate

pytestmark = pytest.mark.unit


def _generated(tmp_path, **kw):
    paths = generate(Spec(**kw), tmp_path)
    lab, problems = check_lab(paths[0])
    assert problems == [] and lab is not None
    scenario = load_scenario(paths[2])
    check_against_lab(scenario, LabFacts.from_lab(lab))  # every SAE, link and node exists
    return lab, scenario, paths


@pytest.mark.parametrize(("shape", "nodes", "links"), [
    ("ring", 20, 20), ("grid", 20, 31), ("star", 8, 7), ("grid", 7, 8), ("ring", 2, 1)])
def test_every_shape_gives_a_valid_lab_of_its_size(tmp_path, shape, nodes, links):
    lab, scenario, _ = _generated(tmp_path, shape=shape, nodes=nodes)
    kms = [n for n in lab.nodes.values() if "km" in n.roles]
    assert len(kms) == nodes and len(lab.qkd_links) == links
    assert {n.name for n in lab.nodes.values() if "km" not in n.roles} == {"broker", "ctl"}
    g = nx.Graph([(lk.a.node, lk.b.node) for lk in lab.qkd_links])
    assert nx.is_connected(g)
    assert len(scenario.pairs) == 10


def test_geometric_lengths_are_the_distances_and_the_network_is_connected(tmp_path):
    lab, _, _ = _generated(tmp_path, shape="geometric", nodes=50, area_km=150, degree=3)
    g = nx.Graph()
    pos = {n.name: (n.labels["qkdtwin.x_km"], n.labels["qkdtwin.y_km"])
           for n in lab.nodes.values() if "km" in n.roles}
    for lk in lab.qkd_links:
        g.add_edge(lk.a.node, lk.b.node)
        dx = pos[lk.a.node][0] - pos[lk.b.node][0]
        dy = pos[lk.a.node][1] - pos[lk.b.node][1]
        assert lk.qkd["length_km"] == pytest.approx(max((dx * dx + dy * dy) ** 0.5, 1.0),
                                                    abs=0.2)
    assert len(g) == 50 and nx.is_connected(g)
    assert 2.0 <= 2 * g.number_of_edges() / len(g) <= 5.0  # about the degree asked for


def test_same_seed_same_files_other_seed_other_network(tmp_path):
    one = [p.read_bytes() for p in generate(Spec("geometric", nodes=30, seed=4), tmp_path / "a")]
    two = [p.read_bytes() for p in generate(Spec("geometric", nodes=30, seed=4), tmp_path / "b")]
    other = [p.read_bytes() for p in generate(Spec("geometric", nodes=30, seed=5), tmp_path / "c")]
    assert one == two and one[0] != other[0]


def test_models_pairs_faults_and_control_placement(tmp_path):
    lab, scenario, _ = _generated(tmp_path, shape="grid", nodes=16, bb84_links=3, pairs=40,
                                  max_hops=3, control="separate", octet=120)
    models = [lk.qkd_model for lk in lab.qkd_links]
    assert models.count("bb84") == 3 and models.count("analytic") == len(models) - 3
    assert {"sdn", "access", "admission", "routing", "monitor"} <= set(lab.nodes)
    assert str(lab.mgmt_subnet) == "172.31.120.0/24"
    g = nx.Graph([(lk.a.node, lk.b.node) for lk in lab.qkd_links])
    km_of = {a.sae_id: a.km for u in lab.users for a in u.applications}
    assert len(scenario.pairs) == 40
    for p in scenario.pairs:
        assert 0 < nx.shortest_path_length(g, km_of[p.src], km_of[p.dst]) <= 3
    assert {p.api for p in scenario.pairs} == {"014", "004"}
    # Eve and the cut overlap in time: losing both links leaves the network connected
    actions = {f.action: f for f in scenario.faults}
    assert set(actions) == {"eve", "eve_off", "link_down", "link_up"}
    assert actions["eve"].link != actions["link_down"].link
    cut = g.copy()
    cut.remove_edges_from(tuple(actions[a].link.split(":")) for a in ("eve", "link_down"))
    assert nx.is_connected(cut)


def test_a_ring_gets_the_cut_only_and_a_star_no_fault(tmp_path):
    """Two links lost at once split a ring; any link lost isolates a star's leaf."""
    _, ring, _ = _generated(tmp_path / "ring", shape="ring", nodes=8)
    assert [f.action for f in ring.faults] == ["link_down", "link_up"]
    _, star, _ = _generated(tmp_path / "star", shape="star", nodes=6)
    assert star.faults == []


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "moebius"], "unknown shape or network 'moebius' (shapes: ring, grid, star"),
    (["generate", "ring", "--nodes", "1"], "--nodes: 1 out of range [2, 230]"),
    (["generate", "ring", "--octet", "300"], "--octet: 300 out of range [1, 254]"),
    (["generate", "ring", "--pairs", "0"], "--pairs: 0 must be at least 1"),
    (["generate", "geometric", "--area-km", "-5"], "--area-km: -5.0 must be positive"),
])
def test_bad_options_have_clear_errors(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_writes_three_files_and_says_what_to_do_next(tmp_path, capsys):
    assert main(["generate", "ring", "--nodes", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ring5.clab.yml", "ring5.scenario.yml", "ring5.users.yml"]
    assert "lab ring5: 7 nodes, 5 QKD links, 20 applications" in out
    assert f"qkdtwin deploy {tmp_path}/ring5.clab.yml" in out
    header = (tmp_path / "ring5.clab.yml").read_text().splitlines()[0]
    assert header.startswith("# Generated by `qkdtwin generate` (--shape ring --nodes 5")
    assert load_lab(tmp_path / "ring5.clab.yml").name == "ring5"


def test_graph_positions_are_kept_for_the_dashboard():
    g, origin = build_graph(Spec("ring", nodes=6, length_km=10))
    assert origin == {"shape": "ring", "seed": 1}
    assert all("pos" in d for _, d in g.nodes(data=True))
