"""Analytic models, LinkParams validation and the `qkdtwin keyrate` CLI."""

import json
import math

import pytest

from qkdtwin.cli import main
from qkdtwin.quantum import keyrate
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars

pytestmark = pytest.mark.unit
GYS = LinkParams.preset("gys")


def test_decoy_reaches_beyond_140_km_and_no_decoy_is_far_shorter():
    d_inf = keyrate.max_distance(GYS, "infinite-decoy")
    d_vw = keyrate.max_distance(GYS, "vacuum-weak-decoy")
    d_gllp = keyrate.max_distance(GYS, "no-decoy")
    assert 140.0 < d_inf < 145.0          # Lo-Ma-Chen: ~142 km under GYS
    assert 130.0 < d_vw <= d_inf
    assert 35.0 < d_gllp < 45.0


def _best_rate_by_scan(p, model: str) -> float:
    """The largest rate over 6,001 log-spaced mu in [1e-8, 1.5]: slow, but no optimiser."""
    return max(keyrate.rate_per_pulse(p, model, 1e-8 * 1.5e8 ** (i / 6000))
               for i in range(6001))


def test_no_decoy_max_distance_matches_an_exhaustive_mu_scan():
    """The value derived without the optimiser: GLLP under GYS keeps a positive rate at
    40.1 km (best mu about 0.0037) and none at 40.3 km. The old linear mu grid (first steps
    1e-4, 0.0126) saw no positive rate beyond 27.6 km."""
    p = GYS.replace(protocol="bb84")
    assert _best_rate_by_scan(p.replace(length_km=40.1), "no-decoy") > 0.0
    assert _best_rate_by_scan(p.replace(length_km=40.3), "no-decoy") == 0.0
    assert keyrate.max_distance(p, "no-decoy") == pytest.approx(40.2, abs=0.1)
    mu, r = keyrate.optimal_mu(p.replace(length_km=30.0), "no-decoy")
    assert 0.004 < mu < 0.008 and r > 0.0


def test_ideal_rate_vanishes_at_eleven_percent():
    assert keyrate.shor_preskill(0.105) > 0 > keyrate.shor_preskill(0.115)
    assert keyrate.rate_per_pulse(GYS.replace(misalignment=0.105, length_km=0), "ideal") > 0
    assert keyrate.rate_per_pulse(GYS.replace(misalignment=0.115, length_km=0), "ideal") == 0


def test_gain_qber_and_eve_formula():
    p = GYS.replace(length_km=50)
    eta = 0.045 * 10 ** (-0.21 * 50 / 10)
    assert keyrate.gain(p) == pytest.approx(1.7e-6 + 1 - math.exp(-eta * p.mu))
    e = keyrate.qber(p)
    assert 0.033 < e < 0.034
    e_eve = keyrate.qber(p.replace(eve_fraction=0.4))
    assert e_eve - e == pytest.approx(0.4 * (0.25 - 0.033 / 2), rel=0.02)


def test_optimal_mu_is_a_maximum():
    p = GYS.replace(length_km=50)
    mu, r = keyrate.optimal_mu(p, "infinite-decoy")
    assert 0.3 < mu < 0.7
    assert r >= keyrate.rate_per_pulse(p, "infinite-decoy", mu * 0.8)
    assert r >= keyrate.rate_per_pulse(p, "infinite-decoy", mu * 1.2)


def test_bad_link_params_have_clear_messages():
    assert validate_qkd_vars({"length_km": -3}) == [
        "qkd.length_km: -3 out of range [0, 1000] (km)"]
    msgs = validate_qkd_vars({"mu": "high", "protocol": "e91", "foo": 1})
    assert any("qkd.mu: expected a number" in m for m in msgs)
    assert any("qkd.protocol: 'e91' is not one of" in m for m in msgs)
    assert any("qkd.foo: unknown field" in m for m in msgs)
    assert validate_qkd_vars({"mu": 0.1, "nu": 0.2})[0].startswith("qkd.nu:")
    with pytest.raises(ValueError, match="detector_efficiency"):
        LinkParams.from_vars({"detector_efficiency": 1.5})
    assert validate_qkd_vars({"protocol": "bb84", "length_km": 10, "block_size": 100000}) == []


def test_lab_link_vars_are_valid():
    import yaml
    doc = yaml.safe_load(open("labs/star6.clab.yml"))
    for ln in doc["topology"]["links"]:
        if "qkd" in (ln.get("vars") or {}):
            assert validate_qkd_vars(ln["vars"]["qkd"]) == []


def test_cli_json(capsys):
    assert main(["keyrate", "--preset", "gys", "--distance", "0,25,150", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pts = out["points"]
    assert [p["distance_km"] for p in pts] == [0, 25, 150]
    m0 = pts[0]["models"]["infinite-decoy"]
    assert m0["rate_bps"] > 1e5 and 0.4 < m0["optimal_mu"] < 0.6
    assert pts[2]["models"]["infinite-decoy"]["optimal_rate_bps"] == 0


def test_cli_lab_link_table_and_errors(capsys):
    assert main(["keyrate", "--lab", "labs/star6.clab.yml", "--link", "km1:km0"]) == 0
    out = capsys.readouterr().out
    assert "vacuum-weak-decoy" in out and "10.0" in out
    assert main(["keyrate", "--lab", "labs/star6.clab.yml", "--link", "km1:nope"]) == 2
    assert "no link between km1 and nope" in capsys.readouterr().err
    assert main(["keyrate", "--distance", "abc"]) == 2


def test_cli_max_distance_and_plot(tmp_path, capsys):
    assert main(["keyrate", "--max-distance", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["max_distance_km"]
    assert d["infinite-decoy"] > 140 and 35 < d["no-decoy"] < 45
    png = tmp_path / "r.png"
    assert main(["keyrate", "--distance", "0,50", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
