"""Emulator statistics against the analytic model, and Eve's effect."""

import math

import numpy as np
import pytest

from qkdtwin.quantum import keyrate
from qkdtwin.quantum.channel import AliceSource, BobDetector, ChannelFrame
from qkdtwin.quantum.link import run_link_block
from qkdtwin.quantum.params import LinkParams

pytestmark = pytest.mark.unit


def _measure(p, n, seed=1):
    a = AliceSource(p, np.random.default_rng(seed))
    b = BobDetector(p, np.random.default_rng(seed + 1))
    for _ in range(n // 10_000_000):
        frame = ChannelFrame.from_message(a.emit(10_000_000).to_message())
        b.detect(frame)
    rec, det = a.take(), b.take()
    cls, bit, basis = rec.lookup(det.positions, np.random.default_rng(seed + 2))
    return rec, det, cls, bit, basis


def test_gain_and_qber_match_the_model_within_statistics():
    p = LinkParams(length_km=25)
    rec, det, cls, bit, basis = _measure(p, 40_000_000)
    for c, mu in ((0, p.mu), (1, p.nu)):
        n_sent = rec.sent[c]
        k = int((cls == c).sum())
        q_model = keyrate.gain(p, mu)
        assert abs(k - n_sent * q_model) < 5 * math.sqrt(n_sent * q_model)
        s = (cls == c) & (basis == det.basis)
        e_model = keyrate.qber(p, mu)
        errs = int((bit[s] != det.bit[s]).sum())
        assert abs(errs - s.sum() * e_model) < 5 * math.sqrt(s.sum() * e_model) + 3
    # vacuum pulses only click in the dark; sifting keeps about half of all detections
    assert rec.sent[2] > 0
    sift = (basis == det.basis).mean()
    assert abs(sift - 0.5) < 0.01


def test_eve_raises_qber_by_a_quarter_of_her_fraction():
    p = LinkParams(length_km=10, eve_fraction=0.4)
    rec, det, cls, bit, basis = _measure(p, 20_000_000, seed=7)
    s = (cls == 0) & (basis == det.basis)
    e = (bit[s] != det.bit[s]).mean()
    expected = keyrate.qber(p)  # e_d + f (1/4 - e_d/2)
    assert abs(e - expected) < 0.01
    assert e > 0.033 + 0.4 / 4 - 0.02


def test_frames_must_arrive_in_order():
    p = LinkParams()
    a = AliceSource(p, np.random.default_rng(1))
    b = BobDetector(p, np.random.default_rng(2))
    b.detect(a.emit(1000))
    a.emit(1000)  # lost on the way
    with pytest.raises(ValueError, match="lost or reordered"):
        b.detect(a.emit(1000))


def test_eve_above_threshold_gives_no_key():
    p = LinkParams(length_km=10, eve_fraction=0.5)
    out = run_link_block(p, 20_000_000, np.random.default_rng(3))
    assert out.alice_key is None and out.bob_key is None
    assert out.estimate.aborted and "above threshold" in out.estimate.reason


def test_dark_counts_dominate_errors_at_long_distance():
    p = LinkParams(length_km=130)
    rec, det, cls, bit, basis = _measure(p, 200_000_000, seed=3)
    k = int((cls == 0).sum())
    q_model = keyrate.gain(p)
    assert abs(k - rec.sent[0] * q_model) < 5 * math.sqrt(rec.sent[0] * q_model)
    s = (cls == 0) & (basis == det.basis)
    e_model = keyrate.qber(p)
    assert e_model > 0.045  # dark counts (error 1/2) now weigh in
    errs = int((bit[s] != det.bit[s]).sum())
    assert abs(errs - s.sum() * e_model) < 5 * math.sqrt(s.sum() * e_model)
    # vacuum pulses click only in the dark, with random bits
    v = cls == 2
    assert abs(v.sum() - rec.sent[2] * p.dark_count_prob) < 5 * math.sqrt(
        rec.sent[2] * p.dark_count_prob) + 3


def test_eve_below_the_abort_threshold_still_leaves_no_secret_key():
    # QBER ~8 % passes the 11 % abort check, but the decoy bound on e1 leaves nothing secret
    out = run_link_block(LinkParams(length_km=10, eve_fraction=0.2), 30_000_000,
                         np.random.default_rng(5))
    assert not out.estimate.aborted and 0.06 < out.estimate.qber < 0.11
    assert out.estimate.e1_upper > 0.1
    assert out.alice_key is None and out.bob_key is None
