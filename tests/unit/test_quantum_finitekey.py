"""Finite-key length (Lim et al. 2014): its limit, its growth with the block, the emulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qkdtwin.quantum import finitekey, keyrate
from qkdtwin.quantum.link import block_pulses, finite_key_rates, predict_block, run_link_block
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars
from qkdtwin.quantum.postprocess import FRAME_BITS, TAG_BITS

pytestmark = pytest.mark.unit

LIM = {"finite_key": "lim2014"}


def _bound_of_expected_counts(p: LinkParams, pulses: int) -> finitekey.FiniteKeyBound:
    est = predict_block(p, pulses)["estimate"]
    kept = est.sifted[0] - est.disclosed[0]
    return finitekey.bound(p, est.sifted, est.disclosed, est.errors, kept)


def test_without_fluctuations_the_bounds_are_the_asymptotic_decoy_bounds():
    """With the Hoeffding terms gone (10^16 pulses), Lim's s_1 and v_1 / s_1 reduce to MQZL05
    eqs. 34 and 37 (vacuum + weak decoy): s_1 = N q tau_1 Y1_L, e_1 = e1_U."""
    p = LinkParams.from_vars({"length_km": 25, **LIM})
    n = 10**16
    b = _bound_of_expected_counts(p, n)
    y1_l, e1_u = keyrate.decoy_bounds(p, p.mu, p.nu)
    _, tau1 = finitekey.taus(p)
    assert b.s1 / (n * keyrate.Q_SIFT * tau1) == pytest.approx(y1_l, rel=2e-3)
    assert b.e1 == pytest.approx(e1_u, rel=2e-3)
    # and they bound the true values from the right side
    assert y1_l < keyrate.single_photon_yield(p)
    assert e1_u > keyrate.single_photon_error(p)


def test_key_per_pulse_grows_with_the_block_towards_the_asymptotic_one():
    p = LinkParams.from_vars({"length_km": 25, "p_signal": 0.5, "p_decoy": 0.4, **LIM})
    sizes = [10**4, 10**5, 10**6, 10**7, 10**9, 10**11]
    rates = [finite_key_rates(p, s)["methods"]["lim2014"]["rate_per_pulse"] for s in sizes]
    assert rates[0] == 0.0 and rates[1] == 0.0       # too short for Lim's bound
    assert all(a <= b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[2] > 0.0
    # the asymptotic rate with the emulator's own choices (Cascade leak 1.07, a 64-bit tag
    # per frame, key from signal pulses only, 5 % of them disclosed) is the ceiling;
    # 10^11 bits get within 1 % of it
    asym = _asymptotic_per_pulse(p)
    assert rates[-1] < asym
    assert rates[-1] > 0.99 * asym


def _asymptotic_per_pulse(p: LinkParams) -> float:
    """The emulator's asymptotic key per pulse: the decoy bounds without fluctuations."""
    y1_l, e1_u = keyrate.decoy_bounds(p, p.mu, p.nu)
    q_mu, e_mu = keyrate.gain(p, p.mu), keyrate.qber(p, p.mu)
    _, tau1 = finitekey.taus(p)
    tau0 = sum(pk * math.exp(-k) for pk, k in p.intensity_classes)
    p_sig_1 = p.p_signal * p.mu * math.exp(-p.mu) / tau1
    kept = keyrate.Q_SIFT * p.p_signal * q_mu * (1.0 - p.sample_fraction)
    s1_kept = keyrate.Q_SIFT * tau1 * y1_l * p_sig_1 * (1.0 - p.sample_fraction)
    s0_kept = keyrate.Q_SIFT * p.dark_count_prob * p.p_signal * math.exp(-p.mu) * (
        1.0 - p.sample_fraction) * (tau0 > 0)
    leak = kept * (1.07 * keyrate.h2(e_mu) + TAG_BITS / FRAME_BITS)
    return s0_kept + s1_kept * (1.0 - keyrate.h2(e1_u)) - leak


def test_the_emulators_key_per_block_is_the_bound_of_its_own_counts():
    """An emulated block with finite_key lim2014: both ends hold the same key, of exactly
    the length Lim's bound gives for the block's announced counts, near the prediction."""
    p = LinkParams.from_vars({"length_km": 5, "p_signal": 0.5, "p_decoy": 0.4,
                              "block_size": 1_000_000, **LIM})
    n = block_pulses(p)
    out = run_link_block(p, n, np.random.default_rng(3))
    est = out.bob.estimate
    fk = finitekey.bound(p, est.sifted, est.disclosed, est.errors, out.bob.kept_bits)
    kept_frames = out.bob.frames - out.bob.frames_failed
    assert out.secret_bits > 0
    assert out.secret_bits == fk.secret_bits(out.bob.leaked_bits + TAG_BITS * kept_frames)
    assert (out.alice_key == out.bob_key).all() and len(out.bob_key) == out.secret_bits
    predicted = predict_block(p, n)["secret_bits"]
    assert abs(out.secret_bits - predicted) < 0.1 * predicted
    # the default (gaussian) bound gives this block a different, longer key
    g = run_link_block(p.replace(finite_key="gaussian"), n, np.random.default_rng(3))
    assert g.secret_bits > out.secret_bits


def test_a_short_block_under_lim2014_gives_no_key_at_either_end():
    p = LinkParams.from_vars({"length_km": 5, "block_size": 100_000, **LIM})
    out = run_link_block(p, block_pulses(p), np.random.default_rng(5))
    assert out.alice_key is None and out.bob_key is None
    assert out.secret_bits == 0 and out.bob.reason == "no secret bits left"


def test_sampling_term_and_hoeffding_deviation():
    assert finitekey.hoeffding(2.0, math.exp(-1.0)) == pytest.approx(1.0)
    small = finitekey.gamma(1e-11, 0.03, 1e4, 1e4)
    large = finitekey.gamma(1e-11, 0.03, 1e8, 1e8)
    assert 0.0 < large < small < 0.5
    assert large == pytest.approx(small / 100, rel=0.3)   # ~ 1/sqrt(events)
    assert finitekey.gamma(1e-11, 0.03, 0.0, 1e4) == 0.5


@pytest.mark.parametrize(("qkd", "message"), [
    ({"finite_key": "lim"}, "qkd.finite_key: 'lim' is not one of gaussian, lim2014"),
    ({"finite_key": "lim2014", "protocol": "bb84"},
     "qkd.finite_key: lim2014 needs protocol bb84-decoy, not 'bb84'"),
    ({"finite_key": "lim2014", "p_signal": 0.9, "p_decoy": 0.1},
     "qkd.p_decoy: lim2014 needs decoy and vacuum pulses"),
    ({"finite_key": "lim2014", "mu": 0.15, "nu": 0.1, "vacuum": 0.06},
     "qkd.mu: lim2014 needs mu > nu + vacuum"),
    ({"eps_sec": 0}, "qkd.eps_sec: 0 out of range (0, 0.01]"),
])
def test_bad_finite_key_settings_have_clear_messages(qkd, message):
    problems = validate_qkd_vars(qkd)
    assert any(pr.startswith(message) for pr in problems), problems


def test_a_smaller_eps_sec_costs_key():
    p = LinkParams.from_vars({"length_km": 25, "block_size": 10**7, **LIM})
    loose = finite_key_rates(p)["methods"]["lim2014"]["secret_bits"]
    strict = finite_key_rates(p.replace(eps_sec=1e-20))["methods"]["lim2014"]["secret_bits"]
    assert 0 < strict < loose


def test_keyrate_cli_prints_asymptotic_and_finite_rates(capsys):
    from qkdtwin.cli import main

    assert main(["keyrate", "--preset", "gys", "--distance", "25", "--block-size", "1e7",
                 "--json"]) == 0
    fk = json.loads(capsys.readouterr().out)["points"][0]["finite_key"]
    assert fk["block_size"] == 10**7 and fk["block_pulses"] > 10**9
    lim, gauss = fk["methods"]["lim2014"], fk["methods"]["gaussian"]
    assert 0 < lim["rate_bps"] < gauss["rate_bps"] < fk["asymptotic_rate_bps"]
    assert main(["keyrate", "--preset", "gys", "--distance", "25"]) == 0
    table = capsys.readouterr().out
    assert "finite lim2014" in table and "block 100,000 bits" in table
    assert main(["keyrate", "--preset", "gys", "--block-size", "lots"]) == 2
    assert "--block-size: 'lots' is not a number" in capsys.readouterr().err
