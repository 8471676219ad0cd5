"""LDPC reconciliation: random keys agree at both ends or the frame is counted and dropped,
the leak is the syndrome minus the punctured bits, the rate follows the QBER, and a peer
cannot make Alice reconcile another way than her lab file says."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdtwin.quantum import ldpc_codes as codes
from qkdtwin.quantum.ldpc_reconcile import (
    LdpcAlice,
    LdpcBob,
    LdpcPlan,
    reconcile_local,
    target_efficiency,
)
from qkdtwin.quantum.link import run_link_block
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars
from qkdtwin.quantum.postprocess import AlicePostProcessor

pytestmark = pytest.mark.unit


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_key=st.sampled_from([300, 5_000, 40_000, 120_000]), q=st.floats(0.005, 0.08),
       seed=st.integers(0, 2**62), data_seed=st.integers(0, 2**32))
def test_random_keys_agree_or_fail_visibly_and_leak_is_the_syndrome(n_key, q, seed, data_seed):
    rng = np.random.default_rng(data_seed)
    x = rng.integers(0, 2, n_key, dtype=np.uint8)
    y = x ^ (rng.random(n_key) < q).astype(np.uint8)
    res, alice = reconcile_local(x, y, q, seed, rng)
    plan = alice.plan
    assert res.key.shape == alice.key.shape == (plan.frames, plan.k)
    assert plan.frames * plan.k <= n_key and plan.frames * plan.k > n_key - plan.frames
    m = codes.checks(plan.n, plan.rate)
    assert alice.syndromes.shape == (plan.frames, m)
    assert (res.leaked_per_frame == m - plan.punctured).all()
    assert (res.leaked_per_frame == alice.disclosed_per_frame).all()
    wrong = (res.key != alice.key).any(axis=1)
    # the decoder converges only on a word with Alice's syndrome, at these code lengths the
    # right one; frames it gives up on are the failed ones (their rate is the benchmark's)
    assert not (wrong & res.converged).any()
    assert res.flips == int((res.key != y[: plan.frames * plan.k].reshape(res.key.shape)).sum())


@pytest.mark.parametrize("q", [0.01, 0.03, 0.06])
def test_rate_adapts_to_the_qber_at_the_target_efficiency(q):
    plan = LdpcPlan.for_block(200_000, q, 1)
    h = codes.h2(q)
    f = plan.leak_per_frame / (plan.k * h)
    assert f == pytest.approx(target_efficiency(q), abs=1.0 / (plan.k * h) + 1e-9)
    assert 0 <= plan.punctured <= 0.05 * plan.n and plan.shortened >= 0
    assert plan.k + plan.punctured + plan.shortened == plan.n
    keypos, punct, short = plan.positions()
    assert len(set(keypos) | set(punct) | set(short)) == plan.n


def test_mother_codes_are_the_same_at_both_ends():
    a = codes.parity_check(16_384, 0.8)
    codes.parity_check.cache_clear()
    b = codes.parity_check(16_384, 0.8)
    assert a.shape == (codes.checks(16_384, 0.8), 16_384)
    assert (a != b).nnz == 0
    assert np.diff(a.tocsc().indptr).min() >= 2      # every bit is in two checks or more


def test_error_free_frames_converge_and_a_hopeless_one_is_flagged():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2, 30_000, dtype=np.uint8)
    res, alice = reconcile_local(x, x.copy(), 0.02, 5, rng)
    assert res.converged.all() and (res.key == alice.key).all() and res.flips == 0
    # planned for 1 % but the channel had 15 %: the decoder cannot converge and says so
    y = x ^ (rng.random(len(x)) < 0.15).astype(np.uint8)
    plan = LdpcPlan.for_block(len(x), 0.01, 5)
    a = LdpcAlice(plan, x, rng)
    bad = LdpcBob(plan, y, 0.01).decode(a.packed_syndromes())
    assert not bad.converged.any()


def test_bad_plans_and_syndromes_are_refused():
    good = LdpcPlan.for_block(50_000, 0.03, 3).to_dict()
    for change in ({"n": 1000}, {"rate": 0.83}, {"k": good["k"] + 1}, {"punctured": -1},
                   {"frames": 0}):
        with pytest.raises(ValueError):
            LdpcPlan.from_dict({**good, **change})
    plan = LdpcPlan.from_dict(good)
    with pytest.raises(ValueError, match="key bits"):
        LdpcAlice(plan, np.zeros(10, np.uint8), np.random.default_rng())
    with pytest.raises(ValueError, match="syndromes"):
        LdpcBob(plan, np.zeros(50_000, np.uint8), 0.03).decode(np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="too few"):
        LdpcPlan.for_block(100, 0.03, 3)
    with pytest.raises(ValueError, match="beyond"):
        LdpcPlan.for_block(50_000, 0.3, 3)


def test_alice_reconciles_only_as_her_lab_file_says():
    cascade = AlicePostProcessor(LinkParams(), records=None)
    with pytest.raises(ValueError, match="reconciles with cascade, not ldpc"):
        cascade.handle({"type": "syndrome", "plan": {}})
    ldpc = AlicePostProcessor(LinkParams(reconciliation="ldpc"), records=None)
    with pytest.raises(ValueError, match="reconciles with ldpc, not cascade"):
        ldpc.handle({"type": "parity", "nodes": []})
    assert validate_qkd_vars({"reconciliation": "ldpc"}) == []
    assert "not one of cascade, ldpc" in validate_qkd_vars({"reconciliation": "turbo"})[0]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["cascade", "ldpc"]), misalignment=st.floats(0.005, 0.07),
       pulses=st.sampled_from([4_000_000, 20_000_000]), seed=st.integers(0, 2**32))
def test_a_whole_block_over_the_wire_gives_identical_keys_or_none(method, misalignment,
                                                                  pulses, seed):
    p = LinkParams.from_vars({"length_km": 10, "misalignment": misalignment,
                              "reconciliation": method})
    out = run_link_block(p, pulses, np.random.default_rng(seed), serialize=True)
    a, b = out.alice, out.bob
    assert (a.key is None) == (b.key is None)
    if a.key is not None:
        assert np.array_equal(a.key, b.key) and a.secret_bits == b.secret_bits > 0
    assert a.frames == b.frames and a.frames_failed == b.frames_failed
    assert a.kept_bits == b.kept_bits == (b.frames - b.frames_failed) * (
        b.reconciled_bits // max(b.frames, 1))
    if method == "ldpc" and b.frames:
        assert b.extra["reconciliation_round_trips"] == 1
        # the leak counted is that of the kept frames: none when every frame failed
        assert (b.leaked_bits > 0) == (b.kept_bits > 0) and math.isfinite(b.leaked_bits)


def test_generated_labs_and_tables_name_the_ldpc_links(tmp_path, capsys):
    from qkdtwin.cli import main
    from qkdtwin.topology import load_lab
    from qkdtwin.topology.generate import Spec, generate

    paths = generate(Spec("ring", nodes=4, name="ldpc4", model="analytic", bb84_links=2,
                          reconciliation="ldpc"), tmp_path)
    lab = load_lab(paths[0])
    assert sorted(lk.qkd_label for lk in lab.qkd_links) == ["analytic"] * 2 + ["bb84/ldpc"] * 2
    assert all(lk.qkd.get("reconciliation", "cascade") == "cascade"
               for lk in lab.qkd_links if lk.qkd_model == "analytic")
    assert main(["validate", str(paths[0])]) == 0
    assert "(4 QKD, 2 analytic, 2 bb84/ldpc)" in capsys.readouterr().out


def test_a_node_without_the_ldpc_package_says_so(monkeypatch):
    import sys
    import threading

    monkeypatch.setitem(sys.modules, "ldpc", None)  # as in the container images
    monkeypatch.setattr(codes, "_local", threading.local())
    with pytest.raises(RuntimeError, match="needs the PyPI packages ldpc and scipy"):
        codes.decoder(16_384, 0.8)
