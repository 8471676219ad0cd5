"""Cascade, verification, privacy amplification and the whole two-party block."""

import math

import numpy as np
import pytest

from qkdtwin.quantum import wire
from qkdtwin.quantum.cascade import CascadePlan, reconcile_local
from qkdtwin.quantum.link import run_link_block
from qkdtwin.quantum.params import LinkParams
from qkdtwin.quantum.privacy import poly_hash, toeplitz_hash, toeplitz_seed

pytestmark = pytest.mark.unit


def _h2(p):
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


@pytest.mark.parametrize("q", [0.01, 0.03, 0.06])
def test_cascade_corrects_all_errors_efficiently(q):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2, (20, 10_000), dtype=np.uint8)
    y = x ^ (rng.random(x.shape) < q)
    res, oracle = reconcile_local(x, y, q, seed=5)
    assert (res.key == x).all()
    assert res.leaked_bits == oracle.disclosed
    f = res.leaked_bits / (x.size * _h2(q))
    assert 1.0 < f < 1.12
    assert res.round_trips < 800  # lockstep: independent of the number of frames
    assert res.leaked_per_frame.sum() == res.leaked_bits


def test_cascade_plan_roundtrip_and_bad_input():
    plan = CascadePlan.for_qber(10_000, 3, 0.02, 9)
    assert CascadePlan.from_dict(plan.to_dict()) == plan
    assert plan.block_sizes[:2] == (32, 256) and len(plan.block_sizes) == 12
    assert len(CascadePlan.for_qber(10_000, 1, 0.05, 1).block_sizes) == 16
    with pytest.raises(ValueError):
        CascadePlan.for_qber(10_000, 1, 0.02, 1, variant="nope")


@pytest.mark.parametrize("backend", ["numpy", "ducc0"])
@pytest.mark.parametrize("n,m", [(300, 120), (1, 1), (997, 997), (4096, 1)])
def test_toeplitz_matches_matrix_product(backend, n, m):
    rng = np.random.default_rng(n + m)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = toeplitz_seed(4, n, m)
    t = np.array([[s[i - j + n - 1] for j in range(n)] for i in range(m)])
    assert ((t @ x) % 2 == toeplitz_hash(x, m, s, backend=backend)).all()
    with pytest.raises(ValueError):
        toeplitz_hash(x, n + 1, toeplitz_seed(1, n, n + 1), backend=backend)


def test_toeplitz_backends_agree_on_a_large_block_and_reject_unknown_names():
    rng = np.random.default_rng(5)
    n, m = 200_003, 61_234
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = toeplitz_seed(9, n, m)
    ducc = toeplitz_hash(x, m, s, backend="ducc0")
    assert (ducc == toeplitz_hash(x, m, s, backend="numpy")).all()
    assert 0.45 < ducc.mean() < 0.55
    with pytest.raises(ValueError, match="unknown privacy amplification backend"):
        toeplitz_hash(x, m, s, backend="fftw")


def test_poly_hash_separates_keys():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, 10_000, dtype=np.uint8)
    y = x.copy()
    y[1234] ^= 1
    assert poly_hash(x, 987654321) == poly_hash(x.copy(), 987654321)
    assert poly_hash(x, 987654321) != poly_hash(y, 987654321)


def test_wire_roundtrip():
    msg = {"type": "x", "a": np.arange(5, dtype=np.int64), "b": [np.ones(3, bool), 2],
           "big": 2**100}
    out = wire.decode(wire.encode(msg))
    assert out["type"] == "x" and out["big"] == 2**100
    assert (out["a"] == np.arange(5)).all() and out["b"][0].dtype == bool
    with pytest.raises(ValueError):
        wire.decode(wire.encode(msg)[:-1])


@pytest.mark.parametrize("protocol", ["bb84-decoy", "ideal"])
def test_block_gives_identical_secret_keys(protocol):
    p = LinkParams(length_km=25, protocol=protocol)
    out = run_link_block(p, 40_000_000, np.random.default_rng(21), serialize=True)
    assert out.alice_key is not None and out.secret_bits > 1000
    assert (out.alice_key == out.bob_key).all()
    assert out.bob.frames_failed == 0
    # secret length stays below what the bounds allow and the model predicts
    assert out.secret_bits < out.bob.kept_bits * out.estimate.secret_fraction()
    assert abs(out.true_qber - 0.033) < 0.005


def test_corrupted_frame_is_discarded_by_verification(monkeypatch):
    import qkdtwin.quantum.postprocess as pp

    real = pp.CascadeBob.run

    def sabotage(self):
        res = real(self)
        res.key[0, 17] ^= 1  # an error Cascade "missed"
        return res

    monkeypatch.setattr(pp.CascadeBob, "run", sabotage)
    out = run_link_block(LinkParams(length_km=5), 30_000_000, np.random.default_rng(4))
    assert out.bob.frames_failed == 1 and out.alice.frames_failed == 1
    assert (out.alice_key == out.bob_key).all()
    assert out.bob.kept_bits < out.bob.reconciled_bits


def test_prediction_matches_emulated_block():
    from qkdtwin.quantum.link import predict_block

    p = LinkParams(length_km=20)
    n = 60_000_000
    out = run_link_block(p, n, np.random.default_rng(8))
    pred = predict_block(p, n)
    assert abs(out.secret_bits - pred["secret_bits"]) < 0.25 * pred["secret_bits"]
    assert abs(out.bob.sifted_signal - pred["sifted_signal"]) < 0.02 * pred["sifted_signal"]


def test_too_short_block_ends_with_no_key_on_both_sides():
    out = run_link_block(LinkParams(length_km=100), 1_000_000, np.random.default_rng(2))
    assert out.alice_key is None and out.bob_key is None
    assert out.bob.reason


def test_two_processes_worth_of_sides_over_a_socket():
    """Alice's handler on one end of a socket pair, Bob's driver on the other."""
    import socket
    import threading

    from qkdtwin.quantum.channel import AliceSource, BobDetector, ChannelFrame
    from qkdtwin.quantum.postprocess import AlicePostProcessor, BobPostProcessor

    p = LinkParams(length_km=15)
    src = AliceSource(p, np.random.default_rng(1))
    det = BobDetector(p, np.random.default_rng(2))
    for _ in range(3):
        msg = wire.decode(wire.encode(src.emit(10_000_000).to_message()))
        det.detect(ChannelFrame.from_message(msg))
    src.emit(10_000_000)  # a frame Bob has not seen yet stays with Alice for the next block
    a_sock, b_sock = socket.socketpair()
    alice_holder = {}

    def alice_side():
        first = wire.recv_msg(a_sock)
        alice = AlicePostProcessor(p, src.take(first["end_slot"]), np.random.default_rng(3))
        alice_holder["a"] = alice
        wire.send_msg(a_sock, alice.handle(first))
        while not alice.done:
            wire.send_msg(a_sock, alice.handle(wire.recv_msg(a_sock)))

    th = threading.Thread(target=alice_side)
    th.start()
    try:
        bob = BobPostProcessor(p, det.take(), wire.SocketTransport(b_sock),
                               np.random.default_rng(4)).run()
    finally:
        th.join(30)
        a_sock.close()
        b_sock.close()
    alice = alice_holder["a"].result
    assert bob.key is not None and (alice.key == bob.key).all()
    assert src.records.first_slot == 30_000_000 and len(src.records.ends) == 1
