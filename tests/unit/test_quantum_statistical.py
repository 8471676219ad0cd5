"""The `statistical` link model against the `bb84` emulator: the same secret key and QBER per
block within the statistical error, identical keys at both ends, and its message checked."""

from __future__ import annotations

import numpy as np
import pytest

from qkdtwin.quantum.link import block_pulses, run_link_block, run_statistical_block
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars
from qkdtwin.quantum.statistical import SiftedHalf, draw_sifted_block

pytestmark = pytest.mark.unit

EMULATED_BLOCKS = 8
STATISTICAL_BLOCKS = 60


def _mean_sem(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a)))


def _agree(o) -> bool:
    """Both ends hold the same key, or neither holds one."""
    if o.alice_key is None or o.bob_key is None:
        return o.alice_key is None and o.bob_key is None
    return bool(np.array_equal(o.alice_key, o.bob_key))


@pytest.mark.parametrize(("length_km", "eve"), [(5, 0.0), (25, 0.0), (50, 0.0), (10, 0.05)])
def test_statistical_blocks_give_the_emulators_key_and_qber(length_km, eve):
    """Secret bits per block and QBER agree within three standard errors (of the difference
    of the two means) on the same parameters, both running the real post-processing."""
    p = LinkParams(length_km=length_km, eve_fraction=eve)
    n = block_pulses(p.replace(eve_fraction=0.0))
    emulated = [run_link_block(p, n, np.random.default_rng(100 + i))
                for i in range(EMULATED_BLOCKS)]
    drawn = [run_statistical_block(p, n, np.random.default_rng(500 + i))
             for i in range(STATISTICAL_BLOCKS)]
    assert all(_agree(o) for o in emulated + drawn)
    for name, em, st in (
            ("secret bits", [o.secret_bits for o in emulated], [o.secret_bits for o in drawn]),
            ("QBER", [o.estimate.qber for o in emulated], [o.estimate.qber for o in drawn])):
        (m_e, s_e), (m_s, s_s) = _mean_sem(em), _mean_sem(st)
        assert abs(m_e - m_s) <= 3.0 * np.hypot(s_e, s_s), (name, m_e, s_e, m_s, s_s)
    if eve == 0.0:
        assert min(o.secret_bits for o in drawn) > 0
        # Cascade really corrected errors: Bob's string differed from Alice's
        assert min(o.bob.corrected for o in drawn) > 0


def test_an_eavesdropper_on_half_the_pulses_stops_the_statistical_model():
    p = LinkParams(length_km=10, eve_fraction=0.5)
    n = block_pulses(p.replace(eve_fraction=0.0))
    drawn = [run_statistical_block(p, n, np.random.default_rng(7 + i)) for i in range(10)]
    assert all(o.estimate.aborted and o.secret_bits == 0 and _agree(o) for o in drawn)
    # e_d + f (1/4 - e_d / 2) = 0.150 at f = 0.5
    assert 0.13 < np.mean([o.estimate.qber for o in drawn]) < 0.17


def test_statistical_blocks_reconcile_with_ldpc_too():
    p = LinkParams.from_vars({"length_km": 10, "reconciliation": "ldpc",
                              "block_size": 300_000})
    n = block_pulses(p)
    drawn = [run_statistical_block(p, n, np.random.default_rng(30 + i)) for i in range(2)]
    assert all(_agree(o) for o in drawn)
    assert all(o.secret_bits > 0 for o in drawn)  # f 1.3-1.45: key at 3 % needs big blocks
    assert all(o.round_trips <= 3 for o in drawn)  # estimate, syndrome, confirm: no sift


def test_a_drawn_block_has_nested_counts_and_errors_at_the_models_qber():
    p = LinkParams(length_km=25)
    block = draw_sifted_block(p, 10**8, np.random.default_rng(1))
    a, b = block.alice, block.bob
    assert np.array_equal(a.cls, b.cls) and a.sent == b.sent and a.det == b.det
    assert sum(a.sent) == 10**8
    sifted = np.bincount(a.cls, minlength=3)
    assert all(s <= d <= n for s, d, n in zip(sifted, a.det, a.sent, strict=True))
    signal = a.cls == 0
    qber = float(np.mean(a.bits[signal] != b.bits[signal]))
    assert qber == pytest.approx(0.033, abs=0.005)


def test_the_sifted_message_round_trips_and_rejects_inconsistent_counts():
    half = draw_sifted_block(LinkParams(length_km=5), 10**6, np.random.default_rng(2)).bob
    msg = half.to_message(block=4, eve_fraction=0.0)
    back = SiftedHalf.from_message(msg)
    assert np.array_equal(back.bits, half.bits) and np.array_equal(back.cls, half.cls)
    assert back.sent == half.sent and back.det == half.det
    for bad in ({"n": msg["n"] + 1}, {"sent": [0, 0, 0]}, {"det": [1, 2]},
                {"cls": np.full(msg["n"], 3, np.uint8)}):
        with pytest.raises(ValueError):
            SiftedHalf.from_message({**msg, **bad})


def test_statistical_is_a_model_the_validator_knows():
    assert validate_qkd_vars({"model": "statistical"}) == []
    assert validate_qkd_vars({"model": "fast"}) == [
        "qkd.model: 'fast' is not one of bb84, statistical, analytic"]
