"""Scenario files: the shipped ones are valid for star6; bad files get one clear line per
problem, all of them at once, and `qkdtwin scenario` exits 2 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qkdtwin.scenario.model import (
    LabFacts,
    ScenarioError,
    check_against_lab,
    load_scenario,
    parse_scenario,
)
from qkdtwin.topology import load_lab

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PAIR = {"from": "sae-0", "to": "sae-1"}


def problems(data) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data, "x.yml")
    assert str(exc.value).startswith("x.yml is not a valid scenario")
    return exc.value.problems


def one(data) -> str:
    p = problems(data)
    assert len(p) == 1, p
    return p[0]


@pytest.fixture(scope="module")
def star6() -> LabFacts:
    return LabFacts.from_lab(load_lab(ROOT / "labs" / "star6.clab.yml"))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "scenarios").glob("*.yml")))
def test_shipped_scenarios_are_valid_for_star6(name, star6):
    sc = load_scenario(ROOT / "scenarios" / name)
    check_against_lab(sc, star6)
    assert sc.pairs and sc.lab == "star6"


def test_paper_fig4_is_the_papers_experiment():
    sc = load_scenario(ROOT / "scenarios" / "paper-fig4.yml")
    assert [(p.src, p.dst) for p in sc.pairs] == [("sae-0", "sae-1"), ("sae-2", "sae-3"),
                                                  ("sae-4", "sae-5")]
    assert {p.at for p in sc.pairs} == {0} and not sc.faults  # in parallel, no fault
    assert all(p.api == "014" and p.keys == 4 and p.size == 256 for p in sc.pairs)
    assert [p.user for p in sc.pairs] == ["ops", "research", "iot"]


def test_defaults_apply_and_pairs_override():
    sc = parse_scenario({"defaults": {"api": "004", "keys": 3, "size": 512,
                                      "qos": {"timeout": 2000}},
                         "pairs": [PAIR, {**PAIR, "name": "b", "keys": 9, "api": "014",
                                          "at": 2.5, "after": "sae-0-sae-1"}]}, "x.yml")
    a, b = sc.pairs
    assert (a.name, a.api, a.keys, a.size, a.qos) == ("sae-0-sae-1", "004", 3, 512,
                                                       {"timeout": 2000})
    assert (b.api, b.keys, b.size, b.qos, b.at, b.after) == ("014", 9, 512, {}, 2.5,
                                                             "sae-0-sae-1")
    assert sc.name == "x"  # from the file name when not given


def test_unquoted_api_numbers_are_understood():
    # YAML reads 014 as the octal 12 and 004 as 4
    sc = parse_scenario(yaml.safe_load("pairs:\n- {from: a, to: b, api: 014}\n"
                                       "- {from: a, to: c, api: 004}\n"))
    assert [p.api for p in sc.pairs] == ["014", "004"]


def test_faults_are_sorted_and_described():
    sc = parse_scenario({"pairs": [PAIR], "faults": [
        {"at": 9, "action": "link_up", "link": "km4:km5"},
        {"at": 1, "action": "eve", "link": "km0:km1", "fraction": 0.25},
        {"at": 5, "action": "kill", "node": "km0"}]})
    assert [f.at for f in sc.faults] == [1, 5, 9]
    assert sc.faults[0].describe() == "eve on km0:km1 (25% of the pulses)"
    assert sc.faults[2].describe() == "link up km4:km5"


@pytest.mark.parametrize("data, expected", [
    ([1, 2], "the file must be a mapping with 'pairs'"),
    ({"name": "x"}, "pairs: missing"),
    ({"pairs": []}, "pairs: must be a non-empty list"),
    ({"pairs": [PAIR], "pair": 1}, "pair: unknown key (did you mean 'pairs'?)"),
    ({"pairs": ["sae-0"]}, "pairs[0]: must be a mapping"),
    ({"pairs": [{"to": "sae-1"}]}, "pairs[0].from: missing"),
    ({"pairs": [{"from": "sae-0", "to": "sae-0"}]}, "from and to are both sae-0"),
    ({"pairs": [{**PAIR, "api": "015"}]}, 'pairs[0].api: must be "014" or "004"'),
    ({"pairs": [{**PAIR, "size": 100}]}, "pairs[0].size: must be a multiple of 8 bits"),
    ({"pairs": [{**PAIR, "keys": 0}]}, "pairs[0].keys: must be at least 1"),
    ({"pairs": [{**PAIR, "keys": "4"}]}, "pairs[0].keys: must be an integer, got a string"),
    ({"pairs": [{**PAIR, "keys": True}]}, "pairs[0].keys: must be an integer"),
    ({"pairs": [{**PAIR, "at": -1}]}, "pairs[0].at: must be at least 0"),
    ({"pairs": [{**PAIR, "timeout": 0}]}, "pairs[0].timeout: must be more than 0"),
    ({"pairs": [{**PAIR, "priority": 12}]}, "pairs[0].priority: must be at most 9"),
    ({"pairs": [{**PAIR, "expect": "fail"}]}, "pairs[0].expect: must be one of keys, refused"),
    ({"pairs": [{**PAIR, "qos": {"timeout": 5}}]}, "QoS fields apply to api 004"),
    ({"pairs": [{**PAIR, "api": "004", "qos": {"tmeout": 5}}]},
     "pairs[0].qos.tmeout: unknown key (did you mean 'timeout'?)"),
    ({"pairs": [{**PAIR, "name": "p", "kyes": 3}]}, "pairs[0] (p).kyes: unknown key "
                                                    "(did you mean 'keys'?)"),
    ({"pairs": [{**PAIR, "after": "nobody"}]}, "after: no pair named 'nobody'"),
    ({"pairs": [PAIR, PAIR]}, "the name 'sae-0-sae-1' is used 2 times"),
    ({"defaults": [1], "pairs": [PAIR]}, "defaults: must be a mapping"),
    ({"defaults": {"from": "sae-0"}, "pairs": [PAIR]}, "defaults.from: unknown key"),
    ({"pairs": [PAIR], "faults": {"at": 1}}, "faults: must be a list"),
    ({"pairs": [PAIR], "faults": [{"action": "kill", "node": "km0"}]}, "faults[0].at: missing"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "explode"}]},
     "faults[0].action: must be one of link_down, link_up, eve, eve_off, kill"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "link_down"}]},
     "faults[0].link: link_down needs the link as NODE:NODE"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "link_down", "link": "km4-km5"}]},
     "got 'km4-km5'"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "eve", "link": "a:b",
                                   "fraction": 1.5}]}, "faults[0].fraction: must be at most 1"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "link_up", "link": "a:b",
                                   "fraction": 0.5}]}, "faults[0].fraction: only for action eve"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "kill"}]},
     "faults[0].node: kill needs the node"),
    ({"pairs": [PAIR], "faults": [{"at": 1, "action": "restart", "node": "km0",
                                   "link": "a:b"}]}, "faults[0].link: not used by restart"),
])
def test_bad_files_say_what_is_wrong(data, expected):
    msg = "\n".join(problems(data))
    assert expected in msg


def test_after_loops_are_refused():
    p = problems({"pairs": [{**PAIR, "name": "a", "after": "b"},
                            {**PAIR, "name": "b", "after": "a"}]})
    assert any("the order loops (a -> b -> a)" in x for x in p), p


def test_one_problem_one_line():
    assert one({"pairs": [{**PAIR, "size": 12}]}) == (
        "pairs[0].size: must be a multiple of 8 bits, got 12")


def test_every_problem_is_reported_at_once():
    p = problems({"pairs": [{"from": "sae-0", "api": "x", "size": 7}],
                  "faults": [{"at": -2, "action": "kill"}], "extra": 1})
    text = "\n".join(p)
    for part in ("extra: unknown key", "pairs[0].to: missing", "pairs[0].api:",
                 "pairs[0].size:", "faults[0].at: must be at least 0", "faults[0].node:"):
        assert part in text
    assert len(p) >= 6


def test_yaml_errors_name_the_line(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("pairs:\n  - from: sae-0\n    to: [sae-1\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(f)
    assert "not valid YAML at line" in str(exc.value)


def test_missing_file_suggests_the_scenarios_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(Exception) as exc:
        load_scenario("paper-fig4")
    assert "did you mean scenarios/paper-fig4.yml?" in str(exc.value)


def test_checked_against_the_lab(star6):
    sc = parse_scenario({"pairs": [
        {"from": "sae-0", "to": "sae-7"},
        {"from": "sae-2", "to": "sae-3", "user": "ops"}], "faults": [
        {"at": 1, "action": "link_down", "link": "km1:km2"},
        {"at": 2, "action": "kill", "node": "km9"},
        {"at": 3, "action": "restart", "node": "km0", "program": "qkdtwin-routing"}]})
    with pytest.raises(ScenarioError) as exc:
        check_against_lab(sc, star6)
    text = "\n".join(exc.value.problems)
    assert "pairs (sae-0-sae-7).to: lab star6 has no application sae-7 (known: sae-0" in text
    assert "sae-2 belongs to user research, not ops" in text
    assert "has no QKD link km1:km2 (QKD links: km0:km1" in text
    assert "has no node km9" in text
    assert "node km0 runs no program qkdtwin-routing (it runs key_manager, qkd-km0-km1" in text


def test_program_defaults_from_the_node_role(star6):
    sc = parse_scenario({"pairs": [PAIR], "faults": [
        {"at": 1, "action": "kill", "node": "km3"},
        {"at": 2, "action": "stop", "node": "admission"},
        {"at": 3, "action": "kill", "node": "km0", "program": "qkd-km0-km2"}]})
    check_against_lab(sc, star6)
    assert [f.program for f in sc.faults] == ["key_manager", "qkdtwin-admission", "qkd-km0-km2"]


def test_a_node_with_several_roles_needs_the_program():
    facts = LabFacts.from_lab(load_lab(ROOT / "labs" / "line3.clab.yml"))
    sc = parse_scenario({"pairs": [{"from": "sae-a0", "to": "sae-a2"}],
                         "faults": [{"at": 1, "action": "kill", "node": "ctl"}]})
    with pytest.raises(ScenarioError) as exc:
        check_against_lab(sc, facts)
    assert "node ctl runs qkdtwin-access, qkdtwin-admission, qkdtwin-monitoring" in str(exc.value)


def test_cli_bad_file_exits_2_with_the_problems(tmp_path, capsys):
    from qkdtwin.cli import main

    f = tmp_path / "s.yml"
    f.write_text(yaml.safe_dump({"pairs": [{"from": "sae-0", "to": "sae-1", "api": "015"}]}))
    assert main(["scenario", "star6", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qkdtwin scenario: {f} is not a valid scenario, 1 problem(s):")
    assert 'pairs[0].api: must be "014" or "004"' in err and "Traceback" not in err


def test_cli_check_against_an_undeployed_lab(tmp_path, capsys):
    from qkdtwin.cli import main
    from qkdtwin.topology.labcopy import copy_lab

    lab = copy_lab(ROOT / "labs" / "star6.clab.yml", tmp_path, "parse6", 250)
    assert main(["scenario", str(lab), str(ROOT / "scenarios" / "paper-fig4.yml"),
                 "--check"]) == 2
    assert "lab parse6 is not deployed" in capsys.readouterr().err
