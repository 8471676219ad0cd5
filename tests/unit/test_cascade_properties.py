"""Cascade properties on random keys: both ends agree (or the frame is counted as failed),
and the leak Bob counts is exactly the parities Alice disclosed."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdtwin.quantum.cascade import CascadeBob, CascadeLayout, CascadePlan, ParityOracle

pytestmark = pytest.mark.unit


def _run(x, y, q, seed):
    plan = CascadePlan.for_qber(x.shape[1], x.shape[0], q, seed)
    layout = CascadeLayout(plan)
    oracle = ParityOracle(plan, x, layout)
    seen = {"bits": 0, "trips": 0}

    def ask(nodes):  # what crossed the channel, counted here independently
        seen["bits"] += len(nodes)
        seen["trips"] += 1
        return oracle.answer(nodes)

    return CascadeBob(plan, y, ask, layout).run(), oracle, seen


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([64, 200, 1000, 4096, 10_000]), frames=st.integers(1, 5),
       q=st.floats(0.005, 0.08), seed=st.integers(0, 2**62), data_seed=st.integers(0, 2**32))
def test_random_keys_agree_or_fail_visibly_and_leak_is_what_was_disclosed(n, frames, q, seed,
                                                                           data_seed):
    rng = np.random.default_rng(data_seed)
    x = rng.integers(0, 2, (frames, n), dtype=np.uint8)
    y = x ^ (rng.random(x.shape) < q).astype(np.uint8)
    res, oracle, seen = _run(x, y, q, seed)
    assert res.leaked_bits == oracle.disclosed == seen["bits"]
    assert (res.leaked_per_frame == oracle.disclosed_per_frame).all()
    assert res.round_trips == seen["trips"] == oracle.batches
    assert res.key.shape == x.shape and set(np.unique(res.key)) <= {0, 1}
    failed = (res.key != x).any(axis=1)
    # a failed frame is one Cascade left different: it still has an even number of errors
    # in every block of every pass, so its count of remaining errors is >= 2
    assert ((res.key != x).sum(axis=1)[failed] >= 2).all()
    assert res.flips >= int((x != y).sum()) - int((res.key != x).sum())


def test_many_frames_agree_at_large_blocks():
    rng = np.random.default_rng(7)
    for q in (0.01, 0.05):
        x = rng.integers(0, 2, (4, 1 << 16), dtype=np.uint8)
        y = x ^ (rng.random(x.shape) < q).astype(np.uint8)
        res, oracle, _ = _run(x, y, q, 99)
        assert (res.key == x).all()
        assert res.leaked_bits == oracle.disclosed


def test_no_errors_leaks_only_top_parities():
    x = np.random.default_rng(1).integers(0, 2, (2, 5000), dtype=np.uint8)
    res, oracle, seen = _run(x, x.copy(), 0.02, 3)
    lay = CascadeLayout(CascadePlan.for_qber(5000, 2, 0.02, 3))
    assert (res.key == x).all() and res.flips == 0
    assert res.leaked_bits == len(lay.top_queries()) and seen["trips"] == 1


def test_bad_inputs_are_refused():
    plan = CascadePlan.for_qber(1000, 2, 0.02, 1)
    x = np.zeros((2, 1000), np.uint8)
    oracle = ParityOracle(plan, x)
    with pytest.raises(ValueError, match="outside the layout"):
        oracle.answer(np.array([oracle.layout.total_nodes], np.int64))
    with pytest.raises(ValueError, match="plan expects"):
        ParityOracle(plan, np.zeros((2, 999), np.uint8))
    with pytest.raises(ValueError, match="0 or 1"):
        ParityOracle(plan, np.full((2, 1000), 2, np.uint8))
    with pytest.raises(ValueError, match="wrong number"):
        CascadeBob(plan, x, lambda nodes: np.zeros(1, np.uint8)).run()
