"""Topology model: every lab validates; every broken file gives its expected message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qkdtwin.cli import main
from qkdtwin.errors import UserError
from qkdtwin.topology import LabInvalid, check_lab, load_lab, schema_problems

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LABS = sorted((ROOT / "labs").glob("*.clab.yml"))
BROKEN = sorted((ROOT / "tests" / "data" / "broken").glob("*.clab.yml"))


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect:").strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


def test_there_are_labs_and_broken_files():
    assert {p.name for p in LABS} >= {"line3.clab.yml", "star6.clab.yml"}
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_every_lab_is_valid(path):
    lab, problems = check_lab(path)
    assert problems == []
    assert lab is not None and lab.users, "every lab ships a users file"


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_broken_file_gives_expected_message(path):
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    lab, problems = check_lab(path)
    assert lab is None
    for e in expected:
        assert any(e in p for p in problems), f"{e!r} not in {problems}"
    # One line per problem, each naming the file it is about.
    assert all("\n" not in p and p.split(":")[0].endswith((".clab.yml", ".users.yml"))
               for p in problems)


@pytest.mark.parametrize("path", BROKEN[:3] + BROKEN[-3:], ids=lambda p: p.name)
def test_validate_command_prints_problems_and_exits_1(path, capsys):
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    for e in expectations(path):
        assert e in out
    assert "Traceback" not in out + err
    assert "INVALID" in err


def test_validate_command_ok_summary(capsys):
    assert main(["validate", str(ROOT / "labs" / "star6.clab.yml")]) == 0
    out, _ = capsys.readouterr()
    assert "OK: lab star6, 12 nodes, 6 links (6 QKD, 6 bb84), 4 users" in out


def test_unknown_lab_is_a_user_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.clab.yml")]) == 2
    assert "no such lab" in capsys.readouterr().err


def test_load_by_name_from_project_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert load_lab("line3").name == "line3"


def test_load_lab_raises_with_all_problems():
    with pytest.raises(LabInvalid) as info:
        load_lab(ROOT / "tests" / "data" / "broken" / "mgmt-duplicate.clab.yml")
    assert isinstance(info.value, UserError)
    assert any("already used by node km0" in p for p in info.value.problems)


def test_line3_model():
    lab = load_lab(ROOT / "labs" / "line3.clab.yml")
    assert list(lab.nodes) == ["broker", "ctl", "km0", "km1", "km2"]
    assert lab.nodes["ctl"].roles == ("sdn", "access", "admission", "routing", "monitor")
    assert lab.elements == {"sdn": "ctl", "access": "ctl", "admission": "ctl",
                            "routing": "ctl", "monitor": "ctl", "broker": "broker"}
    assert lab.broker.mgmt_ipv4 == "172.31.3.10"
    assert lab.mgmt_gateway == "172.31.3.1"
    assert [lk.id for lk in lab.links] == ["km0-km1", "km1-km2"]
    km12 = lab.links[1]
    assert (km12.a.node, km12.a.interface, km12.a.ipv4) == ("km1", "eth2", "10.10.2.1/30")
    assert km12.b.address == "10.10.2.2"
    assert km12.impairment == {"delay_ms": 1.0, "rate_mbit": 100.0}
    # YAML merge key: the second link inherits the anchor and overrides length_km.
    assert km12.qkd["length_km"] == 25 and km12.qkd["mu"] == 0.5
    assert lab.links[0].qkd["length_km"] == 10
    assert lab.namespace("km0") == "clab-line3-km0"
    assert lab.lab_dir == ROOT / "labs" / "clab-line3"
    alice = lab.users[0]
    assert alice.name == "alice" and alice.sla["max_priority"] == 9
    assert [a.sae_id for a in alice.applications] == ["sae-a0", "sae-a1", "sae-a2"]
    assert [u.status for u in lab.users] == ["active", "active", "disabled"]


def test_star6_model():
    lab = load_lab(ROOT / "labs" / "star6.clab.yml")
    assert len(lab.nodes_with_role("km")) == 6
    assert len(lab.links_of("km0")) == 5
    assert lab.links[-1].id == "km4-km5"
    assert lab.links[-1].impairment["jitter_ms"] == 0.5


def test_schema_uses_unicode_property_patterns():
    """The schema's `\\p{N}`/`\\p{L}` patterns must work (plain `re` cannot compile them)."""
    base = {"name": "x", "topology": {"nodes": {"a": {"mgmt-ipv4": "10.0.0.1%eth0"}}}}
    assert schema_problems(base) == []
    base["topology"]["nodes"]["a"]["mgmt-ipv4"] = "10.0.0.300"
    problems = schema_problems(base)
    assert problems and "topology.nodes.a" in problems[0]


def _copy_lab(tmp_path: Path, name: str = "line3") -> Path:
    for suffix in (".clab.yml", ".users.yml"):
        shutil.copy(ROOT / "labs" / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path / f"{name}.clab.yml"


def test_p2p_addresses_are_derived_when_missing(tmp_path):
    path = _copy_lab(tmp_path)
    text = path.read_text().replace("      ipv4: [10.10.2.1/30, 10.10.2.2/30]\n", "")
    path.write_text(text)
    lab = load_lab(path)
    link = lab.links[1]
    assert link.ipv4_derived
    assert (link.a.ipv4, link.b.ipv4) == ("10.255.0.5/30", "10.255.0.6/30")


def test_lab_without_users_file_is_valid(tmp_path):
    path = _copy_lab(tmp_path)
    (tmp_path / "line3.users.yml").unlink()
    lab = load_lab(path)
    assert lab.users == [] and lab.users_path is None


def test_several_problems_are_all_reported(tmp_path):
    path = _copy_lab(tmp_path)
    text = path.read_text().replace("impairment: {delay_ms: 1}",
                                    "impairment: {delay_ms: -1, loss: 3}")
    text = text.replace("mgmt-ipv4: 172.31.3.22", "mgmt-ipv4: 172.31.4.22")
    path.write_text(text)
    _, problems = check_lab(path)
    assert len(problems) == 3
    assert any("link km0-km1: vars.impairment.delay_ms: -1 out of range" in p for p in problems)
    assert any("link km0-km1: vars.impairment.loss: unknown key" in p for p in problems)
    assert any("node km2: mgmt-ipv4: 172.31.4.22" in p for p in problems)


def test_garbage_never_raises(tmp_path):
    for i, text in enumerate(["", "- a\n- b\n", "name: [x\n", "\x00\x01", "name: x\n"
                              "topology: {nodes: {a: {labels: {qkdtwin.role: 3}}}}\n"]):
        path = tmp_path / f"g{i}.clab.yml"
        path.write_text(text)
        lab, problems = check_lab(path)
        assert lab is None and problems


@pytest.mark.parametrize("sae", ["km1", "KM1", "host", "admission", "broker", "ctl"])
def test_validate_refuses_an_sae_named_like_another_identity(sae, tmp_path, capsys):
    """M4: an application certificate with a node's name, `host` or a role's name would
    claim that identity's broker rights and SDN writes: `qkdtwin validate` refuses the lab."""
    for f in ("line3.clab.yml", "line3.users.yml"):
        shutil.copy(ROOT / "labs" / f, tmp_path / f)
    users = tmp_path / "line3.users.yml"
    users.write_text(users.read_text().replace("sae_id: sae-b2,", f"sae_id: {sae},"))
    assert main(["validate", str(tmp_path / "line3.clab.yml")]) == 1
    out, err = capsys.readouterr()
    assert f"user bob: application {sae}: sae_id: {sae!r} clashes with" in out, out
    assert "INVALID" in err and "Traceback" not in out + err
