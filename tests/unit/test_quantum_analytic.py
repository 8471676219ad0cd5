"""The `analytic` link model against the `bb84` emulator, and its shared key derivation."""

from __future__ import annotations

import numpy as np
import pytest

from qkdtwin.qkd_module.peerlink import PROTOCOL_VERSION, check_hello
from qkdtwin.quantum.analytic import AnalyticBlocks, block_key, block_rng
from qkdtwin.quantum.link import block_pulses, run_link_block
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars

pytestmark = pytest.mark.unit

EMULATED_BLOCKS = 8
ANALYTIC_BLOCKS = 400


def _mean_sem(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


@pytest.mark.parametrize(("length_km", "eve"), [(5, 0.0), (25, 0.0), (50, 0.0), (10, 0.05)])
def test_analytic_blocks_give_the_emulators_key_and_qber(length_km, eve):
    """Secret bits per block and QBER of both models agree within three standard errors
    (of the difference of the two means) on the same parameters."""
    p = LinkParams(length_km=length_km, eve_fraction=eve)
    n = block_pulses(p.replace(eve_fraction=0.0))
    emulated = [run_link_block(p, n, np.random.default_rng(100 + i))
                for i in range(EMULATED_BLOCKS)]
    model = AnalyticBlocks(p, n)
    seed = bytes(range(32))
    analytic = [model.outcome(eve, block_rng(seed, b)) for b in range(ANALYTIC_BLOCKS)]
    for name, em, an in (
            ("secret bits", [o.secret_bits for o in emulated], [a.secret_bits for a in analytic]),
            ("QBER", [o.estimate.qber for o in emulated], [a.qber for a in analytic])):
        (m_e, s_e), (m_a, s_a) = _mean_sem(em), _mean_sem(an)
        assert abs(m_e - m_a) <= 3.0 * np.hypot(s_e, s_a), (name, m_e, s_e, m_a, s_a)
    if eve == 0.0:
        assert min(a.secret_bits for a in analytic) > 0


def test_an_eavesdropper_on_half_the_pulses_stops_both_models():
    p = LinkParams(length_km=10, eve_fraction=0.5)
    n = block_pulses(p.replace(eve_fraction=0.0))
    emulated = [run_link_block(p, n, np.random.default_rng(7 + i)) for i in range(3)]
    analytic = [AnalyticBlocks(p, n).outcome(0.5, block_rng(b"\1" * 32, b)) for b in range(50)]
    assert all(o.estimate.aborted and o.secret_bits == 0 for o in emulated)
    assert all(a.aborted and a.secret_bits == 0 for a in analytic)
    # e_d + f (1/4 - e_d / 2) = 0.150 at f = 0.5
    assert 0.13 < np.mean([a.qber for a in analytic]) < 0.17


def test_both_ends_derive_the_same_key_and_each_block_its_own():
    seed = bytes(range(32))
    assert block_key(seed, 7, 1000) == block_key(seed, 7, 1000)
    assert len(block_key(seed, 7, 1000)) == 125 and block_key(seed, 7, 7) == b""
    assert block_key(seed, 7, 256) != block_key(seed, 8, 256)
    assert block_key(seed, 7, 256) != block_key(bytes(32), 7, 256)
    assert block_key(seed, 7, 1000)[:32] == block_key(seed, 7, 256)  # a prefix, not a new key
    with pytest.raises(ValueError, match="32 bytes"):
        block_key(b"short", 1, 256)
    p = LinkParams(length_km=25)
    n = block_pulses(p)
    one, other = AnalyticBlocks(p, n), AnalyticBlocks(p, n)
    assert one.outcome(0.0, block_rng(seed, 3)) == other.outcome(0.0, block_rng(seed, 3))
    assert len({one.outcome(0.0, block_rng(seed, b)).secret_bits for b in range(20)}) > 1


def test_model_choice_is_validated_and_checked_between_the_two_ends():
    assert validate_qkd_vars({"model": "analytic"}) == []
    assert validate_qkd_vars({"model": "fast"}) == [
        "qkd.model: 'fast' is not one of bb84, statistical, analytic"]
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "link": "km0-km1",
             "channel": "classical", "block_pulses": 1000, "model": "bb84"}
    assert check_hello("km0-km1", 1000, True, hello, False, "bb84") == ""
    assert check_hello("km0-km1", 1000, True, hello, False, "analytic") == (
        "link model mismatch: peer runs 'bb84', this end 'analytic' "
        "(different vars.qkd at the two ends?)")
